//! The MCP server as an AWS Lambda function behind API Gateway (HTTP API, payload 2.0): the
//! platform's Router, stateless with JSON responses, under `lambda_http`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aop_mcp::RequestDeadline;
use aop_runtime::roles::mcp::McpRole;
use aop_runtime::{Config, Overrides, telemetry};
use axum::extract::Request;
use lambda_http::RequestExt;
use tokio_util::sync::CancellationToken;

/// Time kept back from the invocation's deadline to write the answer.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1_500);

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(config.log_level())?;
    let (config, role) = McpRole::start(config).await?;
    let mut options = config.server.http_options(CancellationToken::new());
    // A Lambda instance keeps no MCP sessions: any instance must answer any request.
    options.stateless = true;
    options.json_response = true;
    options.expose_metrics = false;
    let app = role
        .router(options)
        .layer(axum::middleware::map_request(attach_deadline));
    tracing::info!(
        store = role.stores.description(),
        "mcp-server function ready"
    );
    lambda_http::run(app).await
}

/// Turns the invocation's deadline into the request's, so agent turns stop in time.
async fn attach_deadline(mut request: Request) -> Request {
    let deadline_ms = request.lambda_context_ref().map(|c| c.deadline);
    if let Some(deadline_ms) = deadline_ms {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        let deadline = Instant::now() + left.saturating_sub(DEADLINE_MARGIN);
        request.extensions_mut().insert(RequestDeadline(deadline));
    }
    request
}
