//! Feedback on agents, sessions and interactions, and the fitness statistics kept from feedback
//! and interactions per agent version and metric.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::AgentId;
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::events::{DomainEvent, EventType};
use crate::ports::{AgentStore, NoSignal, OutboxSignal, SessionStore, StoreError};
use crate::session::{FeedbackId, InteractionId, SessionId};
use crate::validate::Problems;

const MAX_RATINGS: usize = 32;
const MAX_COMMENTS: usize = 4_000;
const MAX_CATEGORIES: usize = 16;

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
}

/// Input of `submit_feedback`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitFeedback {
    pub agent_id: AgentId,
    /// The session the feedback is about.
    #[serde(default)]
    pub session_id: Option<SessionId>,
    /// The interaction (turn) the feedback is about.
    #[serde(default)]
    pub interaction_id: Option<InteractionId>,
    /// `{metric: value}`, such as `{"helpfulness": 4, "accuracy": 5}`.
    pub ratings: BTreeMap<String, f64>,
    /// The scale of every rating, `min-max`: `1-5` (default), `0-1`, `1-10`.
    #[serde(default)]
    pub scale: Option<String>,
    #[serde(default)]
    pub comments: Option<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub user_id: Option<String>,
}

/// Running statistics of one metric of one agent version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricStats {
    pub version: u32,
    pub metric: String,
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

/// Input of `get_feedback_metrics`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    pub agent_id: AgentId,
    /// Only this version.
    #[serde(default)]
    pub version: Option<u32>,
    /// Only this metric (`helpfulness`, or `interaction.latency_ms` for turn statistics).
    #[serde(default)]
    pub metric: Option<String>,
    /// Epoch milliseconds, inclusive. With a time range, feedback statistics are computed from
    /// the feedback given in it.
    #[serde(default)]
    pub from: Option<i64>,
    /// Epoch milliseconds, exclusive.
    #[serde(default)]
    pub to: Option<i64>,
}

/// Statistics per version and metric.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct MetricsReport {
    pub agent_id: AgentId,
    pub metrics: Vec<MetricStats>,
}

/// One value to fold into a metric's running statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct FitnessUpdate {
    pub agent_id: AgentId,
    pub version: u32,
    pub metric: String,
    pub value: f64,
}

/// Persistence of feedback and fitness.
#[async_trait::async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Stores feedback with its events, atomically.
    async fn insert_feedback(
        &self,
        feedback: &Feedback,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Folds `updates` into the running statistics and remembers `event_id`, in one
    /// transaction. Returns `false`, changing nothing, when the event was applied before.
    async fn apply_once(
        &self,
        event_id: &str,
        updates: &[FitnessUpdate],
    ) -> Result<bool, StoreError>;

    /// Running statistics, filtered.
    async fn fitness(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&str>,
    ) -> Result<Vec<MetricStats>, StoreError>;

    /// Feedback statistics computed from the ratings given in `[from, to)`.
    async fn rating_stats(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricStats>, StoreError>;
}

/// Parses `min-max`.
fn parse_scale(text: &str) -> Option<(f64, f64)> {
    let (a, b) = text.trim().split_once('-')?;
    let (min, max) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
    (min.is_finite() && max.is_finite() && min < max).then_some((min, max))
}

/// Feedback use cases.
#[derive(Clone)]
pub struct FeedbackService {
    agents: Arc<dyn AgentStore>,
    sessions: Arc<dyn SessionStore>,
    feedback: Arc<dyn FeedbackStore>,
    clock: Arc<dyn Clock>,
    signal: Arc<dyn OutboxSignal>,
}

impl FeedbackService {
    pub fn new(
        agents: Arc<dyn AgentStore>,
        sessions: Arc<dyn SessionStore>,
        feedback: Arc<dyn FeedbackStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            agents,
            sessions,
            feedback,
            clock,
            signal: Arc::new(NoSignal),
        }
    }

    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    /// Records feedback; the fitness statistics follow from its `feedback.submitted` event.
    ///
    /// # Errors
    /// `Invalid` naming each bad field (no ratings, a value outside its scale, an interaction
    /// of another agent); `NotFound` for unknown ids.
    #[instrument(name = "submit_feedback", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn submit(&self, input: SubmitFeedback) -> Result<Feedback, ServiceError> {
        let mut p = Problems::default();
        let scale_text = input.scale.as_deref().unwrap_or("1-5");
        let scale = parse_scale(scale_text);
        if scale.is_none() {
            p.push(
                "scale",
                format!("'{scale_text}' is not min-max with min < max, such as 1-5 or 0-1"),
            );
        }
        if input.ratings.is_empty() {
            p.push(
                "ratings",
                "give at least one rating, such as {\"helpfulness\": 4}",
            );
        }
        if input.ratings.len() > MAX_RATINGS {
            p.push("ratings", format!("at most {MAX_RATINGS} metrics"));
        }
        let mut ratings = Vec::with_capacity(input.ratings.len());
        for (metric, value) in &input.ratings {
            let field = format!("ratings.{metric}");
            let name = p.token(&field, metric, 64);
            if let Some((min, max)) = scale {
                if !value.is_finite() || *value < min || *value > max {
                    p.push(field, format!("{value} is outside the scale {scale_text}"));
                    continue;
                }
                ratings.push(Rating {
                    metric: name,
                    value: *value,
                    scale_min: min,
                    scale_max: max,
                    normalized: (value - min) / (max - min),
                });
            }
        }
        let comments = input
            .comments
            .as_deref()
            .map(|c| p.text("comments", c, 0, MAX_COMMENTS))
            .filter(|c| !c.is_empty());
        if input.categories.len() > MAX_CATEGORIES {
            p.push("categories", format!("at most {MAX_CATEGORIES} categories"));
        }
        let categories: Vec<String> = input
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| p.token(&format!("categories[{i}]"), c, 64))
            .collect();
        let user_id = p.text(
            "user_id",
            input.user_id.as_deref().unwrap_or("anonymous"),
            1,
            200,
        );
        let agent = self
            .agents
            .get_agent(&input.agent_id)
            .await?
            .ok_or_else(|| ServiceError::agent_not_found(&input.agent_id))?;
        let mut version = agent.latest_version;
        let mut session_id = input.session_id.clone();
        if let Some(id) = &input.interaction_id {
            match self.sessions.get_interaction(id).await? {
                None => {
                    return Err(ServiceError::NotFound {
                        kind: "interaction",
                        id: id.to_string(),
                    });
                }
                Some(i) if i.agent_id != agent.agent_id => p.push(
                    "interaction_id",
                    format!("interaction '{id}' belongs to agent '{}'", i.agent_id),
                ),
                Some(i) => {
                    version = i.version;
                    match (&session_id, &i.session_id) {
                        (None, _) => session_id.clone_from(&i.session_id),
                        (Some(given), Some(own)) if given == own => {}
                        (Some(given), _) => p.push(
                            "session_id",
                            format!("interaction '{id}' is not part of session '{given}'"),
                        ),
                    }
                }
            }
        } else if let Some(id) = &input.session_id {
            match self.sessions.get_session(id).await? {
                None => {
                    return Err(ServiceError::NotFound {
                        kind: "session",
                        id: id.to_string(),
                    });
                }
                Some(s) if s.agent_id != agent.agent_id => p.push(
                    "session_id",
                    format!("session '{id}' belongs to agent '{}'", s.agent_id),
                ),
                Some(s) => version = s.version,
            }
        }
        p.finish()?;
        let now = self.clock.now_ms();
        let feedback = Feedback {
            feedback_id: FeedbackId::generate(),
            agent_id: agent.agent_id,
            version,
            session_id,
            interaction_id: input.interaction_id,
            ratings,
            comments,
            categories,
            user_id,
            created_at: now,
        };
        let events = [DomainEvent::with_payload(
            EventType::FeedbackSubmitted,
            &feedback.agent_id,
            now,
            &crate::events::payload::FeedbackSubmitted {
                feedback: feedback.clone(),
            },
        )];
        self.feedback.insert_feedback(&feedback, &events).await?;
        self.signal.notify();
        Ok(feedback)
    }

    /// Statistics per version and metric: running ones, or computed over a time range.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent; `Invalid` for a reversed time range.
    pub async fn metrics(&self, q: MetricsQuery) -> Result<MetricsReport, ServiceError> {
        if self.agents.get_agent(&q.agent_id).await?.is_none() {
            return Err(ServiceError::agent_not_found(&q.agent_id));
        }
        let metrics = if q.from.is_some() || q.to.is_some() {
            let from = q.from.unwrap_or(0);
            let to = q.to.unwrap_or(i64::MAX);
            if from >= to {
                return Err(ServiceError::invalid("from", "must be before `to`"));
            }
            let metric = q
                .metric
                .as_deref()
                .map(|m| m.strip_prefix("feedback.").unwrap_or(m));
            self.feedback
                .rating_stats(&q.agent_id, q.version, metric, from, to)
                .await?
        } else {
            let metric = q.metric.as_deref().map(|m| {
                if m.contains('.') {
                    m.to_owned()
                } else {
                    format!("feedback.{m}")
                }
            });
            self.feedback
                .fitness(&q.agent_id, q.version, metric.as_deref())
                .await?
        };
        Ok(MetricsReport {
            agent_id: q.agent_id,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_parse_and_reject_nonsense() {
        assert_eq!(parse_scale("1-5"), Some((1.0, 5.0)));
        assert_eq!(parse_scale(" 0 - 1 "), Some((0.0, 1.0)));
        assert_eq!(parse_scale("5-1"), None);
        assert_eq!(parse_scale("one-five"), None);
        assert_eq!(parse_scale("3"), None);
    }
}
