//! The MCP server as an AWS Lambda function behind API Gateway (HTTP API, payload 2.0): the
//! platform's Router, stateless with JSON responses, under `lambda_http`.

use aop_runtime::{Config, Overrides, Platform, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let config = Config::load(None, &Overrides::default())?;
    telemetry::init(&config.log_level)?;
    let platform = Platform::build(&config)?;
    let mut options = Platform::http_options(&config, CancellationToken::new());
    // A Lambda instance keeps no MCP sessions: any instance must answer any request.
    options.stateless = true;
    options.json_response = true;
    options.expose_metrics = false;
    tracing::info!(
        store = platform.store_description(),
        "mcp-server function ready"
    );
    lambda_http::run(platform.router(options)).await
}
