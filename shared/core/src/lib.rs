//! The core of the agent orchestration platform: domain types, the use cases (services) and the
//! ports (traits) that adapters implement. This crate knows no database, broker, HTTP or AWS
//! crate; everything outside is reached through a port.

pub mod agent;
pub mod clock;
#[cfg(feature = "contract")]
pub mod contract;
pub mod conversation;
pub mod error;
pub mod events;
pub mod feedback;
pub mod llm;
pub mod page;
pub mod ports;
pub mod pricing;
pub mod processor;
pub mod service;
pub mod session;
pub mod time;
pub mod validate;

pub use agent::{
    Agent, AgentId, AgentStatus, AgentVersion, Alias, AliasRoute, Capability, Lineage, LineageEdge,
    ModelParameters, VersionRef,
};
pub use clock::{Clock, SystemClock};
pub use error::{FieldError, ServiceError};
pub use events::{DomainEvent, EventType, Stream};
pub use page::{Cursor, Page, PageRequest};
pub use ports::{
    AgentFilter, AgentStore, EventSink, NoSignal, Outbox, OutboxSignal, SessionStore, StatusFilter,
    StoreError, StoreHealth,
};
pub use service::{AgentDetail, AgentService, CreateAgent, ListAgents, UpdateAgent};
