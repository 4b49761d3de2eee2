//! The event processor: keeps fitness statistics from interaction and feedback events. Every
//! event is applied at most once (its id is stored with its effect), so redelivery is harmless.

use std::sync::Arc;

use crate::events::{DomainEvent, EventType};
use crate::feedback::{Feedback, FeedbackStore, FitnessUpdate};
use crate::ports::StoreError;
use crate::session::{Interaction, InteractionStatus};

/// What handling an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Applied,
    /// Applied before: nothing changed.
    Duplicate,
    /// Not an event this processor uses.
    Ignored,
}

/// Why an event was not handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The event itself is unusable; retrying will not help (it goes to the dead-letter topic).
    #[error("unusable {event_type} event {event_id}: {reason}")]
    Poison {
        event_id: String,
        event_type: String,
        reason: String,
    },
    /// The store failed; retrying later can succeed.
    #[error("cannot apply event {event_id} now")]
    Transient {
        event_id: String,
        #[source]
        source: StoreError,
    },
}

impl HandleError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Fitness from events.
#[derive(Clone)]
pub struct EventProcessor {
    store: Arc<dyn FeedbackStore>,
}

impl EventProcessor {
    pub fn new(store: Arc<dyn FeedbackStore>) -> Self {
        Self { store }
    }

    /// Applies one event.
    ///
    /// # Errors
    /// `Poison` for an event whose data does not decode; `Transient` when the store failed.
    pub async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let updates = match updates_for(event) {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(Handled::Ignored),
            Err(reason) => {
                return Err(HandleError::Poison {
                    event_id: event.id.clone(),
                    event_type: event.event_type.as_str().to_owned(),
                    reason,
                });
            }
        };
        // Only an event that does not decode is poison; a store failure of any kind is retried,
        // so a sick database delays events instead of discarding them.
        match self.store.apply_once(&event.id, &updates).await {
            Ok(true) => Ok(Handled::Applied),
            Ok(false) => Ok(Handled::Duplicate),
            Err(source) => Err(HandleError::Transient {
                event_id: event.id.clone(),
                source,
            }),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(event: &DomainEvent, key: &str) -> Result<T, String> {
    let value = event
        .data
        .get(key)
        .ok_or_else(|| format!("data has no `{key}`"))?;
    serde_json::from_value(value.clone()).map_err(|e| format!("`{key}` does not decode: {e}"))
}

/// The statistics an event feeds, or `None` for events without any.
fn updates_for(event: &DomainEvent) -> Result<Option<Vec<FitnessUpdate>>, String> {
    match event.event_type {
        EventType::InteractionCompleted | EventType::InteractionFailed => {
            let i: Interaction = decode(event, "interaction")?; // payload::InteractionRecorded
            let failed = i.status == InteractionStatus::Failed;
            let point = |metric: &str, value: f64| FitnessUpdate {
                agent_id: i.agent_id.clone(),
                version: i.version,
                metric: metric.to_owned(),
                value,
            };
            let mut updates = vec![
                point("interaction.error", if failed { 1.0 } else { 0.0 }),
                point("interaction.latency_ms", i.latency_ms as f64),
            ];
            if !failed {
                updates.push(point(
                    "interaction.tokens",
                    (i.usage.prompt_tokens + i.usage.completion_tokens) as f64,
                ));
            }
            Ok(Some(updates))
        }
        EventType::FeedbackSubmitted => {
            let f: Feedback = decode(event, "feedback")?; // payload::FeedbackSubmitted
            Ok(Some(
                f.ratings
                    .iter()
                    .map(|r| FitnessUpdate {
                        agent_id: f.agent_id.clone(),
                        version: f.version,
                        metric: format!("feedback.{}", r.metric),
                        value: r.normalized,
                    })
                    .collect(),
            ))
        }
        _ => Ok(None),
    }
}
