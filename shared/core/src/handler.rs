//! Event handlers: what consumes events, on Lambda (an MSK batch), in `aop serve` (a Kafka
//! consumer group) or in process (the outbox relay with no broker). A handler says which event
//! types it wants and applies each at most once; the runtime decides which handler reads which
//! topic in which consumer group.

use std::sync::Arc;

use async_trait::async_trait;

use crate::AgentId;
use crate::error::StoreError;
use crate::events::{DomainEvent, EventType};
use crate::session::InteractionId;

/// An event that travelled without its data (its record would have passed the broker's size
/// limit): the envelope, and the ids that let a handler read the data back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventStub {
    pub id: String,
    pub event_type: EventType,
    pub subject: AgentId,
    /// Epoch milliseconds.
    pub time: i64,
    pub correlation_id: Option<String>,
    /// The interaction an `interaction.*` event is about.
    pub interaction_id: Option<InteractionId>,
}

impl EventStub {
    /// The event rebuilt around data read back from the store.
    pub fn with_data(&self, data: crate::events::EventData) -> DomainEvent {
        DomainEvent {
            id: self.id.clone(),
            subject: self.subject.clone(),
            time: self.time,
            data,
            correlation_id: self.correlation_id.clone(),
        }
    }
}

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

    /// The event behind `stub`, its data read back from the store; `None` when this handler
    /// cannot (the event is then dead-lettered, saying so).
    ///
    /// # Errors
    /// `Transient` when the store failed for now; `Poison` when the data is gone.
    async fn recall(&self, _stub: &EventStub) -> Result<Option<DomainEvent>, HandleError> {
        Ok(None)
    }

    /// Applies one event; an event applied before changes nothing.
    ///
    /// # Errors
    /// `Poison` for an event that can never be applied; `Transient` when retrying can help.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError>;

    /// Applies events in order as [`EventHandler::handle`] would, one result per event up to
    /// and including the first transient failure; the events after it are not attempted (they
    /// come again). A handler that can apply many events in one store transaction overrides it.
    async fn handle_batch(&self, events: &[&DomainEvent]) -> Vec<Result<Handled, HandleError>> {
        one_by_one(self, events).await
    }
}

/// [`EventHandler::handle`] for each event in order, stopping after the first transient
/// failure: what [`EventHandler::handle_batch`] does unless a handler does better.
pub async fn one_by_one<H: EventHandler + ?Sized>(
    handler: &H,
    events: &[&DomainEvent],
) -> Vec<Result<Handled, HandleError>> {
    let mut results = Vec::with_capacity(events.len());
    for event in events {
        let result = handler.handle(event).await;
        let stop = matches!(&result, Err(e) if e.is_transient());
        results.push(result);
        if stop {
            break;
        }
    }
    results
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

    /// The first interested handler that can read the event back does.
    async fn recall(&self, stub: &EventStub) -> Result<Option<DomainEvent>, HandleError> {
        for handler in self.handlers.iter().filter(|h| h.wants(stub.event_type)) {
            if let Some(event) = handler.recall(stub).await? {
                return Ok(Some(event));
            }
        }
        Ok(None)
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

    /// Each handler gets the events it wants as one batch. The answer stops at the first event
    /// some handler could not apply for now (or did not reach): that event and the ones after it
    /// come again, and handlers that did apply them find them in their ledgers.
    async fn handle_batch(&self, events: &[&DomainEvent]) -> Vec<Result<Handled, HandleError>> {
        let mut combined: Vec<Result<Handled, HandleError>> =
            events.iter().map(|_| Ok(Handled::Ignored)).collect();
        let mut reached = events.len();
        for handler in &self.handlers {
            let wanted: Vec<usize> = (0..events.len())
                .filter(|&i| handler.wants(events[i].event_type()))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let batch: Vec<&DomainEvent> = wanted.iter().map(|&i| events[i]).collect();
            let results = handler.handle_batch(&batch).await;
            if let Some(&first_unreached) = wanted.get(results.len()) {
                reached = reached.min(first_unreached);
            }
            for (&i, result) in wanted.iter().zip(results) {
                combined[i] = match (
                    std::mem::replace(&mut combined[i], Ok(Handled::Ignored)),
                    result,
                ) {
                    (Err(kept), Err(new)) if kept.is_transient() || !new.is_transient() => {
                        Err(kept)
                    }
                    (_, Err(new)) => Err(new),
                    (Err(kept), Ok(_)) => Err(kept),
                    (Ok(Handled::Applied), Ok(_)) | (Ok(_), Ok(Handled::Applied)) => {
                        Ok(Handled::Applied)
                    }
                    (Ok(Handled::Duplicate), Ok(_)) | (Ok(_), Ok(Handled::Duplicate)) => {
                        Ok(Handled::Duplicate)
                    }
                    (Ok(_), Ok(_)) => Ok(Handled::Ignored),
                };
                if matches!(&combined[i], Err(e) if e.is_transient()) {
                    reached = reached.min(i);
                }
            }
        }
        // Up to and including the first transient failure; an event no handler reached is
        // left out (it comes again).
        let keep = match combined.get(reached) {
            Some(Err(e)) if e.is_transient() => reached + 1,
            _ => reached,
        };
        combined.truncate(keep);
        combined
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::AgentId;

    /// Applies every event, except that it fails, transiently or for good, at given positions
    /// of each batch it is handed; records what it saw.
    struct Scripted {
        transient_at: Option<usize>,
        poison_at: Option<usize>,
        seen: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(transient_at: Option<usize>, poison_at: Option<usize>) -> Arc<Self> {
            Arc::new(Self {
                transient_at,
                poison_at,
                seen: Mutex::default(),
            })
        }
    }

    #[async_trait]
    impl EventHandler for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn wants(&self, _: EventType) -> bool {
            true
        }

        async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
            let at = {
                let mut seen = self.seen.lock().unwrap();
                seen.push(event.id.clone());
                seen.len() - 1
            };
            if self.transient_at == Some(at) {
                return Err(HandleError::transient(
                    event,
                    StoreError::unavailable("down", std::io::Error::other("down")),
                ));
            }
            if self.poison_at == Some(at) {
                return Err(HandleError::poison(event, "unusable"));
            }
            Ok(Handled::Applied)
        }
    }

    fn events(n: usize) -> Vec<DomainEvent> {
        let agent = AgentId::parse("agent_id", "agt_batch").unwrap();
        (0..n)
            .map(|_| crate::samples::event(EventType::FeedbackSubmitted, &agent))
            .collect()
    }

    #[tokio::test]
    async fn a_set_answers_a_batch_up_to_the_first_event_a_handler_cannot_apply_now() {
        let events = events(4);
        let refs: Vec<&DomainEvent> = events.iter().collect();
        let steady = Scripted::new(None, Some(0));
        let flaky = Scripted::new(Some(2), None);
        let set = HandlerSet::new(vec![steady.clone(), flaky.clone()]);
        let results = set.handle_batch(&refs).await;
        // Event 0: one handler found it unusable. Event 1: applied. Event 2: the flaky
        // handler failed for now, so the answer ends there and event 3 comes again.
        assert_eq!(results.len(), 3, "{results:?}");
        assert!(matches!(&results[0], Err(HandleError::Poison { .. })));
        assert_eq!(results[1].as_ref().unwrap(), &Handled::Applied);
        assert!(results[2].as_ref().is_err_and(HandleError::is_transient));
        assert_eq!(steady.seen.lock().unwrap().len(), 4);
        assert_eq!(flaky.seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn one_by_one_and_as_a_batch_agree() {
        let events = events(3);
        let refs: Vec<&DomainEvent> = events.iter().collect();
        let set = HandlerSet::new(vec![Scripted::new(None, Some(1))]);
        let batch = set.handle_batch(&refs).await;
        let set = HandlerSet::new(vec![Scripted::new(None, Some(1))]);
        let mut single = Vec::new();
        for e in &refs {
            single.push(set.handle(e).await);
        }
        let shape = |r: &Result<Handled, HandleError>| match r {
            Ok(h) => format!("{h:?}"),
            Err(e) => format!("error transient={}", e.is_transient()),
        };
        assert_eq!(
            batch.iter().map(shape).collect::<Vec<_>>(),
            single.iter().map(shape).collect::<Vec<_>>()
        );
    }
}
