//! Event handlers: what consumes events, on Lambda (an MSK batch), in `aop serve` (a Kafka
//! consumer group) or in process (the outbox relay with no broker). A handler says which event
//! types it wants and applies each at most once; the runtime decides which handler reads which
//! topic in which consumer group.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::events::{DomainEvent, EventType};

/// What handling an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Applied,
    /// Applied before: nothing changed.
    Duplicate,
    /// Not an event this handler uses.
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

    pub fn poison(event: &DomainEvent, reason: impl Into<String>) -> Self {
        Self::Poison {
            event_id: event.id.clone(),
            event_type: event.event_type().as_str().to_owned(),
            reason: reason.into(),
        }
    }

    pub fn transient(event: &DomainEvent, source: StoreError) -> Self {
        Self::Transient {
            event_id: event.id.clone(),
            source,
        }
    }
}

/// Consumes events of the types it wants, each at most once.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// A short stable name (`fitness`): the consumer group is named after it.
    fn name(&self) -> &'static str;

    /// Whether events of this type concern the handler.
    fn wants(&self, event_type: EventType) -> bool;

    /// Applies one event; an event applied before changes nothing.
    ///
    /// # Errors
    /// `Poison` for an event that can never be applied; `Transient` when retrying can help.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError>;
}

/// Several handlers behind one: each event goes to every handler that wants it, in order. Used
/// where one consumer feeds several handlers (in process, or one Lambda function).
#[derive(Clone, Default)]
pub struct HandlerSet {
    handlers: Vec<Arc<dyn EventHandler>>,
}

impl HandlerSet {
    pub fn new(handlers: Vec<Arc<dyn EventHandler>>) -> Self {
        Self { handlers }
    }

    pub fn handlers(&self) -> &[Arc<dyn EventHandler>] {
        &self.handlers
    }
}

#[async_trait]
impl EventHandler for HandlerSet {
    fn name(&self) -> &'static str {
        "handlers"
    }

    fn wants(&self, event_type: EventType) -> bool {
        self.handlers.iter().any(|h| h.wants(event_type))
    }

    /// Every interested handler sees the event, even after one failed: they keep their own
    /// ledgers, so a retry of the whole set changes nothing for those that applied it.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let mut outcome = Handled::Ignored;
        let mut failure = None;
        for handler in self.handlers.iter().filter(|h| h.wants(event.event_type())) {
            match handler.handle(event).await {
                Ok(Handled::Applied) => outcome = Handled::Applied,
                Ok(Handled::Duplicate) if outcome == Handled::Ignored => {
                    outcome = Handled::Duplicate;
                }
                Ok(_) => {}
                // A transient failure wins over poison: the event comes again, and a handler
                // that finds it unusable then will say so again.
                Err(e)
                    if failure
                        .as_ref()
                        .is_none_or(|f: &HandleError| !f.is_transient()) =>
                {
                    failure = Some(e);
                }
                Err(_) => {}
            }
        }
        failure.map_or(Ok(outcome), Err)
    }
}
