//! Feedback on agents, sessions and interactions, and the statistics kept per agent version and
//! metric from feedback and turns.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentId;
use crate::session::{FeedbackId, InteractionId, SessionId};

/// One rating, with the scale it was given on and its value on 0..1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rating {
    pub metric: String,
    pub value: f64,
    pub scale_min: f64,
    pub scale_max: f64,
    /// `(value - min) / (max - min)`: what statistics are kept on.
    pub normalized: f64,
}

/// Feedback as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Feedback {
    pub feedback_id: FeedbackId,
    pub agent_id: AgentId,
    /// The version the feedback is about: the interaction's, else the session's, else the latest.
    pub version: u32,
    pub session_id: Option<SessionId>,
    pub interaction_id: Option<InteractionId>,
    pub ratings: Vec<Rating>,
    pub comments: Option<String>,
    pub categories: Vec<String>,
    pub user_id: String,
    pub created_at: i64,
    /// The authenticated caller who submitted it (`user_id` is what the caller says about its
    /// end user). Absent in records written before callers were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<crate::principal::Principal>,
}

/// A rating scale `min-max` with `min < max`, both finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub min: f64,
    pub max: f64,
}

impl Scale {
    /// The scale when the caller names none.
    pub const DEFAULT: Self = Self { min: 1.0, max: 5.0 };

    /// Parses `min-max`, such as `1-5` or `0-1`.
    pub fn parse(text: &str) -> Option<Self> {
        let (a, b) = text.trim().split_once('-')?;
        let (min, max) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
        (min.is_finite() && max.is_finite() && min < max).then_some(Self { min, max })
    }

    pub fn contains(self, value: f64) -> bool {
        value.is_finite() && value >= self.min && value <= self.max
    }

    /// `value` on 0..1.
    pub fn normalize(self, value: f64) -> f64 {
        (value - self.min) / (self.max - self.min)
    }
}

/// The name of a statistic kept per agent version. On the wire and in the stores it is its key:
/// `feedback.<rating>` for ratings, `interaction.*` for turn statistics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// A feedback rating (`helpfulness`), normalised to 0..1.
    Rating(String),
    /// 1 for a failed turn, 0 for a completed one.
    TurnError,
    /// Wall time of a turn in milliseconds.
    TurnLatencyMs,
    /// Prompt and completion tokens of a completed turn.
    TurnTokens,
}

impl Metric {
    const RATING_PREFIX: &'static str = "feedback.";
    const TURN_KEYS: [(&'static str, Self); 3] = [
        ("interaction.error", Self::TurnError),
        ("interaction.latency_ms", Self::TurnLatencyMs),
        ("interaction.tokens", Self::TurnTokens),
    ];

    pub fn rating(name: impl Into<String>) -> Self {
        Self::Rating(name.into())
    }

    /// The stored and published key.
    pub fn key(&self) -> String {
        match self {
            Self::Rating(name) => format!("{}{name}", Self::RATING_PREFIX),
            turn => Self::TURN_KEYS
                .iter()
                .find(|(_, m)| m == turn)
                .map(|(k, _)| (*k).to_owned())
                .unwrap_or_default(),
        }
    }

    /// Parses a key as [`Metric::key`] writes it.
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(name) = key.strip_prefix(Self::RATING_PREFIX) {
            return (!name.is_empty()).then(|| Self::Rating(name.to_owned()));
        }
        Self::TURN_KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m.clone())
    }

    /// What a caller may write: a key, or a bare rating name (`helpfulness`).
    pub fn from_query(text: &str) -> Option<Self> {
        let text = text.trim();
        Self::parse(text).or_else(|| {
            (!text.is_empty() && !text.contains('.')).then(|| Self::Rating(text.to_owned()))
        })
    }

    /// The rating name, for a rating metric.
    pub fn rating_name(&self) -> Option<&str> {
        match self {
            Self::Rating(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.key())
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = String::deserialize(deserializer)?;
        Self::parse(&key).ok_or_else(|| serde::de::Error::custom(format!("unknown metric '{key}'")))
    }
}

impl JsonSchema for Metric {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Metric".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`feedback.<rating>` or `interaction.error`, `interaction.latency_ms`, `interaction.tokens`"
        })
    }
}

/// Running statistics of one metric of one agent version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricStats {
    pub version: u32,
    pub metric: Metric,
    pub count: u64,
    pub mean: f64,
    /// Sample variance (n - 1 in the denominator); 0 for a single value.
    pub variance: f64,
}

/// Sample variance (n - 1 in the denominator) from a count and a running sum of squared
/// differences from the mean, as stores keep them; 0 for fewer than two values.
pub fn sample_variance(count: u64, m2: f64) -> f64 {
    if count > 1 {
        (m2 / (count - 1) as f64).max(0.0)
    } else {
        0.0
    }
}

/// One value to fold into a metric's running statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct FitnessUpdate {
    pub agent_id: AgentId,
    pub version: u32,
    pub metric: Metric,
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_parse_and_reject_nonsense() {
        assert_eq!(Scale::parse("1-5"), Some(Scale { min: 1.0, max: 5.0 }));
        assert_eq!(Scale::parse(" 0 - 1 "), Some(Scale { min: 0.0, max: 1.0 }));
        assert_eq!(Scale::parse("5-1"), None);
        assert_eq!(Scale::parse("one-five"), None);
        assert_eq!(Scale::parse("3"), None);
        assert!((Scale::DEFAULT.normalize(4.0) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn metric_keys_round_trip_and_bare_names_are_ratings() {
        for m in [
            Metric::rating("helpfulness"),
            Metric::TurnError,
            Metric::TurnLatencyMs,
            Metric::TurnTokens,
        ] {
            assert_eq!(Metric::parse(&m.key()), Some(m.clone()));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), m);
        }
        assert_eq!(Metric::TurnLatencyMs.key(), "interaction.latency_ms");
        assert_eq!(
            Metric::from_query("accuracy"),
            Some(Metric::rating("accuracy"))
        );
        assert_eq!(Metric::from_query("interaction.nope"), None);
        assert_eq!(Metric::parse("feedback."), None);
    }
}
