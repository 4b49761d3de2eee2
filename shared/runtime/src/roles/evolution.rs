//! The evolution worker role (the MSK-triggered `evolution-worker` function): one iteration of
//! an evolution run per `evolution.generation.requested`, with the model and the store, dead
//! letters to Kafka. In `aop serve` the same worker runs in the background ([`Detached`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use aop_core::evolution::EvolutionId;
use aop_core::{
    DomainEvent, EventData, EventHandler, EventType, EvolutionWorker, HandleError, Handled,
};
use async_trait::async_trait;

use super::{Role, chat_model, evolution_service, open_stores, settle};
use crate::adapters::Stores;
use crate::config::Config;
use crate::error::StartupError;

/// The worker, where poison records go, and the store.
#[cfg(feature = "kafka")]
pub struct EvolutionRole {
    pub worker: EvolutionWorker,
    pub dead_letters: aop_events::kafka::KafkaDeadLetters,
    pub stores: Stores,
}

#[cfg(feature = "kafka")]
impl EvolutionRole {
    /// Settles the configuration for the worker (brokers from the MSK cluster ARN, the model's
    /// key from its secret), builds it and checks its store.
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
        let (config, secrets) = settle(config, Role::EvolutionWorker).await?;
        let stores = open_stores(&config, secrets.as_ref())?;
        stores.prepare(&config).await?;
        let model = chat_model(&config, secrets.as_ref())?;
        let worker = EvolutionWorker::new(evolution_service(&config, &stores, model)?);
        let dead_letters =
            aop_events::kafka::KafkaDeadLetters::new(&crate::adapters::kafka_client(&config)?)?;
        Ok((
            config,
            Self {
                worker,
                dead_letters,
                stores,
            },
        ))
    }
}

/// The worker in the background of a process that does other things (`aop serve`): a request
/// is acknowledged at once and its step runs on its own task, so a long iteration never holds
/// up other handlers. A request for a step already running is remembered and the step runs
/// once more after it (steps are idempotent: the second finds nothing to do, or continues).
#[derive(Clone)]
pub struct Detached {
    worker: EvolutionWorker,
    in_flight: Arc<Mutex<HashSet<(EvolutionId, u32)>>>,
    again: Arc<Mutex<HashSet<(EvolutionId, u32)>>>,
}

impl Detached {
    pub fn new(worker: EvolutionWorker) -> Self {
        Self {
            worker,
            in_flight: Arc::default(),
            again: Arc::default(),
        }
    }

    /// Takes up every running run where it stands: what a process does when it starts.
    ///
    /// # Errors
    /// When the store cannot list running runs.
    pub async fn resume(&self) -> Result<usize, aop_core::ServiceError> {
        let running = self.worker.service().running().await?;
        for run in &running {
            tracing::info!(evolution_id = %run.evolution_id, iteration = run.iteration, "resuming evolution");
            self.spawn(run.evolution_id.clone(), run.iteration);
        }
        Ok(running.len())
    }

    fn spawn(&self, evolution_id: EvolutionId, iteration: u32) {
        let key = (evolution_id, iteration);
        {
            let mut in_flight = lock(&self.in_flight);
            if !in_flight.insert(key.clone()) {
                lock(&self.again).insert(key);
                return;
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.worker.service().step(&key.0, key.1).await {
                    // The store failed: the schedule asks again once the run has stalled.
                    tracing::warn!(evolution_id = %key.0, iteration = key.1, error = %e, "evolution step failed");
                }
                let mut in_flight = lock(&this.in_flight);
                if lock(&this.again).remove(&key) {
                    continue;
                }
                in_flight.remove(&key);
                break;
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl EventHandler for Detached {
    fn name(&self) -> &'static str {
        self.worker.name()
    }

    fn wants(&self, event_type: EventType) -> bool {
        self.worker.wants(event_type)
    }

    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let EventData::EvolutionGenerationRequested(request) = &event.data else {
            return Ok(Handled::Ignored);
        };
        self.spawn(request.evolution_id.clone(), request.iteration);
        Ok(Handled::Applied)
    }
}
