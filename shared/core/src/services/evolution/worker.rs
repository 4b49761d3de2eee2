//! The evolution worker: one iteration per `evolution.generation.requested` event, on Lambda
//! (the `evolution-worker` function on the `evolution_events` topic), in `aop serve`'s consumer
//! group, or in process.

use async_trait::async_trait;

use super::{EvolutionService, Step};
use crate::error::ServiceError;
use crate::events::{DomainEvent, EventData, EventType};
use crate::handler::{EventHandler, HandleError, Handled};

/// Takes the iterations of evolution runs.
#[derive(Clone)]
pub struct EvolutionWorker {
    service: EvolutionService,
}

impl EvolutionWorker {
    pub fn new(service: EvolutionService) -> Self {
        Self { service }
    }

    pub fn service(&self) -> &EvolutionService {
        &self.service
    }
}

#[async_trait]
impl EventHandler for EvolutionWorker {
    fn name(&self) -> &'static str {
        "evolution"
    }

    fn wants(&self, event_type: EventType) -> bool {
        event_type == EventType::EvolutionGenerationRequested
    }

    /// # Errors
    /// `Transient` when the store failed (the request comes again and the step resumes from
    /// what it cached); `Poison` for anything else, which no retry can fix.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let EventData::EvolutionGenerationRequested(request) = &event.data else {
            return Ok(Handled::Ignored);
        };
        match self
            .service
            .step(&request.evolution_id, request.iteration)
            .await
        {
            Ok(Step::Duplicate) => Ok(Handled::Duplicate),
            Ok(_) => Ok(Handled::Applied),
            Err(ServiceError::Store(source)) => Err(HandleError::transient(event, source)),
            Err(other) => Err(HandleError::poison(event, other.to_string())),
        }
    }
}
