//! `aop doctor`: checks every configured dependency and says, for each one that fails, what to
//! do about it. The troubleshooting guide, as a command.

use std::time::Duration;

use aop_aws::SecretsClient;
use aop_aws::SecretsError;
use aop_aws::secrets::keys;

use crate::config::Config;

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Not configured; nothing to check.
    Skipped,
    Failed,
}

/// One dependency's state: a line for an operator, and the fix when it failed.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn skipped(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Skipped,
            detail: detail.into(),
            fix: None,
        }
    }

    fn failed(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            status: Status::Failed,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// `ok     store   sqlite at ./.aop/aop.sqlite3 (schema version 6)`, and for a failure a
    /// second line with the fix.
    pub fn render(&self) -> String {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Skipped => "skip",
            Status::Failed => "FAIL",
        };
        let mut line = format!("{status:<6} {:<8} {}", self.name, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(&format!("\n{:<15} fix: {fix}", ""));
        }
        line
    }
}

/// Runs every check, in the order a start-up needs them.
pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = secrets(config).await;
    checks.push(store(config).await);
    checks.push(kafka(config).await);
    checks.push(llm(config).await);
    checks.push(spend(config));
    checks
}

/// The daily spend caps, and whether the default model's turns count against them (a model
/// without a price costs nothing there).
fn spend(config: &Config) -> Check {
    let caps = config.agents.spend_caps();
    if caps.per_agent_usd.is_none() && caps.per_caller_usd.is_none() {
        if caps.agents.is_empty() {
            return Check::skipped(
                "spend",
                "no daily spend caps (set AOP_DAILY_COST_CAP_USD to cap each agent and caller)",
            );
        }
        return Check::ok(
            "spend",
            format!("{} agents with a daily cap of their own", caps.agents.len()),
        );
    }
    let usd = |cap: Option<f64>| cap.map_or("none".to_owned(), |c| format!("USD {c:.2}/day"));
    let mut detail = format!(
        "each agent {}, each caller {}",
        usd(caps.per_agent_usd),
        usd(caps.per_caller_usd)
    );
    if !caps.agents.is_empty() {
        detail.push_str(&format!(", {} agents with their own", caps.agents.len()));
    }
    let model = &config.openai.model;
    match crate::roles::prices(config) {
        Ok(prices) if prices.cost(model, 1_000_000, 0).is_some() => {
            Check::ok("spend", format!("{detail}; model {model} is priced"))
        }
        Ok(_) => Check::failed(
            "spend",
            format!(
                "{detail}, but the default model {model} has no price: its turns cost nothing \
                 against the caps"
            ),
            format!(
                "give it a price: AOP_MODEL_PRICES={model}=INPUT/OUTPUT (USD per million tokens)"
            ),
        ),
        Err(e) => Check::failed("spend", e.to_string(), "fix AOP_MODEL_PRICES"),
    }
}

/// One doctor line per configured secret: readable, and holding the keys it must hold.
async fn secrets(config: &Config) -> Vec<Check> {
    let wanted: Vec<(&str, &str, &[&str])> = [
        (
            config.secrets.openai_arn.as_deref(),
            "OPENAI_SECRET_ARN",
            &[keys::API_KEY][..],
        ),
        (
            config.secrets.neo4j_arn.as_deref(),
            "NEO4J_SECRET_ARN",
            &[keys::USERNAME, keys::PASSWORD][..],
        ),
        (
            config.secrets.kafka_arn.as_deref(),
            "KAFKA_SECRET_ARN",
            &[keys::USERNAME, keys::PASSWORD][..],
        ),
    ]
    .into_iter()
    .filter_map(|(arn, var, keys)| arn.map(|a| (a, var, keys)))
    .collect();
    if wanted.is_empty() {
        return vec![Check::skipped("secrets", "no secret ARNs configured")];
    }
    let client = match SecretsClient::from_env().await {
        Ok(client) => client,
        Err(e) => {
            return vec![Check::failed(
                "secrets",
                e.to_string(),
                "set AWS_REGION (and credentials) for Secrets Manager",
            )];
        }
    };
    let mut checks = Vec::new();
    for (arn, var, required) in wanted {
        let outcome = match client.fetch(arn).await {
            Ok(secret) => required
                .iter()
                .try_for_each(|k| secret.field(k).map(drop))
                .map(|()| format!("{var}: {arn} holds {}", required.join(", "))),
            Err(e) => Err(e),
        };
        checks.push(match outcome {
            Ok(detail) => Check::ok("secrets", detail),
            Err(e @ SecretsError::MissingKey { .. }) | Err(e @ SecretsError::Malformed { .. }) => {
                Check::failed(
                    "secrets",
                    format!("{var}: {e}"),
                    format!("store a JSON object with the keys {} in it", required.join(", ")),
                )
            }
            Err(e @ SecretsError::AccessDenied { .. }) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                "allow secretsmanager:GetSecretValue on it for this role (and kms:Decrypt on its key)",
            ),
            Err(e @ SecretsError::NotFound { .. }) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                format!("create the secret, or fix {var} (region and account are part of the ARN)"),
            ),
            Err(e) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                "check AWS_REGION, the credentials and that this host reaches Secrets Manager (a VPC endpoint, say)",
            ),
        });
    }
    checks
}

async fn store(config: &Config) -> Check {
    let Some(settings) = &config.neo4j else {
        let dir = &config.sqlite.data_dir;
        return match aop_store_sqlite::SqliteStore::open_dir(dir) {
            Ok(store) => Check::ok(
                "store",
                format!(
                    "sqlite at {} (schema version {})",
                    store.path().display(),
                    aop_store_sqlite::SCHEMA_VERSION
                ),
            ),
            Err(e) => Check::failed(
                "store",
                format!("sqlite in {}: {e}", dir.display()),
                "make AOP_DATA_DIR a writable directory that holds only aop's data",
            ),
        };
    };
    let mut settings = settings.clone();
    settings.operation_timeout = settings.operation_timeout.min(CHECK_TIMEOUT);
    let store = match crate::adapters::neo4j_store(&settings, None) {
        Ok(store) => store,
        Err(e) => {
            return Check::failed(
                "store",
                e.to_string(),
                "set NEO4J_URI to bolt://, bolt+s://, neo4j:// or neo4j+s://host:port",
            );
        }
    };
    let target = store.target().to_owned();
    match aop_store_neo4j::migrations::applied_version(&store).await {
        Ok(version) if version == aop_store_neo4j::SCHEMA_VERSION => Check::ok(
            "store",
            format!(
                "neo4j at {target}, database {} (schema version {version})",
                settings.database
            ),
        ),
        Ok(version) if version < aop_store_neo4j::SCHEMA_VERSION => Check::failed(
            "store",
            format!(
                "neo4j at {target} is at schema version {version}, this build needs {}",
                aop_store_neo4j::SCHEMA_VERSION
            ),
            "run `aop migrate` (or start with AOP_MIGRATE_ON_START=true)",
        ),
        Ok(version) => Check::failed(
            "store",
            format!(
                "neo4j at {target} is at schema version {version}, newer than this build ({})",
                aop_store_neo4j::SCHEMA_VERSION
            ),
            "upgrade aop to the version that migrated the graph",
        ),
        Err(e) if e.to_string().contains("credentials") => Check::failed(
            "store",
            e.to_string(),
            "check NEO4J_USERNAME and NEO4J_PASSWORD (or the secret NEO4J_SECRET_ARN names)",
        ),
        Err(e) => Check::failed(
            "store",
            e.to_string(),
            "check that Neo4j runs and accepts Bolt at NEO4J_URI (port 7687 by default), that \
             NEO4J_DATABASE exists, and that the network (VPC, security group) lets this host in",
        ),
    }
}

async fn kafka(config: &Config) -> Check {
    if config.kafka.bootstrap_servers.is_none() {
        return Check::skipped(
            "kafka",
            "not configured: events are processed in this process (set KAFKA_BOOTSTRAP_SERVERS or MSK_CLUSTER_ARN to use Kafka)",
        );
    }
    let settings = match crate::adapters::kafka_client(config) {
        Ok(settings) => settings,
        Err(e) => {
            return Check::failed("kafka", e.to_string(), "fix the kafka settings named above");
        }
    };
    let auth = match &settings.security {
        aop_events::KafkaSecurity::Plaintext => "plaintext".to_owned(),
        aop_events::KafkaSecurity::Tls { .. } => "TLS".to_owned(),
        aop_events::KafkaSecurity::SaslScram { mechanism, .. } => format!("SASL/SCRAM {mechanism}"),
        aop_events::KafkaSecurity::Iam { tokens: None, .. } => {
            return Check::failed(
                "kafka",
                "MSK IAM authentication is configured, but no AWS credentials could be read",
                "set AWS_REGION and credentials the way the AWS CLI reads them (environment, \
                 profile, or the instance or task role)",
            );
        }
        aop_events::KafkaSecurity::Iam {
            tokens: Some(tokens),
            ..
        } => match tokens.token() {
            Ok(_) => "MSK IAM, token signed".to_owned(),
            Err(e) => {
                return Check::failed(
                    "kafka",
                    format!("MSK IAM authentication: {e}"),
                    "check AWS_REGION and the AWS credentials",
                );
            }
        },
    };
    let names = config.kafka.topics.all();
    let count = names.len();
    let servers = format!("{} ({auth})", settings.bootstrap_servers);
    let probe = tokio::task::spawn_blocking(move || {
        aop_events::kafka::missing_topics(&settings, &names, CHECK_TIMEOUT)
    })
    .await;
    match probe {
        Ok(Ok(missing)) if missing.is_empty() => Check::ok(
            "kafka",
            format!("brokers at {servers} answer; all {count} topics exist"),
        ),
        Ok(Ok(missing)) => Check::failed(
            "kafka",
            format!(
                "brokers at {servers} answer; missing topics: {}",
                missing.join(", ")
            ),
            "run `aop topics apply`",
        ),
        Ok(Err(e)) => Check::failed(
            "kafka",
            format!("{e} ({auth})"),
            "check KAFKA_BOOTSTRAP_SERVERS (host:port, comma-separated), KAFKA_SECURITY_PROTOCOL \
             and its credentials, and that the network lets this host reach the brokers",
        ),
        Err(e) => Check::failed(
            "kafka",
            format!("the check itself failed: {e}"),
            "report a bug",
        ),
    }
}

async fn llm(config: &Config) -> Check {
    let Some(model) = crate::adapters::openai_model(config).transpose() else {
        return Check::skipped(
            "llm",
            "not configured: agent turns fail until OPENAI_API_KEY or OPENAI_BASE_URL is set",
        );
    };
    let model = match model {
        Ok(model) => model,
        Err(e) => return Check::failed("llm", e.to_string(), "check OPENAI_BASE_URL"),
    };
    match model.check_model(&config.openai.model, CHECK_TIMEOUT).await {
        Ok(detail) => Check::ok("llm", detail),
        Err(detail) if detail.contains("API key") => Check::failed(
            "llm",
            detail,
            "check OPENAI_API_KEY (or the secret OPENAI_SECRET_ARN names)",
        ),
        Err(detail) if detail.contains("does not offer") => Check::failed(
            "llm",
            detail,
            "set OPENAI_MODEL to a model the endpoint lists at /models",
        ),
        Err(detail) => Check::failed(
            "llm",
            detail,
            "check OPENAI_BASE_URL and that the network lets this host reach it",
        ),
    }
}
