//! Adapters built from settings: the store the configuration names (embedded or Neo4j), as
//! every store port, and the model client. Every role builds only the adapters it uses.

use std::sync::Arc;

use aop_core::{
    AgentStore, Clock, DeploymentStore, EvolutionStore, FeedbackStore, Outbox, ProposalStore,
    SessionStore, StoreError, SystemClock,
};
use aop_store_neo4j::{CredentialSource, Neo4jSettings, Neo4jStore};

use crate::config::Config;
use crate::error::StartupError;

/// The store, as each port the services ask for.
#[derive(Clone)]
pub struct Stores {
    pub agents: Arc<dyn AgentStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub feedback: Arc<dyn FeedbackStore>,
    pub deployments: Arc<dyn DeploymentStore>,
    pub proposals: Arc<dyn ProposalStore>,
    pub evolutions: Arc<dyn EvolutionStore>,
    pub outbox: Arc<dyn Outbox>,
    pub clock: Arc<dyn Clock>,
    /// Told how canaries and evolution runs move along (the metrics, where there are some).
    pub progress: Arc<dyn aop_core::services::ProgressObserver>,
    description: String,
    neo4j: Option<Neo4jStore>,
}

impl Stores {
    /// Opens the store the configuration names: Neo4j when configured, else the embedded one.
    /// `credentials` re-reads the Neo4j login when it is refused (a rotated secret).
    ///
    /// # Errors
    /// `Store` naming the directory or the server; `Unsupported` naming `NEO4J_URI` when no URI
    /// is known.
    pub fn open(
        config: &Config,
        credentials: Option<Arc<dyn CredentialSource>>,
    ) -> Result<Self, StartupError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        match &config.neo4j {
            Some(settings) => {
                let store = neo4j_store(settings, credentials)?.with_clock(clock.clone());
                let description = format!("neo4j at {}", store.target());
                Ok(Self::of(
                    Arc::new(store.clone()),
                    clock,
                    description,
                    Some(store),
                ))
            }
            None => Self::embedded(config, clock),
        }
    }

    #[cfg(feature = "embedded")]
    fn embedded(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let dir = &config.sqlite.data_dir;
        let store = aop_store_sqlite::SqliteStore::open_dir_with_clock(dir, clock.clone())
            .and_then(|store| {
                store.set_durable(config.sqlite.durable())?;
                Ok(store)
            })
            .map_err(|source| StartupError::Store {
                dir: dir.display().to_string(),
                source,
            })?;
        let description = format!("sqlite at {}", store.path().display());
        Ok(Self::of(Arc::new(store), clock, description, None))
    }

    /// A build for Neo4j alone (the Lambda functions) has no embedded store to fall back on.
    #[cfg(not(feature = "embedded"))]
    fn embedded(_config: &Config, _clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        Err(StartupError::Unsupported {
            setting: "database.uri (NEO4J_URI) or secrets.neo4j_arn (NEO4J_SECRET_ARN)",
            reason: "must be set: this build runs on Neo4j and has no embedded store".into(),
        })
    }

    fn of<S>(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        description: String,
        neo4j: Option<Neo4jStore>,
    ) -> Self
    where
        S: AgentStore
            + SessionStore
            + Outbox
            + FeedbackStore
            + DeploymentStore
            + ProposalStore
            + EvolutionStore
            + 'static,
    {
        Self {
            agents: store.clone(),
            sessions: store.clone(),
            feedback: store.clone(),
            deployments: store.clone(),
            proposals: store.clone(),
            evolutions: store.clone(),
            outbox: store,
            clock,
            progress: Arc::new(aop_core::services::NoProgressObserver),
            description,
            neo4j,
        }
    }

    /// `sqlite at ./.aop/aop.sqlite3` or `neo4j at bolt://host:7687`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The Neo4j store, when the platform runs on one.
    pub fn neo4j(&self) -> Option<&Neo4jStore> {
        self.neo4j.as_ref()
    }

    /// Makes sure the store can serve this build: on Neo4j, applies pending migrations when
    /// `AOP_MIGRATE_ON_START` is set, else refuses a graph whose schema is not this build's. A
    /// server that cannot be reached is not fatal here: requests report it, and `/health` too.
    ///
    /// # Errors
    /// `Store` when the schema is wrong or a migration fails.
    pub async fn prepare(&self, config: &Config) -> Result<(), StartupError> {
        let (Some(store), Some(settings)) = (&self.neo4j, &config.neo4j) else {
            return Ok(());
        };
        let outcome = if settings.migrate_on_start {
            aop_store_neo4j::migrations::migrate(store)
                .await
                .map(|applied| {
                    if !applied.is_empty() {
                        tracing::info!(?applied, "graph migrations applied at start");
                    }
                })
        } else {
            aop_store_neo4j::migrations::check(store).await
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e @ StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "Neo4j is not reachable yet; requests will fail until it is");
                Ok(())
            }
            Err(source) => Err(StartupError::Store {
                dir: store.target().to_owned(),
                source,
            }),
        }
    }
}

/// The Neo4j store adapter from its settings.
///
/// # Errors
/// `Unsupported` naming `NEO4J_URI` when no URI is known; `Store` when the URI cannot be used.
pub fn neo4j_store(
    settings: &Neo4jSettings,
    credentials: Option<Arc<dyn CredentialSource>>,
) -> Result<Neo4jStore, StartupError> {
    if settings.uri.is_empty() {
        return Err(StartupError::Unsupported {
            setting: "database.uri (NEO4J_URI)",
            reason:
                "no Neo4j URI: set NEO4J_URI, or put \"uri\" in the secret NEO4J_SECRET_ARN names"
                    .into(),
        });
    }
    Neo4jStore::with_credentials(settings.clone(), credentials).map_err(|source| {
        StartupError::Store {
            dir: aop_store_neo4j::redact_uri(&settings.uri),
            source,
        }
    })
}

/// The OpenAI-compatible client from configuration, or none when neither a key nor a base URL
/// is set.
///
/// # Errors
/// `Llm` when the HTTP client cannot be built.
#[cfg(feature = "llm")]
pub fn openai_model(config: &Config) -> Result<Option<aop_llm::OpenAiChatModel>, StartupError> {
    let openai = &config.openai;
    if !openai.is_configured() {
        return Ok(None);
    }
    tracing::info!(
        base_url = %aop_config::redact::url(openai.endpoint()),
        model = %openai.model,
        "LLM endpoint configured"
    );
    Ok(Some(aop_llm::OpenAiChatModel::new(openai.clone())?))
}

/// MSK IAM tokens for the Kafka clients.
#[cfg(feature = "msk")]
#[derive(Debug)]
pub struct MskIam(pub Arc<aop_aws::MskIamTokens>);

#[cfg(feature = "msk")]
impl aop_events::TokenSource for MskIam {
    fn token(&self) -> Result<(String, i64), String> {
        self.0
            .token()
            .map(|t| (t.token, t.expires_at_ms))
            .map_err(|e| e.to_string())
    }
}

/// Kafka client settings from configuration.
///
/// # Errors
/// `Unsupported` naming `KAFKA_BOOTSTRAP_SERVERS` when no broker is configured.
#[cfg(feature = "kafka")]
pub fn kafka_client(config: &Config) -> Result<aop_events::kafka::ClientSettings, StartupError> {
    aop_events::kafka::ClientSettings::from_settings(&config.kafka).ok_or(
        StartupError::Unsupported {
            setting: "kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS)",
            reason: "must be set to use Kafka".into(),
        },
    )
}
