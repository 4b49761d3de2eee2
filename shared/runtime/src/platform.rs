//! The composition root: builds the store and services from configuration and hands out the
//! HTTP Router. Every entry point (local binary, Lambda functions) starts here.

use std::sync::Arc;

use aop_core::conversation::ConversationService;
use aop_core::feedback::{FeedbackService, FeedbackStore};
use aop_core::llm::{ChatModel, UnconfiguredModel};
use aop_core::processor::EventProcessor;
use aop_core::{AgentService, AgentStore, Outbox, SessionStore, SystemClock};
use aop_llm::{OpenAiChatModel, OpenAiSettings};
use aop_mcp::{AgentServer, HttpOptions, Metrics};
use aop_store_neo4j::Neo4jStore;
use aop_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::relay::{InProcessSink, NotifySignal, OutboxRelay};
use crate::secrets::Secrets;

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
    #[error("kafka: {0}")]
    Kafka(#[from] aop_events::kafka::KafkaError),
    #[error("openai: {0}")]
    Llm(#[from] aop_llm::SetupError),
    #[error("secrets: {0}")]
    Secret(#[from] aop_aws::SecretsError),
    #[error("aws: {0}")]
    Aws(String),
    #[error("msk: {0}")]
    Msk(String),
    #[error("cannot use the store at {dir}")]
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
    pub conversations: ConversationService,
    pub feedback: FeedbackService,
    pub processor: EventProcessor,
    pub outbox: Arc<dyn Outbox>,
    /// Woken after every commit that wrote events.
    pub outbox_signal: NotifySignal,
    pub store: Arc<dyn AgentStore>,
    pub metrics: Arc<Metrics>,
    store_description: String,
    neo4j: Option<Neo4jStore>,
    topics: aop_events::Topics,
}

struct RelayMetrics {
    metrics: Arc<Metrics>,
    topics: aop_events::Topics,
}

impl crate::relay::RelayObserver for RelayMetrics {
    fn published(&self, events: &[aop_core::DomainEvent]) {
        for event in events {
            let topic = self.topics.topic(event.event_type.stream());
            self.metrics
                .observe_events(topic, aop_mcp::metrics::EventOutcome::Published, 1);
        }
    }

    fn backlog(&self, n: u64) {
        self.metrics.set_outbox_backlog(n);
    }
}

impl Platform {
    /// Builds adapters from configuration.
    ///
    /// # Errors
    /// `StartupError` naming the setting or the store that failed.
    pub fn build(config: &Config) -> Result<Self, StartupError> {
        Self::build_with(config, None)
    }

    /// As [`Platform::build`], with the secrets cache: a refused Neo4j login or OpenAI key then
    /// reads its secret again before giving up.
    ///
    /// # Errors
    /// As [`Platform::build`].
    pub fn build_with(config: &Config, secrets: Option<&Secrets>) -> Result<Self, StartupError> {
        match &config.database.neo4j {
            Some(neo4j) => {
                let credentials = match (secrets, &config.secrets.neo4j_arn) {
                    (Some(secrets), Some(arn)) => Some(Arc::new(crate::secrets::Neo4jSecret {
                        cache: secrets.cache.clone(),
                        arn: arn.clone(),
                    })
                        as Arc<dyn aop_store_neo4j::CredentialSource>),
                    _ => None,
                };
                let store = neo4j_store(neo4j, credentials)?;
                let description = format!("neo4j at {}", store.target());
                Self::wire(
                    config,
                    secrets,
                    Arc::new(store.clone()),
                    description,
                    Some(store),
                )
            }
            None => {
                let dir = &config.database.data_dir;
                let store = SqliteStore::open_dir(dir).map_err(|source| StartupError::Store {
                    dir: dir.display().to_string(),
                    source,
                })?;
                let description = format!("sqlite at {}", store.path().display());
                Self::wire(config, secrets, Arc::new(store), description, None)
            }
        }
    }

    /// Builds the services on one store adapter.
    fn wire<S>(
        config: &Config,
        secrets: Option<&Secrets>,
        store: Arc<S>,
        store_description: String,
        neo4j: Option<Neo4jStore>,
    ) -> Result<Self, StartupError>
    where
        S: AgentStore + SessionStore + Outbox + FeedbackStore + 'static,
    {
        let sessions: Arc<dyn SessionStore> = store.clone();
        let outbox: Arc<dyn Outbox> = store.clone();
        let feedback_store: Arc<dyn FeedbackStore> = store.clone();
        let store: Arc<dyn AgentStore> = store;
        let clock = Arc::new(SystemClock);
        let signal = NotifySignal::default();
        let agents = AgentService::new(store.clone(), clock.clone(), config.openai.model.clone())
            .with_signal(Arc::new(signal.clone()));
        let feedback = FeedbackService::new(
            store.clone(),
            sessions.clone(),
            feedback_store.clone(),
            clock.clone(),
        )
        .with_signal(Arc::new(signal.clone()));
        let metrics = Arc::new(Metrics::new());
        let conversations = ConversationService::new(
            store.clone(),
            sessions,
            chat_model(config, secrets)?,
            clock,
            config.openai.prices.clone(),
            config.agents.limits,
            metrics.clone(),
        )
        .with_signal(Arc::new(signal.clone()));
        Ok(Self {
            agents,
            conversations,
            feedback,
            processor: EventProcessor::new(feedback_store),
            outbox,
            outbox_signal: signal,
            store,
            metrics,
            store_description,
            neo4j,
            topics: topics(config),
        })
    }

    /// Makes sure the store can serve this build: on Neo4j, applies pending migrations when
    /// `AOP_MIGRATE_ON_START` is set, else refuses a graph whose schema is not this build's. A
    /// server that cannot be reached is not fatal here: requests report it, and `/health` too.
    ///
    /// # Errors
    /// `Store` when the schema is wrong or a migration fails.
    pub async fn prepare_store(&self, config: &Config) -> Result<(), StartupError> {
        let (Some(store), Some(settings)) = (&self.neo4j, &config.database.neo4j) else {
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
            Err(e @ aop_core::StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "Neo4j is not reachable yet; requests will fail until it is");
                Ok(())
            }
            Err(source) => Err(StartupError::Store {
                dir: store.target().to_owned(),
                source,
            }),
        }
    }

    /// The Neo4j store, when the platform runs on one.
    pub fn neo4j(&self) -> Option<&Neo4jStore> {
        self.neo4j.as_ref()
    }

    pub fn store_description(&self) -> &str {
        &self.store_description
    }

    /// The relay that feeds this process's event processor from the outbox (no broker).
    pub fn in_process_relay(&self) -> OutboxRelay {
        OutboxRelay::new(
            self.outbox.clone(),
            Arc::new(InProcessSink::new(self.processor.clone())),
            self.outbox_signal.0.clone(),
        )
        .with_observer(self.relay_metrics())
    }

    /// Counts what the relay publishes, by topic, and the outbox backlog.
    fn relay_metrics(&self) -> Arc<dyn crate::relay::RelayObserver> {
        Arc::new(RelayMetrics {
            metrics: self.metrics.clone(),
            topics: self.topics.clone(),
        })
    }

    /// Counts one batch of the event processor, by topic.
    pub fn observe_batch(&self, stats: &aop_events::msk::BatchStats) {
        use aop_mcp::metrics::EventOutcome;
        for (topic, (consumed, failed, dead)) in &stats.by_topic {
            for (outcome, n) in [
                (EventOutcome::Consumed, consumed),
                (EventOutcome::Failed, failed),
                (EventOutcome::DeadLettered, dead),
            ] {
                if *n > 0 {
                    self.metrics.observe_events(topic, outcome, *n);
                }
            }
        }
    }

    /// The relay that publishes the outbox to Kafka.
    ///
    /// # Errors
    /// `Unsupported` naming `KAFKA_BOOTSTRAP_SERVERS` when no broker is configured; `Kafka` when
    /// the producer cannot be created.
    pub fn kafka_relay(&self, config: &Config) -> Result<OutboxRelay, StartupError> {
        let sink = aop_events::kafka::KafkaSink::new(kafka_settings(config)?, topics(config))?;
        Ok(OutboxRelay::new(
            self.outbox.clone(),
            Arc::new(sink),
            self.outbox_signal.0.clone(),
        )
        .with_observer(self.relay_metrics()))
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
        AgentServer::new(
            self.agents.clone(),
            self.conversations.clone(),
            self.feedback.clone(),
            self.metrics.clone(),
        )
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

/// The model endpoint from configuration: OpenAI when only a key is given, the configured base
/// URL otherwise (a local server may need no key), and none at all when neither is set.
fn chat_model(
    config: &Config,
    secrets: Option<&Secrets>,
) -> Result<Arc<dyn ChatModel>, StartupError> {
    if let (Some(secrets), Some(arn)) = (secrets, &config.secrets.openai_arn) {
        return Ok(Arc::new(crate::secrets::RotatingModel::new(
            config, secrets, arn,
        )?));
    }
    match openai_model(config)? {
        Some(model) => Ok(Arc::new(model)),
        None => {
            tracing::info!(
                "no LLM configured (OPENAI_API_KEY / OPENAI_BASE_URL): agent turns will fail until one is"
            );
            Ok(Arc::new(UnconfiguredModel))
        }
    }
}

/// The OpenAI-compatible client from configuration, or none when neither a key nor a base URL
/// is set.
///
/// # Errors
/// `Llm` when the HTTP client cannot be built.
pub fn openai_model(config: &Config) -> Result<Option<OpenAiChatModel>, StartupError> {
    let openai = &config.openai;
    if openai.api_key.is_none() && openai.base_url.is_none() {
        return Ok(None);
    }
    let base_url = openai
        .base_url
        .clone()
        .unwrap_or_else(|| OpenAiSettings::OPENAI_BASE_URL.to_owned());
    let mut settings = OpenAiSettings::new(base_url, openai.api_key.clone());
    settings.organization.clone_from(&openai.organization);
    settings.attempt_timeout = std::time::Duration::from_secs(openai.timeout_seconds);
    settings.max_attempts = openai.max_retries + 1;
    tracing::info!(base_url = %settings.base_url, model = %openai.model, "LLM endpoint configured");
    Ok(Some(OpenAiChatModel::new(settings)?))
}

/// Kafka client settings from configuration.
///
/// # Errors
/// `Unsupported` naming `KAFKA_BOOTSTRAP_SERVERS` when it is not set.
pub fn kafka_settings(config: &Config) -> Result<aop_events::kafka::KafkaSettings, StartupError> {
    let servers = config
        .kafka
        .bootstrap_servers
        .clone()
        .ok_or(StartupError::Unsupported {
            setting: "kafka.bootstrap_servers (KAFKA_BOOTSTRAP_SERVERS)",
            reason: "must be set to publish events to Kafka".into(),
        })?;
    let mut settings = aop_events::kafka::KafkaSettings::new(servers);
    settings.delivery_timeout = std::time::Duration::from_millis(config.kafka.delivery_timeout_ms);
    settings.security = match &config.kafka.security {
        crate::config::KafkaSecurityConfig::Plaintext => {
            aop_events::kafka::KafkaSecurity::Plaintext
        }
        crate::config::KafkaSecurityConfig::Tls { ca_location } => {
            aop_events::kafka::KafkaSecurity::Tls {
                ca_location: ca_location.clone(),
            }
        }
        crate::config::KafkaSecurityConfig::SaslScram {
            mechanism,
            username,
            password,
            ca_location,
        } => aop_events::kafka::KafkaSecurity::SaslScram {
            mechanism: mechanism.clone(),
            username: username.clone(),
            password: password.clone(),
            ca_location: ca_location.clone(),
        },
    };
    Ok(settings)
}

/// Every event topic and its dead-letter topic, as configured (partitions, replication,
/// retention): what `aop topics apply` creates.
pub fn topic_specs(config: &Config) -> Vec<aop_events::kafka::TopicSpec> {
    let kafka = &config.kafka;
    topics(config)
        .all()
        .into_iter()
        .map(|name| aop_events::kafka::TopicSpec {
            name,
            partitions: kafka.partitions,
            replication: kafka.replication_factor,
            retention_ms: kafka.retention_hours * 3_600_000,
        })
        .collect()
}

/// Topic names from configuration.
pub fn topics(config: &Config) -> aop_events::Topics {
    aop_events::Topics {
        agent_events: config.kafka.agent_events_topic.clone(),
        feedback_events: config.kafka.feedback_events_topic.clone(),
        evolution_events: config.kafka.evolution_events_topic.clone(),
    }
}

/// Everything a process does before serving: settle the configuration (secrets, brokers), build
/// the platform on it and make sure the store can serve this build. Every binary starts here.
///
/// # Errors
/// As [`Platform::build`] and [`Platform::prepare_store`].
pub async fn start(config: Config) -> Result<(Config, Platform), StartupError> {
    let (config, secrets) = settle(config).await?;
    let platform = Platform::build_with(&config, secrets.as_ref())?;
    platform.prepare_store(&config).await?;
    Ok((config, platform))
}

/// Completes the configuration from AWS: secret values by ARN, then the MSK brokers by cluster
/// ARN. Operator commands (`aop migrate`, `aop topics apply`, `aop doctor`) start here too.
///
/// # Errors
/// As [`crate::secrets::resolve`] and [`discover_brokers`].
pub async fn settle(mut config: Config) -> Result<(Config, Option<Secrets>), StartupError> {
    let secrets = crate::secrets::resolve(&mut config).await?;
    discover_brokers(&mut config).await?;
    Ok((config, secrets))
}

/// Looks the MSK brokers up from the cluster ARN when no bootstrap servers are configured, once
/// per process, choosing the listener that matches the configured security protocol.
///
/// # Errors
/// `Aws` when the SDK cannot be configured; `Msk` naming the cluster when the lookup fails.
#[cfg(feature = "msk")]
pub async fn discover_brokers(config: &mut Config) -> Result<(), StartupError> {
    let (None, Some(arn)) = (&config.kafka.bootstrap_servers, &config.kafka.cluster_arn) else {
        return Ok(());
    };
    let auth = match config.kafka.security {
        crate::config::KafkaSecurityConfig::Plaintext => aop_aws::MskAuth::Plaintext,
        crate::config::KafkaSecurityConfig::Tls { .. } => aop_aws::MskAuth::Tls,
        crate::config::KafkaSecurityConfig::SaslScram { .. } => aop_aws::MskAuth::SaslScram,
    };
    let client = aop_aws::MskClient::from_env()
        .await
        .map_err(|e| StartupError::Aws(e.to_string()))?;
    let brokers = aop_aws::bootstrap_brokers(&client, arn, auth)
        .await
        .map_err(|e| StartupError::Msk(e.to_string()))?;
    tracing::info!(cluster = %arn, brokers = %brokers, "MSK brokers discovered");
    config.kafka.bootstrap_servers = Some(brokers);
    Ok(())
}

/// Without the `msk` feature there is no lookup: this build does not use Kafka on its own.
#[cfg(not(feature = "msk"))]
pub async fn discover_brokers(config: &mut Config) -> Result<(), StartupError> {
    if config.kafka.bootstrap_servers.is_none() && config.kafka.cluster_arn.is_some() {
        tracing::debug!("MSK_CLUSTER_ARN is set; this function does not use Kafka");
    }
    Ok(())
}

/// The Neo4j store adapter from the `database` settings.
///
/// # Errors
/// `Unsupported` naming `NEO4J_URI` when no URI is known; `Store` when the URI cannot be used.
pub fn neo4j_store(
    settings: &crate::config::Neo4jConfig,
    credentials: Option<Arc<dyn aop_store_neo4j::CredentialSource>>,
) -> Result<Neo4jStore, StartupError> {
    if settings.uri.is_empty() {
        return Err(StartupError::Unsupported {
            setting: "database.uri (NEO4J_URI)",
            reason:
                "no Neo4j URI: set NEO4J_URI, or put \"uri\" in the secret NEO4J_SECRET_ARN names"
                    .into(),
        });
    }
    let mut config = aop_store_neo4j::Neo4jConfig::new(
        settings.uri.clone(),
        settings.username.clone(),
        settings.password.clone(),
    );
    config.database = settings.database.clone();
    config.max_connections = settings.max_connections;
    config.connection_timeout = settings.connection_timeout;
    config.fetch_size = settings.fetch_size;
    config.max_connection_lifetime = settings.max_connection_lifetime;
    config.operation_timeout = settings.operation_timeout;
    Neo4jStore::with_credentials(config, credentials).map_err(|source| StartupError::Store {
        dir: aop_store_neo4j::redact_uri(&settings.uri),
        source,
    })
}
