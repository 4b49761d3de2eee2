//! Fitness: running statistics per agent version and metric, kept from interaction and feedback
//! events. Every event is applied at most once (its id is stored with its effect), so redelivery
//! is harmless.

use std::sync::Arc;

use async_trait::async_trait;

use crate::events::{DomainEvent, EventData, EventType};
use crate::feedback::{FitnessUpdate, Metric};
use crate::handler::{EventHandler, HandleError, Handled};
use crate::ports::FeedbackStore;
use crate::session::Interaction;

/// Keeps fitness statistics from events.
#[derive(Clone)]
pub struct FitnessHandler {
    store: Arc<dyn FeedbackStore>,
}

impl FitnessHandler {
    pub fn new(store: Arc<dyn FeedbackStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl EventHandler for FitnessHandler {
    fn name(&self) -> &'static str {
        "fitness"
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::InteractionCompleted
                | EventType::InteractionFailed
                | EventType::FeedbackSubmitted
        )
    }

    /// # Errors
    /// `Transient` when the store failed: a sick database delays events instead of dropping
    /// them.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let Some(updates) = updates_for(&event.data) else {
            return Ok(Handled::Ignored);
        };
        match self.store.apply_once(&event.id, &updates).await {
            Ok(true) => Ok(Handled::Applied),
            Ok(false) => Ok(Handled::Duplicate),
            Err(source) => Err(HandleError::transient(event, source)),
        }
    }

    /// All the batch's statistics in one store call (one transaction on the stores that can).
    async fn handle_batch(&self, events: &[&DomainEvent]) -> Vec<Result<Handled, HandleError>> {
        let updates: Vec<Option<Vec<FitnessUpdate>>> =
            events.iter().map(|e| updates_for(&e.data)).collect();
        let applying: Vec<(&str, &[FitnessUpdate])> = events
            .iter()
            .zip(&updates)
            .filter_map(|(e, u)| u.as_deref().map(|u| (e.id.as_str(), u)))
            .collect();
        if applying.is_empty() {
            return events.iter().map(|_| Ok(Handled::Ignored)).collect();
        }
        match self.store.apply_each_once(&applying).await {
            Ok(fresh) => {
                let mut fresh = fresh.into_iter();
                updates
                    .iter()
                    .map(|u| match u {
                        None => Ok(Handled::Ignored),
                        Some(_) if fresh.next().unwrap_or(false) => Ok(Handled::Applied),
                        Some(_) => Ok(Handled::Duplicate),
                    })
                    .collect()
            }
            // Nothing of the batch counts as applied: from its first event with statistics on,
            // it comes again (each event is applied at most once either way).
            Err(source) => {
                let first = updates.iter().position(Option::is_some).unwrap_or(0);
                let mut results: Vec<Result<Handled, HandleError>> =
                    (0..first).map(|_| Ok(Handled::Ignored)).collect();
                results.push(Err(HandleError::transient(events[first], source)));
                results
            }
        }
    }
}

/// The statistics an event feeds, or `None` for events without any.
fn updates_for(data: &EventData) -> Option<Vec<FitnessUpdate>> {
    match data {
        EventData::InteractionCompleted(p) => Some(turn_updates(&p.interaction, false)),
        EventData::InteractionFailed(p) => Some(turn_updates(&p.interaction, true)),
        EventData::FeedbackSubmitted(p) => Some(
            p.feedback
                .ratings
                .iter()
                .map(|r| FitnessUpdate {
                    agent_id: p.feedback.agent_id.clone(),
                    version: p.feedback.version,
                    metric: Metric::rating(&r.metric),
                    value: r.normalized,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn turn_updates(i: &Interaction, failed: bool) -> Vec<FitnessUpdate> {
    let point = |metric: Metric, value: f64| FitnessUpdate {
        agent_id: i.agent_id.clone(),
        version: i.version,
        metric,
        value,
    };
    let mut updates = vec![
        point(Metric::TurnError, if failed { 1.0 } else { 0.0 }),
        point(Metric::TurnLatencyMs, i.latency_ms as f64),
    ];
    if !failed {
        updates.push(point(
            Metric::TurnTokens,
            (i.usage.prompt_tokens + i.usage.completion_tokens) as f64,
        ));
    }
    updates
}
