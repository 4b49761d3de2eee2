//! The outbox relay role (the scheduled function): publishes the outbox to Kafka. No model.

use std::sync::Arc;

use aop_core::Outbox;

use super::{Role, open_stores, settle};
use crate::adapters::{Stores, kafka_client};
use crate::config::Config;
use crate::error::StartupError;
use crate::relay::{NotifySignal, OutboxRelay};

/// The relay and the outbox it drains.
pub struct RelayRole {
    pub relay: OutboxRelay,
    pub outbox: Arc<dyn Outbox>,
    pub stores: Stores,
}

impl RelayRole {
    /// Settles the configuration for the relay, builds it and checks its store.
    ///
    /// # Errors
    /// As [`settle`], [`Stores::open`] and [`kafka_relay`].
    pub async fn start(config: Config) -> Result<(Config, Self), StartupError> {
        let (config, secrets) = settle(config, Role::OutboxRelay).await?;
        let stores = open_stores(&config, secrets.as_ref())?;
        stores.prepare(&config).await?;
        let relay = kafka_relay(&config, &stores, &NotifySignal::default())?;
        let outbox = stores.outbox.clone();
        Ok((
            config,
            Self {
                relay,
                outbox,
                stores,
            },
        ))
    }
}

/// The relay that publishes `stores`' outbox to Kafka, woken by `signal`.
///
/// # Errors
/// `Unsupported` naming `KAFKA_BOOTSTRAP_SERVERS` when no broker is configured; `Kafka` when
/// the producer cannot be created.
pub fn kafka_relay(
    config: &Config,
    stores: &Stores,
    signal: &NotifySignal,
) -> Result<OutboxRelay, StartupError> {
    let sink =
        aop_events::kafka::KafkaSink::new(kafka_client(config)?, config.kafka.topics.clone())?;
    Ok(OutboxRelay::new(
        stores.outbox.clone(),
        Arc::new(sink),
        signal.0.clone(),
    ))
}
