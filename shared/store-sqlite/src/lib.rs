//! The embedded store: SQLite (bundled, no server) behind the core's store ports.
//!
//! One connection serves every call on the blocking thread pool; SQLite in WAL mode with
//! `BEGIN IMMEDIATE` transactions makes each use case atomic, and the schema is migrated at
//! open. Without the `store` feature the crate is its settings section only: what a build that
//! runs on Neo4j alone (the Lambda functions) needs to read the configuration.

#[cfg(feature = "store")]
mod backup;
#[cfg(feature = "store")]
mod deployments;
#[cfg(feature = "store")]
mod error;
#[cfg(feature = "store")]
mod evolutions;
#[cfg(feature = "store")]
mod feedback;
#[cfg(feature = "store")]
mod migrations;
#[cfg(feature = "store")]
mod proposals;
#[cfg(feature = "store")]
mod rows;
#[cfg(feature = "store")]
mod sessions;
mod settings;
#[cfg(feature = "store")]
mod store;

#[cfg(feature = "store")]
pub use backup::{SqliteSnapshot, StagedRestore};
#[cfg(feature = "store")]
pub use migrations::SCHEMA_VERSION;
pub use settings::SqliteSettings;
#[cfg(feature = "store")]
pub use store::{DB_FILE, SqliteStore};
