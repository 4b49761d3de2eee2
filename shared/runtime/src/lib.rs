//! Start-up for every entry point: configuration, telemetry, and the composition root that
//! builds adapters from configuration and hands them to the core services.

pub mod config;
pub mod doctor;
pub mod platform;
pub mod relay;
pub mod secrets;
pub mod telemetry;

pub use config::{Config, ConfigError, Overrides};
pub use platform::{Platform, StartupError, settle, start};
