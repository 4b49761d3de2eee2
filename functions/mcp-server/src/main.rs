//! The MCP server as an AWS Lambda function behind API Gateway (HTTP API, payload 2.0): the
//! platform's Router, stateless with JSON responses, under `lambda_http`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aop_core::principal::Principal;
use aop_mcp::RequestDeadline;
use aop_runtime::roles::mcp::McpRole;
use aop_runtime::{Config, Overrides, telemetry};
use axum::extract::Request;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
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
    // On the internet behind API Gateway: a request needs a key, a token, or the JWT
    // authorizer's verified subject. Nothing is served anonymously.
    options.require_caller = true;
    let app = role
        .router(options)
        .layer(axum::middleware::map_request(from_invocation));
    tracing::info!(
        store = role.stores.description(),
        "mcp-server function ready"
    );
    lambda_http::run(app).await
}

/// Takes what the invocation knows into the request: its deadline, so agent turns stop in time,
/// and the subject of the JWT API Gateway verified (with a JWT authorizer), as the principal.
async fn from_invocation(mut request: Request) -> Request {
    let subject = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|jwt| jwt.claims.get("sub"))
            .cloned(),
        _ => None,
    };
    if let Some(subject) = subject {
        request.extensions_mut().insert(Principal::named(&subject));
    }
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
