//! The reference the MCP benchmark measures the platform against: an rmcp server with one trivial
//! tool (`echo`), built from the same rmcp version and served the same way (axum, Streamable HTTP,
//! stateless JSON, the tokio runtime's defaults), with no store, no authentication, no metrics and
//! no logging. Whatever the platform spends beyond it per call is the platform's own.
//!
//! `bare-mcp PORT`; build with `cargo build --release -p aop-local --example bare-mcp`.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Clone)]
struct Bare;

#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    text: String,
}

#[tool_router(server_handler)]
impl Bare {
    #[tool(description = "Echo the text back.")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8001);
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let service: StreamableHttpService<Bare, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Bare), Default::default(), config);
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
