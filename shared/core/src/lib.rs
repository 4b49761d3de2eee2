//! The core of the agent orchestration platform: domain types, the use cases (services) and the
//! ports (traits) that adapters implement. This crate knows no database, broker, HTTP or AWS
//! crate; everything outside is reached through a port.

pub mod agent;
pub mod clock;
#[cfg(feature = "contract")]
pub mod contract;
pub mod error;
pub mod page;
pub mod ports;
pub mod service;
pub mod validate;

pub use agent::{
    Agent, AgentId, AgentStatus, AgentVersion, Alias, AliasRoute, Capability, Lineage, LineageEdge,
    ModelParameters, VersionRef,
};
pub use clock::{Clock, SystemClock};
pub use error::{FieldError, ServiceError};
pub use page::{Cursor, Page, PageRequest};
pub use ports::{AgentFilter, AgentStore, StatusFilter, StoreError, StoreHealth};
pub use service::{AgentDetail, AgentService, CreateAgent, ListAgents, UpdateAgent};
