//! The rule a canary is decided by: its steps, thresholds and timings. Defaults come from the
//! configuration; a canary may override any of them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Whether a higher or a lower value of a metric is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    #[default]
    Maximize,
    Minimize,
}

/// One rating metric in a weighted objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveTerm {
    /// A rating name (`helpfulness`).
    pub metric: String,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub goal: Goal,
}

fn one() -> f64 {
    1.0
}

/// How a canary advances and is decided. Shares are percent of new sessions; times are seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CanaryPolicy {
    /// The candidate's share at each step, rising (default 5, 10, 25, 50).
    pub steps: Vec<u32>,
    /// Rated turns each arm needs before promotion.
    pub min_rated_turns: u64,
    /// Promote when P(candidate better) reaches this...
    pub promote_probability: f64,
    /// ...and the expected loss of shipping it, relative to the baseline, is at most this.
    pub max_relative_loss: f64,
    /// Roll back when P(candidate better) falls to this.
    pub rollback_probability: f64,
    /// Level of the always-valid confidence sequences (primary metric and guardrails).
    pub alpha: f64,
    /// Hard limit on the candidate's error rate...
    pub max_error_rate: f64,
    /// ...failing after this many consecutive checks over it.
    pub hard_limit_checks: u32,
    /// The candidate's mean latency may be at most this much worse (0.2 = 20%).
    pub max_latency_increase: f64,
    /// The candidate's cost per turn may be at most this much worse.
    pub max_cost_increase: f64,
    /// A step lasts at least this long...
    pub step_min_seconds: u64,
    /// ...and until this many new sessions started in it.
    pub step_min_sessions: u64,
    /// A sample-ratio mismatch below this p-value pauses the canary.
    pub srm_p: f64,
    /// No decision after this long rolls back as inconclusive.
    pub timeout_seconds: u64,
    /// After promotion, the new version is watched this long against the old baseline...
    pub bake_seconds: u64,
    /// ...and a relative drop worse than this (0.1 = 10%) raises `evolution.impact.negative`...
    pub bake_max_drop: f64,
    /// ...and rolls back when on.
    pub auto_rollback: bool,
    /// Rated turns the bake period needs before it judges.
    pub bake_min_rated_turns: u64,
    /// The score of a turn: these ratings, weighted; empty means every rating, equally.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objective: Vec<ObjectiveTerm>,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        Self {
            steps: vec![5, 10, 25, 50],
            min_rated_turns: 100,
            promote_probability: 0.95,
            max_relative_loss: 0.0025,
            rollback_probability: 0.05,
            alpha: 0.05,
            max_error_rate: 0.02,
            hard_limit_checks: 3,
            max_latency_increase: 0.20,
            max_cost_increase: 0.25,
            step_min_seconds: 3_600,
            step_min_sessions: 50,
            srm_p: 0.001,
            timeout_seconds: 7 * 24 * 3_600,
            bake_seconds: 24 * 3_600,
            bake_max_drop: 0.10,
            auto_rollback: true,
            bake_min_rated_turns: 30,
            objective: Vec::new(),
        }
    }
}

impl CanaryPolicy {
    /// This policy with the fields of `overrides` (a JSON object of policy fields) replaced.
    ///
    /// # Errors
    /// A `FieldError` on `field` naming the bad key or value.
    pub fn overridden(
        &self,
        field: &str,
        overrides: &serde_json::Value,
    ) -> Result<Self, FieldError> {
        let serde_json::Value::Object(given) = overrides else {
            return Err(FieldError::new(
                field,
                "must be an object of policy settings",
            ));
        };
        let mut merged = serde_json::to_value(self)
            .map_err(|e| FieldError::new(field, format!("cannot be merged: {e}")))?;
        if let serde_json::Value::Object(base) = &mut merged {
            for (k, v) in given {
                base.insert(k.clone(), v.clone());
            }
        }
        let policy: Self =
            serde_json::from_value(merged).map_err(|e| FieldError::new(field, e.to_string()))?;
        policy.check(field)?;
        Ok(policy)
    }

    /// Checks the values make sense together.
    ///
    /// # Errors
    /// A `FieldError` naming `field.<setting>`.
    pub fn check(&self, field: &str) -> Result<(), FieldError> {
        let bad = |key: &str, reason: &str| Err(FieldError::new(format!("{field}.{key}"), reason));
        if self.steps.is_empty() {
            return bad("steps", "give at least one share, such as [5, 10, 25, 50]");
        }
        if self.steps.iter().any(|s| !(1..=99).contains(s)) {
            return bad("steps", "every share must be within 1..99 percent");
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) {
            return bad("steps", "shares must rise from step to step");
        }
        for (key, p) in [
            ("promote_probability", self.promote_probability),
            ("rollback_probability", self.rollback_probability),
            ("alpha", self.alpha),
            ("max_error_rate", self.max_error_rate),
            ("srm_p", self.srm_p),
        ] {
            if !(p > 0.0 && p < 1.0) {
                return bad(key, "must be strictly between 0 and 1");
            }
        }
        if self.rollback_probability >= self.promote_probability {
            return bad("rollback_probability", "must be below promote_probability");
        }
        for (key, x) in [
            ("max_relative_loss", self.max_relative_loss),
            ("max_latency_increase", self.max_latency_increase),
            ("max_cost_increase", self.max_cost_increase),
            ("bake_max_drop", self.bake_max_drop),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return bad(key, "must be a non-negative number");
            }
        }
        if self.min_rated_turns == 0 || self.hard_limit_checks == 0 {
            return bad(
                "min_rated_turns",
                "min_rated_turns and hard_limit_checks must be at least 1",
            );
        }
        if self.timeout_seconds == 0 {
            return bad("timeout_seconds", "must be at least 1");
        }
        for (i, term) in self.objective.iter().enumerate() {
            if term.metric.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{field}.objective[{i}].metric"),
                    "must name a rating",
                ));
            }
            if !(term.weight.is_finite() && term.weight > 0.0) {
                return Err(FieldError::new(
                    format!("{field}.objective[{i}].weight"),
                    "must be a positive number",
                ));
            }
        }
        Ok(())
    }

    /// The score of a turn from its mean ratings per metric: the weighted objective, or the mean
    /// of every rating; `None` when the turn has no rating the objective uses.
    pub fn score(&self, ratings: &[(String, f64)]) -> Option<f64> {
        if self.objective.is_empty() {
            if ratings.is_empty() {
                return None;
            }
            return Some(ratings.iter().map(|(_, v)| v).sum::<f64>() / ratings.len() as f64);
        }
        let (mut total, mut weights) = (0.0, 0.0);
        for term in &self.objective {
            if let Some((_, v)) = ratings.iter().find(|(m, _)| *m == term.metric) {
                let v = match term.goal {
                    Goal::Maximize => *v,
                    Goal::Minimize => 1.0 - v,
                };
                total += term.weight * v;
                weights += term.weight;
            }
        }
        (weights > 0.0).then(|| total / weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_name_and_bad_ones_are_named() {
        let base = CanaryPolicy::default();
        let p = base
            .overridden(
                "policy",
                &serde_json::json!({"steps": [20, 50], "min_rated_turns": 10}),
            )
            .unwrap();
        assert_eq!(p.steps, [20, 50]);
        assert_eq!(p.min_rated_turns, 10);
        assert_eq!(p.bake_seconds, base.bake_seconds);
        let err = base
            .overridden("policy", &serde_json::json!({"steps": [50, 20]}))
            .unwrap_err();
        assert_eq!(err.field, "policy.steps");
        let err = base
            .overridden("policy", &serde_json::json!({"stepz": [5]}))
            .unwrap_err();
        assert!(err.reason.contains("unknown field `stepz`"), "{err}");
    }

    #[test]
    fn a_weighted_objective_scores_a_turn() {
        let mut p = CanaryPolicy::default();
        let ratings = vec![
            ("helpfulness".to_owned(), 0.8),
            ("verbosity".to_owned(), 0.6),
        ];
        assert!((p.score(&ratings).unwrap() - 0.7).abs() < 1e-12);
        p.objective = vec![
            ObjectiveTerm {
                metric: "helpfulness".into(),
                weight: 3.0,
                goal: Goal::Maximize,
            },
            ObjectiveTerm {
                metric: "verbosity".into(),
                weight: 1.0,
                goal: Goal::Minimize,
            },
        ];
        assert!((p.score(&ratings).unwrap() - (3.0 * 0.8 + 0.4) / 4.0).abs() < 1e-12);
        assert_eq!(p.score(&[("other".to_owned(), 1.0)]), None);
    }
}
