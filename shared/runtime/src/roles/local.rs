//! `aop`: every role in one process. The MCP server, the event handlers (fed by the outbox in
//! process, or by consumer groups when Kafka is configured) and the relay, sharing one store and
//! one metrics registry.

use std::sync::Arc;

use aop_core::{DomainEvent, EventHandler, HandlerSet};
use aop_events::Topics;
use aop_mcp::Metrics;
use aop_mcp::metrics::EventOutcome;

use super::evolution::Detached;
use super::mcp::McpRole;
use super::{Role, Schedule, Subscription, handlers, settle, subscriptions};
use crate::config::Config;
use crate::error::StartupError;
use crate::relay::{InProcessSink, OutboxRelay, RelayObserver};
use crate::secrets::Secrets;

/// The whole platform.
#[derive(Clone)]
pub struct Platform {
    pub mcp: McpRole,
    /// Every handler, the evolution worker among them in the background.
    pub handlers: Vec<Arc<dyn EventHandler>>,
    /// The evolution worker, stepping runs in the background.
    pub evolution: Detached,
    /// Canary checks, proposal expiry and stalled evolutions, on a timer.
    pub schedule: Schedule,
    topics: Topics,
}

impl Platform {
    /// Settles the configuration for every role, builds the platform and checks its store.
    ///
    /// # Errors
    /// As [`settle`], [`Platform::build_with`] and [`crate::adapters::Stores::prepare`].
    pub async fn start(config: Config) -> Result<(Config, Self), StartupError> {
        let (config, secrets) = settle(config, Role::Local).await?;
        let platform = Self::build_with(&config, secrets.as_ref())?;
        platform.mcp.stores.prepare(&config).await?;
        Ok((config, platform))
    }

    /// Builds the platform from configuration alone (no secrets).
    ///
    /// # Errors
    /// `StartupError` naming the setting or the store that failed.
    pub fn build(config: &Config) -> Result<Self, StartupError> {
        Self::build_with(config, None)
    }

    /// As [`Platform::build`], with the secrets cache: a refused Neo4j login or OpenAI key then
    /// reads its secret again before giving up.
    ///
    /// # Errors
    /// As [`Platform::build`].
    pub fn build_with(config: &Config, secrets: Option<&Secrets>) -> Result<Self, StartupError> {
        let mcp = McpRole::build(config, secrets)?;
        let evolution = Detached::new(aop_core::EvolutionWorker::new(mcp.evolutions.clone()));
        let mut handlers = handlers(config, &mcp.stores);
        handlers.push(Arc::new(evolution.clone()));
        let schedule = Schedule::new(config, &mcp.stores)?;
        Ok(Self {
            mcp,
            handlers,
            evolution,
            schedule,
            topics: config.kafka.topics.clone(),
        })
    }

    /// The relay that feeds this process's handlers from the outbox (no broker).
    pub fn in_process_relay(&self) -> OutboxRelay {
        OutboxRelay::new(
            self.mcp.stores.outbox.clone(),
            Arc::new(InProcessSink::new(Arc::new(HandlerSet::new(
                self.handlers.clone(),
            )))),
            self.mcp.outbox_signal.0.clone(),
        )
        .with_observer(self.relay_metrics())
    }

    /// The relay that publishes the outbox to Kafka.
    ///
    /// # Errors
    /// As [`super::relay::kafka_relay`].
    #[cfg(feature = "relay")]
    pub fn kafka_relay(&self, config: &Config) -> Result<OutboxRelay, StartupError> {
        Ok(
            super::relay::kafka_relay(config, &self.mcp.stores, &self.mcp.outbox_signal)?
                .with_observer(self.relay_metrics()),
        )
    }

    /// Which handler reads which topics in which consumer group, when Kafka is configured.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        subscriptions(&self.handlers, &self.topics)
    }

    /// Counts one batch of a consumer, by topic.
    #[cfg(feature = "processor")]
    pub fn observe_batch(&self, stats: &aop_events::msk::BatchStats) {
        for (topic, (consumed, failed, dead)) in &stats.by_topic {
            for (outcome, n) in [
                (EventOutcome::Consumed, consumed),
                (EventOutcome::Failed, failed),
                (EventOutcome::DeadLettered, dead),
            ] {
                if *n > 0 {
                    self.mcp.metrics.observe_events(topic, outcome, *n);
                }
            }
        }
    }

    /// Counts what the relay publishes, by topic, and the outbox backlog.
    fn relay_metrics(&self) -> Arc<dyn RelayObserver> {
        Arc::new(RelayMetrics {
            metrics: self.mcp.metrics.clone(),
            topics: self.topics.clone(),
        })
    }
}

struct RelayMetrics {
    metrics: Arc<Metrics>,
    topics: Topics,
}

impl RelayObserver for RelayMetrics {
    fn published(&self, events: &[DomainEvent]) {
        for event in events {
            let topic = self.topics.topic(event.event_type().stream());
            self.metrics
                .observe_events(topic, EventOutcome::Published, 1);
        }
    }

    fn backlog(&self, n: u64) {
        self.metrics.set_outbox_backlog(n);
    }
}
