//! The core of the agent orchestration platform: domain types, the use cases (services) and the
//! ports (traits) that adapters implement. This crate knows no database, broker, HTTP or AWS
//! crate; everything outside is reached through a port.
//!
//! Read it bottom-up; no module imports one listed after it:
//! 1. `error`, `clock`, `stats`, `time`: errors, time and statistics, importing nothing of the
//!    crate;
//! 2. `agent`, `session`, `feedback`, `principal`, `deployment`, `proposal`, `evolution`, `page`,
//!    `pricing`, `llm`, `validate`: domain types, the model port and input checks;
//! 3. `events`: one typed payload per event type;
//! 4. `ports`, `handler`: what adapters implement, and what consumes events;
//! 5. `services`: the use cases every entry point calls.

pub mod clock;
pub mod error;
mod ids;
pub mod stats;
pub mod time;

pub mod agent;
pub mod backup;
pub mod deployment;
pub mod evolution;
pub mod feedback;
pub mod llm;
pub mod page;
pub mod pricing;
pub mod principal;
pub mod proposal;
pub mod session;
pub mod spend;
pub mod validate;

pub mod events;

pub mod handler;
pub mod ports;

pub mod services;

#[cfg(feature = "contract")]
pub mod contract;
#[cfg(any(test, feature = "contract"))]
pub mod samples;

pub use agent::{
    Agent, AgentId, AgentStatus, AgentVersion, Alias, AliasRoute, Capability, Lineage, LineageEdge,
    ModelParameters, VersionOrigin, VersionRef,
};
pub use clock::{Clock, SystemClock};
pub use error::{FieldError, ServiceError, StoreError};
pub use events::{DomainEvent, EventData, EventType, Stream};
pub use handler::{EventHandler, EventStub, HandleError, Handled, HandlerSet};
pub use page::{Cursor, Page, PageRequest};
pub use ports::{
    AgentFilter, AgentStore, Delivery, DeploymentStore, EventSink, EvolutionStore, FeedbackStore,
    NoSignal, Outbox, OutboxSignal, ProposalStore, SessionStore, StatusFilter, StoreHealth,
};
pub use services::agents::{AgentDetail, AgentService, CreateAgent, ListAgents, UpdateAgent};
pub use services::controller::DeploymentController;
pub use services::conversation::ConversationService;
pub use services::deployments::DeploymentService;
pub use services::evolution::{EvolutionRules, EvolutionService, EvolutionWorker};
pub use services::feedback::FeedbackService;
pub use services::fitness::FitnessHandler;
pub use services::proposals::ProposalService;
