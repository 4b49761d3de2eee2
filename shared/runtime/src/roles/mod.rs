//! One composition root per role. A role builds, links (through cargo features), reads and is
//! granted only what it uses:
//!
//! | role | feature | store | model | Kafka |
//! |---|---|---|---|---|
//! | MCP server (Lambda behind API Gateway) | `mcp` | yes | yes | no |
//! | event processor (Lambda on MSK) | `processor` | yes | no | dead letters |
//! | outbox relay (Lambda on a schedule) | `relay` | yes | no | producer |
//! | evolution worker (Lambda on MSK) | `evolution` | yes | yes | dead letters |
//! | `aop` (everything in one process) | `local` | yes | yes | when configured |
//!
//! The event handlers and the topics and consumer group each reads are decided here too, once,
//! for Lambda and `aop serve` alike.

#[cfg(feature = "evolution")]
pub mod evolution;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(feature = "processor")]
pub mod processor;
#[cfg(feature = "relay")]
pub mod relay;

use std::sync::Arc;

use aop_core::llm::{ChatModel, UnconfiguredModel};
use aop_core::pricing::PriceTable;
use aop_core::{
    AgentService, DeploymentController, DeploymentService, EventHandler, EventType,
    EvolutionService, FitnessHandler, ProposalService,
};
use aop_events::Topics;

use crate::adapters::Stores;
use crate::config::Config;
use crate::error::StartupError;
pub use crate::role::Role;
use crate::secrets::{Neo4jSecret, Secrets};

/// Completes the configuration for `role` from AWS: the secrets it uses, by ARN, then the MSK
/// brokers by cluster ARN when it talks to Kafka. Operator commands start here too.
///
/// # Errors
/// As [`crate::secrets::resolve`] and [`discover_brokers`].
pub async fn settle(
    mut config: Config,
    role: Role,
) -> Result<(Config, Option<Secrets>), StartupError> {
    let secrets = crate::secrets::resolve(&mut config, role).await?;
    if role.uses_kafka() {
        discover_brokers(&mut config).await?;
        msk_iam_tokens(&mut config).await?;
    }
    Ok((config, secrets))
}

/// With MSK IAM authentication, reads the AWS credentials the Kafka clients sign their tokens
/// with (renewed in the background while the process runs).
///
/// # Errors
/// `Aws` naming what is missing: the region or any credentials.
#[cfg(feature = "msk")]
pub async fn msk_iam_tokens(config: &mut Config) -> Result<(), StartupError> {
    if !config.kafka.uses_iam() || config.kafka.iam_tokens.is_some() {
        return Ok(());
    }
    let tokens = aop_aws::MskIamTokens::from_env()
        .await
        .map_err(|e| StartupError::Aws(format!("MSK IAM authentication: {e}")))?;
    tracing::info!(
        region = tokens.region(),
        "MSK IAM authentication: AWS credentials read"
    );
    config.kafka.iam_tokens = Some(Arc::new(crate::adapters::MskIam(tokens)));
    Ok(())
}

/// Without the `msk` feature there are no tokens: this build does not use Kafka on its own.
#[cfg(not(feature = "msk"))]
pub async fn msk_iam_tokens(config: &mut Config) -> Result<(), StartupError> {
    if config.kafka.uses_iam() {
        return Err(StartupError::Unsupported {
            setting: "kafka.sasl_mechanism (KAFKA_SASL_MECHANISM)",
            reason: "AWS_MSK_IAM needs a build with the msk feature".into(),
        });
    }
    Ok(())
}

/// Opens the configured store; a refused Neo4j login re-reads the Neo4j secret.
///
/// # Errors
/// As [`Stores::open`].
pub fn open_stores(config: &Config, secrets: Option<&Secrets>) -> Result<Stores, StartupError> {
    let credentials = match (secrets, &config.secrets.neo4j_arn) {
        (Some(secrets), Some(arn)) => Some(Arc::new(Neo4jSecret {
            cache: secrets.cache.clone(),
            arn: arn.clone(),
        })
            as Arc<dyn aop_store_neo4j::CredentialSource>),
        _ => None,
    };
    Stores::open(config, credentials)
}

/// Every event handler of the platform: fitness statistics, and the deployment controller.
pub fn handlers(config: &Config, stores: &Stores) -> Vec<Arc<dyn EventHandler>> {
    vec![
        Arc::new(
            FitnessHandler::new(stores.feedback.clone())
                .with_sessions(stores.sessions.clone())
                .with_ledger_retention(
                    std::time::Duration::from_secs(
                        u64::try_from(config.kafka.ledger_retention_days).unwrap_or(30) * 86_400,
                    ),
                    stores.clock.clone(),
                ),
        ),
        Arc::new(DeploymentController::new(
            deployment_service(config, stores),
            stores.clock.clone(),
            config.deployments.check_interval_ms(),
        )),
    ]
}

/// Deployments on the store, with the configured canary policy.
pub fn deployment_service(config: &Config, stores: &Stores) -> DeploymentService {
    DeploymentService::new(
        stores.agents.clone(),
        stores.deployments.clone(),
        stores.clock.clone(),
        config.deployments.canary.clone(),
    )
    .with_observer(stores.progress.clone())
}

/// The configured model prices.
///
/// # Errors
/// `Unsupported` naming `openai.prices` when they do not parse.
pub fn prices(config: &Config) -> Result<PriceTable, StartupError> {
    config
        .openai
        .price_table()
        .map_err(|reason| StartupError::Unsupported {
            setting: "openai.prices (AOP_MODEL_PRICES)",
            reason,
        })
}

/// Evolution runs on the store, stepping with `model`.
///
/// # Errors
/// As [`prices`].
pub fn evolution_service(
    config: &Config,
    stores: &Stores,
    model: Arc<dyn ChatModel>,
) -> Result<EvolutionService, StartupError> {
    let agents = AgentService::new(
        stores.agents.clone(),
        stores.clock.clone(),
        config.openai.model.clone(),
    );
    let deployments = deployment_service(config, stores);
    let proposals = ProposalService::new(
        agents.clone(),
        deployments.clone(),
        stores.proposals.clone(),
        stores.clock.clone(),
        config.deployments.review_rules(),
    );
    Ok(EvolutionService::new(
        agents,
        deployments,
        proposals,
        stores.evolutions.clone(),
        model,
        prices(config)?,
        stores.clock.clone(),
        config.evolution.rules(),
    )
    .with_observer(stores.progress.clone()))
}

/// The model endpoint from configuration: OpenAI when only a key is given, the configured base
/// URL otherwise (a local server may need no key), and none at all when neither is set. A key
/// from a secret is re-read when the endpoint refuses it.
///
/// # Errors
/// `StartupError` naming the OpenAI setting that is wrong.
#[cfg(feature = "llm")]
pub fn chat_model(
    config: &Config,
    secrets: Option<&crate::secrets::Secrets>,
) -> Result<Arc<dyn ChatModel>, StartupError> {
    if let (Some(secrets), Some(arn)) = (secrets, &config.secrets.openai_arn) {
        return Ok(Arc::new(crate::secrets::RotatingModel::new(
            config, secrets, arn,
        )?));
    }
    match crate::adapters::openai_model(config)? {
        Some(model) => Ok(Arc::new(model)),
        None => {
            tracing::info!(
                "no LLM configured (OPENAI_API_KEY / OPENAI_BASE_URL): agent turns will fail until one is"
            );
            Ok(Arc::new(UnconfiguredModel))
        }
    }
}

/// What runs on a schedule: checks of canaries no traffic reached, expiry of proposals, and a
/// new request for evolution runs nothing moved for a while.
#[derive(Clone)]
pub struct Schedule {
    deployments: DeploymentService,
    proposals: ProposalService,
    evolutions: EvolutionService,
    interval_ms: i64,
    stall_ms: i64,
    auto_trigger: usize,
}

/// What one scheduled pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub canaries_decided: usize,
    pub proposals_expired: usize,
    pub evolutions_resumed: usize,
    pub evolutions_started: usize,
}

impl Schedule {
    /// # Errors
    /// As [`prices`].
    pub fn new(config: &Config, stores: &Stores) -> Result<Self, StartupError> {
        let deployments = deployment_service(config, stores);
        let agents = AgentService::new(
            stores.agents.clone(),
            stores.clock.clone(),
            config.openai.model.clone(),
        );
        let proposals = ProposalService::new(
            agents,
            deployments.clone(),
            stores.proposals.clone(),
            stores.clock.clone(),
            config.deployments.review_rules(),
        );
        // The schedule only asks for iterations again; the worker calls the model.
        let evolutions = evolution_service(config, stores, Arc::new(UnconfiguredModel))?;
        Ok(Self {
            deployments,
            proposals,
            evolutions,
            interval_ms: config.deployments.check_interval_ms(),
            stall_ms: config.evolution.stall_ms(),
            auto_trigger: config.evolution.auto_trigger_low_rated,
        })
    }

    /// One pass.
    ///
    /// # Errors
    /// When the store cannot list what is due.
    pub async fn run_once(&self) -> Result<Pass, aop_core::ServiceError> {
        let pass = Pass {
            canaries_decided: self.deployments.tick(self.interval_ms).await?,
            proposals_expired: self.proposals.expire().await?,
            evolutions_resumed: self.evolutions.resume_stalled(self.stall_ms).await?,
            evolutions_started: self.evolutions.auto_trigger(self.auto_trigger).await?.len(),
        };
        if pass != Pass::default() {
            tracing::info!(?pass, "scheduled pass");
        }
        Ok(pass)
    }

    /// Runs a pass every check interval until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let period =
            std::time::Duration::from_millis(u64::try_from(self.interval_ms).unwrap_or(60_000));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.run_once().await {
                tracing::warn!(error = %e, "scheduled pass failed");
            }
        }
    }
}

/// A handler, the topics it reads (those of the event types it wants) and its consumer group.
pub struct Subscription {
    pub handler: Arc<dyn EventHandler>,
    pub group: String,
    pub topics: Vec<String>,
}

/// Which handler reads which topics in which consumer group (`aop-<handler>`).
pub fn subscriptions(handlers: &[Arc<dyn EventHandler>], topics: &Topics) -> Vec<Subscription> {
    handlers
        .iter()
        .map(|handler| {
            let mut names: Vec<String> = EventType::ALL
                .iter()
                .filter(|t| handler.wants(**t))
                .map(|t| topics.topic(t.stream()).to_owned())
                .collect();
            names.sort();
            names.dedup();
            Subscription {
                handler: handler.clone(),
                group: format!("aop-{}", handler.name()),
                topics: names,
            }
        })
        .collect()
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
    let auth = match config.kafka.security() {
        aop_events::KafkaSecurity::Plaintext => aop_aws::MskAuth::Plaintext,
        aop_events::KafkaSecurity::Tls { .. } => aop_aws::MskAuth::Tls,
        aop_events::KafkaSecurity::SaslScram { .. } => aop_aws::MskAuth::SaslScram,
        aop_events::KafkaSecurity::Iam { .. } => aop_aws::MskAuth::Iam,
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
        tracing::debug!("MSK_CLUSTER_ARN is set; this build does not look brokers up");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_handler_reads_agent_and_feedback_events_in_its_own_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config::from_sources(None, &Default::default(), &Default::default()).unwrap();
        config.sqlite.data_dir = dir.path().to_owned();
        let stores = Stores::open(&config, None).unwrap();
        let subs = subscriptions(&handlers(&config, &stores), &Topics::default());
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].group, "aop-fitness");
        assert_eq!(subs[0].topics, ["agent_events", "feedback_events"]);
        assert_eq!(subs[1].group, "aop-deployments");
        assert_eq!(subs[1].topics, ["agent_events", "feedback_events"]);
    }
}
