//! The event processor role (the MSK-triggered function): the platform's event handlers
//! (fitness, the deployment controller) on the store, with dead letters to Kafka, and the
//! scheduled pass. No model.

use aop_core::HandlerSet;
use aop_events::kafka::KafkaDeadLetters;

use super::{Role, Schedule, handlers, open_stores, settle};
use crate::adapters::{Stores, kafka_client};
use crate::config::Config;
use crate::error::StartupError;

/// Every handler behind one, where poison records go, and the scheduled pass (the function's
/// schedule trigger runs it).
pub struct ProcessorRole {
    pub handlers: HandlerSet,
    pub dead_letters: KafkaDeadLetters,
    pub schedule: Schedule,
    pub stores: Stores,
}

impl ProcessorRole {
    /// Settles the configuration for the processor (its brokers from the MSK cluster ARN when
    /// needed), builds it and checks its store.
    ///
    /// # Errors
    /// `Unsupported` naming the Kafka settings when no broker is known (dead letters go to
    /// Kafka); as [`settle`] and [`Stores::open`] otherwise.
    pub async fn start(config: Config) -> Result<(Config, Self), StartupError> {
        if config.kafka.bootstrap_servers.is_none() && config.kafka.cluster_arn.is_none() {
            return Err(StartupError::Unsupported {
                setting: "kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS) or kafka.cluster_arn (MSK_CLUSTER_ARN)",
                reason: "must be set: dead letters go to Kafka".into(),
            });
        }
        let (config, secrets) = settle(config, Role::EventProcessor).await?;
        let stores = open_stores(&config, secrets.as_ref())?;
        stores.prepare(&config).await?;
        let dead_letters = KafkaDeadLetters::new(&kafka_client(&config)?)?;
        let role = Self {
            handlers: HandlerSet::new(handlers(&config, &stores)),
            dead_letters,
            schedule: Schedule::new(&config, &stores)?,
            stores,
        };
        Ok((config, role))
    }
}
