//! The MCP surface of the platform: an rmcp server whose tools and resources call the core
//! services, and the axum Router (`/mcp`, `/health`, `/metrics`) that serves it locally and on
//! Lambda alike.

mod auth;
mod errors;
pub mod http;
pub mod metrics;
mod request_id;
mod resources;
mod server;

pub use http::{HttpOptions, router};
pub use metrics::Metrics;
pub use request_id::REQUEST_ID_HEADER;
pub use server::{AgentServer, RequestDeadline};
