//! The MCP surface of the platform: an rmcp server whose tools and resources call the core
//! services, and the axum Router (`/mcp`, `/health`, `/metrics`) that serves it locally and on
//! Lambda alike.

#[cfg(feature = "server")]
mod args;
#[cfg(feature = "server")]
mod auth;
#[cfg(feature = "server")]
mod catalog;
#[cfg(feature = "server")]
pub mod charts;
#[cfg(feature = "server")]
mod errors;
#[cfg(feature = "server")]
mod evolution;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "listen")]
pub mod listen;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod oauth;
#[cfg(feature = "server")]
mod origin;
#[cfg(feature = "server")]
mod request_id;
#[cfg(feature = "server")]
mod resources;
#[cfg(feature = "server")]
pub mod scopes;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
pub mod sessions;
mod settings;
#[cfg(feature = "server")]
mod structured;
#[cfg(feature = "server")]
mod tools;
mod toolset;

#[cfg(feature = "server")]
pub use catalog::ToolCatalog;
#[cfg(feature = "server")]
pub use http::{HttpOptions, RateLimit, router};
#[cfg(feature = "server")]
pub use metrics::Metrics;
#[cfg(feature = "server")]
pub use request_id::REQUEST_ID_HEADER;
#[cfg(feature = "server")]
pub use server::{AgentServer, RequestDeadline, Services};
pub use settings::ServerSettings;
pub use toolset::Toolset;
