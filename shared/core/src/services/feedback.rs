//! Feedback use cases: submitting feedback and reading the statistics kept from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::AgentId;
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::events::{DomainEvent, payload};
use crate::feedback::{Feedback, Metric, MetricStats, Rating, Scale};
use crate::ports::{AgentStore, FeedbackStore, NoSignal, OutboxSignal, SessionStore};
use crate::principal::Principal;
use crate::session::{FeedbackId, InteractionId, SessionId};
use crate::validate::Problems;

const MAX_RATINGS: usize = 32;
const MAX_COMMENTS: usize = 4_000;
const MAX_CATEGORIES: usize = 16;

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
    /// The authenticated caller, set by the entry point (never an argument); recorded as
    /// `submitted_by`.
    #[serde(skip)]
    #[schemars(skip)]
    pub caller: Option<Principal>,
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
        let scale = Scale::parse(scale_text);
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
            if let Some(scale) = scale {
                if !scale.contains(*value) {
                    p.push(field, format!("{value} is outside the scale {scale_text}"));
                    continue;
                }
                ratings.push(Rating {
                    metric: name,
                    value: *value,
                    scale_min: scale.min,
                    scale_max: scale.max,
                    normalized: scale.normalize(*value),
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
            submitted_by: input.caller,
        };
        let events = [DomainEvent::new(
            &feedback.agent_id,
            now,
            payload::FeedbackSubmitted {
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
        let metric = match q.metric.as_deref().map(|m| (m, Metric::from_query(m))) {
            None => None,
            Some((_, Some(metric))) => Some(metric),
            Some((text, None)) => {
                return Err(ServiceError::invalid(
                    "metric",
                    format!(
                        "'{}' is not a metric: give a rating name (helpfulness), feedback.<name>, \
                         interaction.error, interaction.latency_ms or interaction.tokens",
                        text.escape_debug()
                    ),
                ));
            }
        };
        let metrics = if q.from.is_some() || q.to.is_some() {
            let from = q.from.unwrap_or(0);
            let to = q.to.unwrap_or(i64::MAX);
            if from >= to {
                return Err(ServiceError::invalid("from", "must be before `to`"));
            }
            let rating = match &metric {
                None => None,
                Some(Metric::Rating(name)) => Some(name.as_str()),
                Some(other) => {
                    return Err(ServiceError::invalid(
                        "metric",
                        format!(
                            "'{other}' has no statistics over a time range; only feedback metrics do"
                        ),
                    ));
                }
            };
            self.feedback
                .rating_stats(&q.agent_id, q.version, rating, from, to)
                .await?
        } else {
            self.feedback
                .fitness(&q.agent_id, q.version, metric.as_ref())
                .await?
        };
        Ok(MetricsReport {
            agent_id: q.agent_id,
            metrics,
        })
    }
}
