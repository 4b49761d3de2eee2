//! The outbox relay: takes committed events from the outbox, oldest first, hands them to a sink
//! (Kafka, or the event processor in process when no Kafka is configured) and removes them once
//! the sink has them. At least once: a crash between delivery and removal delivers again, and
//! consumers are idempotent.

use std::sync::Arc;
use std::time::Duration;

use aop_core::{
    Delivery, DomainEvent, EventHandler, EventSink, HandleError, Outbox, OutboxSignal, StoreError,
};
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the relay looks at the outbox when nobody wakes it.
const POLL: Duration = Duration::from_secs(1);
/// Events per batch.
const BATCH: u32 = 500;

/// Wakes the relay after a commit.
#[derive(Clone, Default)]
pub struct NotifySignal(pub Arc<Notify>);

impl OutboxSignal for NotifySignal {
    fn notify(&self) {
        self.0.notify_one();
    }
}

/// With no broker, events go straight to the handlers in this process.
pub struct InProcessSink {
    handler: Arc<dyn EventHandler>,
}

impl InProcessSink {
    pub fn new(handler: Arc<dyn EventHandler>) -> Self {
        Self { handler }
    }
}

#[async_trait]
impl EventSink for InProcessSink {
    async fn deliver(&self, events: &[DomainEvent]) -> Delivery {
        for (done, event) in events.iter().enumerate() {
            match self.handler.handle(event).await {
                Ok(_) => {}
                Err(HandleError::Poison {
                    event_id,
                    event_type,
                    reason,
                }) => {
                    // Nothing will make it usable; keep it in the log rather than the outbox.
                    tracing::error!(%event_id, %event_type, %reason, "dropping an unusable event");
                }
                Err(e @ HandleError::Transient { .. }) => {
                    return Delivery::prefix(events.len(), done, Some(e.to_string()));
                }
            }
        }
        Delivery::prefix(events.len(), events.len(), None)
    }
}

/// Told what the relay did: for metrics.
pub trait RelayObserver: Send + Sync {
    /// `events` were delivered to the sink.
    fn published(&self, events: &[DomainEvent]);
    /// The outbox held `n` events when last looked at.
    fn backlog(&self, n: u64);
}

/// Moves events from the outbox to a sink.
#[derive(Clone)]
pub struct OutboxRelay {
    outbox: Arc<dyn Outbox>,
    sink: Arc<dyn EventSink>,
    wake: Arc<Notify>,
    observer: Option<Arc<dyn RelayObserver>>,
}

impl OutboxRelay {
    pub fn new(outbox: Arc<dyn Outbox>, sink: Arc<dyn EventSink>, wake: Arc<Notify>) -> Self {
        Self {
            outbox,
            sink,
            wake,
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn RelayObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Relays until the outbox is empty or a delivery fails; returns how many were relayed.
    ///
    /// # Errors
    /// The store error when the outbox cannot be read or updated.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut relayed = 0;
        loop {
            let batch = self.outbox.pending(BATCH).await?;
            if batch.is_empty() {
                return Ok(relayed);
            }
            let delivery = self.sink.deliver(&batch).await;
            let done: Vec<DomainEvent> = batch
                .iter()
                .zip(&delivery.delivered)
                .filter(|(_, delivered)| **delivered)
                .map(|(e, _)| e.clone())
                .collect();
            if !done.is_empty() {
                let ids: Vec<String> = done.iter().map(|e| e.id.clone()).collect();
                self.outbox.mark_published(&ids).await?;
                if let Some(observer) = &self.observer {
                    observer.published(&done);
                }
            }
            relayed += done.len();
            if let Some(e) = delivery.error {
                tracing::warn!(error = %e, relayed, "outbox relay paused; the rest stays in the outbox");
                return Ok(relayed);
            }
        }
    }

    /// Runs until `shutdown`: drains at once when woken, and every second regardless.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.drain().await {
                tracing::error!(error = %e, "outbox relay cannot read the outbox");
            }
            if let Some(observer) = &self.observer {
                match self.outbox.backlog().await {
                    Ok(n) => observer.backlog(n),
                    Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
        if let Err(e) = self.drain().await {
            tracing::warn!(error = %e, "outbox relay stopped with events left");
        }
    }
}
