//! Start-up for every entry point: configuration, telemetry, and one composition root per role
//! that builds the adapters the role uses from configuration and hands them to the core
//! services.
//!
//! Read bottom-up: `error`, `config`, `telemetry`, `role`; `adapters` (stores, model, Kafka client from
//! settings); `secrets` (values by ARN, for a role); `relay`; `roles` (the composition roots);
//! `doctor` (checks every dependency, for `aop doctor`).

pub mod adapters;
#[cfg(feature = "backup")]
pub mod backup;
pub mod config;
#[cfg(feature = "local")]
pub mod doctor;
pub mod error;
pub mod relay;
pub mod role;
pub mod roles;
pub mod secrets;
pub mod telemetry;

pub use config::{Config, ConfigError, Overrides};
pub use error::StartupError;
pub use role::Role;
#[cfg(feature = "local")]
pub use roles::local::Platform;
pub use roles::settle;
