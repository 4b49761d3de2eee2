//! The composition root: builds the store and services from configuration and hands out the
//! HTTP Router. Every entry point (local binary, Lambda functions) starts here.

use std::sync::Arc;

use aop_core::{AgentService, AgentStore, SystemClock};
use aop_mcp::{AgentServer, HttpOptions, Metrics};
use aop_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{setting}: {reason}")]
    Unsupported {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot open the embedded store in {dir}")]
    Store {
        dir: String,
        #[source]
        source: aop_core::StoreError,
    },
}

/// The running platform's services and shared state.
#[derive(Clone)]
pub struct Platform {
    pub agents: AgentService,
    pub store: Arc<dyn AgentStore>,
    pub metrics: Arc<Metrics>,
    store_description: String,
}

impl Platform {
    /// Builds adapters from configuration.
    ///
    /// # Errors
    /// `StartupError` naming the setting or the store that failed.
    pub fn build(config: &Config) -> Result<Self, StartupError> {
        if config.database.neo4j.is_some() {
            return Err(StartupError::Unsupported {
                setting: "database.uri (NEO4J_URI)",
                reason: "this build has no Neo4j store adapter yet; unset NEO4J_URI to use \
                         the embedded store"
                    .into(),
            });
        }
        let dir = &config.database.data_dir;
        let store = SqliteStore::open_dir(dir).map_err(|source| StartupError::Store {
            dir: dir.display().to_string(),
            source,
        })?;
        let store_description = format!("sqlite at {}", store.path().display());
        let store: Arc<dyn AgentStore> = Arc::new(store);
        let agents = AgentService::new(
            store.clone(),
            Arc::new(SystemClock),
            config.openai.model.clone(),
        );
        Ok(Self {
            agents,
            store,
            metrics: Arc::new(Metrics::new()),
            store_description,
        })
    }

    pub fn store_description(&self) -> &str {
        &self.store_description
    }

    /// HTTP options from configuration.
    pub fn http_options(config: &Config, shutdown: CancellationToken) -> HttpOptions {
        HttpOptions {
            allowed_hosts: config.server.allowed_hosts.clone(),
            allowed_origins: config.server.allowed_origins.clone(),
            api_keys: config.server.api_keys.clone(),
            stateless: config.server.stateless,
            json_response: config.server.json_response,
            expose_metrics: true,
            shutdown,
        }
    }

    /// A fresh MCP server over this platform's services.
    pub fn mcp_server(&self) -> AgentServer {
        AgentServer::new(self.agents.clone(), self.metrics.clone())
    }

    /// The Router serving the platform's MCP server.
    pub fn router(&self, options: HttpOptions) -> axum::Router {
        let platform = self.clone();
        aop_mcp::router(
            move || platform.mcp_server(),
            options,
            self.metrics.clone(),
            self.store.clone(),
        )
    }
}
