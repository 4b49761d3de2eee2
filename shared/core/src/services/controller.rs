//! The deployment controller as an event handler: after a turn or a rating of an agent with a
//! watched canary, that canary is checked again, at most once per interval. The schedule's pass
//! ([`DeploymentService::tick`]) covers canaries no traffic reaches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::agent::AgentId;
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::events::{DomainEvent, EventType};
use crate::handler::{EventHandler, HandleError, Handled};
use crate::services::deployments::{DeploymentService, Evaluated};

/// How long the set of agents with a watched canary is reused before it is read again: the
/// handler runs for every turn, and most agents have no canary.
const WATCHED_TTL_MS: i64 = 5_000;

/// Re-checks an agent's canary when its turns or ratings arrive.
pub struct DeploymentController {
    service: DeploymentService,
    clock: Arc<dyn Clock>,
    interval_ms: i64,
    watched: Mutex<Option<(i64, HashSet<AgentId>)>>,
}

impl DeploymentController {
    /// Checks a canary at most once per `interval_ms`.
    pub fn new(service: DeploymentService, clock: Arc<dyn Clock>, interval_ms: i64) -> Self {
        Self {
            service,
            clock,
            interval_ms,
            watched: Mutex::new(None),
        }
    }

    async fn has_watched_canary(&self, agent_id: &AgentId) -> Result<bool, ServiceError> {
        let now = self.clock.now_ms();
        if let Some((at, agents)) = &*self.watched.lock().unwrap_or_else(PoisonError::into_inner)
            && now - at < WATCHED_TTL_MS
        {
            return Ok(agents.contains(agent_id));
        }
        let agents = self.service.watched_agents().await?;
        let found = agents.contains(agent_id);
        *self.watched.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, agents));
        Ok(found)
    }
}

#[async_trait]
impl EventHandler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployments"
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::InteractionCompleted
                | EventType::InteractionFailed
                | EventType::FeedbackSubmitted
        )
    }

    /// Decisions are compare-and-set on the canary: a redelivered event at most checks again.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let transient = |e: ServiceError| match e {
            ServiceError::Store(source) => HandleError::transient(event, source),
            other => HandleError::poison(event, other.to_string()),
        };
        if !self
            .has_watched_canary(&event.subject)
            .await
            .map_err(transient)?
        {
            return Ok(Handled::Ignored);
        }
        let due = self
            .service
            .due_canaries(&event.subject, self.interval_ms)
            .await
            .map_err(transient)?;
        let mut outcome = Handled::Ignored;
        for canary_id in due {
            if let Evaluated::Decided(_) =
                self.service.evaluate(&canary_id).await.map_err(transient)?
            {
                outcome = Handled::Applied;
            }
        }
        Ok(outcome)
    }
}
