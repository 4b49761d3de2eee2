//! Fixture mode for the official MCP conformance suite: the platform's own Router, config and
//! middleware serving the agent tools plus the `test_*` tools, `test://` resources and `test_*`
//! prompts the suite calls. Used by `tests/conformance/run`.

mod fixtures;
mod input;
mod server;
mod tasks;

use std::net::SocketAddr;
use std::process::ExitCode;

use aop_runtime::roles::mcp::McpRole;
use aop_runtime::{Config, Overrides, telemetry};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "aop-conformance-server",
    about = "aop with the MCP conformance fixtures"
)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// Directory of the embedded store.
    #[arg(long)]
    data_dir: String,
    /// Serve without sessions, as on Lambda.
    #[arg(long)]
    stateless: bool,
    /// Prefer application/json responses.
    #[arg(long)]
    json_response: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut overrides = Overrides::default();
    overrides.set("server.port", "--port", args.port.to_string());
    overrides.set("database.data_dir", "--data-dir", &args.data_dir);
    overrides.set(
        "server.stateless",
        "--stateless",
        args.stateless.to_string(),
    );
    // The suite is one caller sending hundreds of requests in seconds.
    overrides.set("server.rate_limit_per_minute", "--rate-limit", "0");
    overrides.set(
        "server.json_response",
        "--json-response",
        args.json_response.to_string(),
    );
    let config = match Config::load(None, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aop-conformance-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = telemetry::init(config.log_level()) {
        eprintln!("aop-conformance-server: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aop-conformance-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let platform = McpRole::build(&config, None)?;
    let options = config.server.http_options(CancellationToken::new());
    let make = {
        let platform = platform.clone();
        let shared = std::sync::Arc::new(server::Shared::default());
        move || server::ConformanceServer::new(platform.mcp_server(), shared.clone())
    };
    let app = aop_mcp::router(
        make,
        options,
        platform.metrics.clone(),
        platform.stores.agents.clone(),
    );
    let addr = SocketAddr::new(config.server.host, config.server.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(url = %format!("http://{addr}/mcp"), stateless = config.server.stateless, "listening");
    aop_mcp::listen::serve(
        listener,
        app,
        config.server.limits(),
        std::future::pending(),
    )
    .await;
    Ok(())
}
