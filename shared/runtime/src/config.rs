//! One typed configuration, loaded once: defaults < `config.yaml` < environment < command line.
//! Every problem is reported at once, each naming the setting (and where its value came from).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Every setting: its key in `config.yaml`, its environment variable and its default.
const SETTINGS: &[(&str, &str, &str)] = &[
    ("environment", "ENVIRONMENT", "development"),
    ("logging.level", "LOG_LEVEL", "info"),
    ("server.host", "MCP_SERVER_HOST", "127.0.0.1"),
    ("server.port", "MCP_SERVER_PORT", "8000"),
    ("server.api_keys", "AOP_API_KEYS", ""),
    (
        "server.allowed_hosts",
        "AOP_ALLOWED_HOSTS",
        "localhost,127.0.0.1,::1",
    ),
    (
        "server.allowed_origins",
        "AOP_ALLOWED_ORIGINS",
        "http://localhost:*,http://127.0.0.1:*",
    ),
    ("server.stateless", "AOP_STATELESS", "false"),
    ("server.json_response", "AOP_JSON_RESPONSE", "false"),
    ("database.data_dir", "AOP_DATA_DIR", "./.aop"),
    ("database.uri", "NEO4J_URI", ""),
    ("database.username", "NEO4J_USERNAME", "neo4j"),
    ("database.password", "NEO4J_PASSWORD", ""),
    ("database.name", "NEO4J_DATABASE", "neo4j"),
    ("database.max_connections", "NEO4J_MAX_CONNECTIONS", "10"),
    (
        "database.connection_timeout_ms",
        "NEO4J_CONNECTION_TIMEOUT_MS",
        "5000",
    ),
    ("database.fetch_size", "NEO4J_FETCH_SIZE", "500"),
    (
        "database.max_connection_lifetime_seconds",
        "NEO4J_MAX_CONNECTION_LIFETIME_SECONDS",
        "600",
    ),
    (
        "database.operation_timeout_ms",
        "NEO4J_OPERATION_TIMEOUT_MS",
        "10000",
    ),
    ("database.migrate_on_start", "AOP_MIGRATE_ON_START", "false"),
    ("secrets.openai_arn", "OPENAI_SECRET_ARN", ""),
    ("secrets.neo4j_arn", "NEO4J_SECRET_ARN", ""),
    ("secrets.kafka_arn", "KAFKA_SECRET_ARN", ""),
    ("secrets.ttl_seconds", "AOP_SECRETS_TTL_SECONDS", "300"),
    ("kafka.cluster_arn", "MSK_CLUSTER_ARN", ""),
    ("kafka.bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", ""),
    (
        "kafka.topics.agent_events",
        "KAFKA_TOPIC_AGENT_EVENTS",
        "agent_events",
    ),
    (
        "kafka.topics.feedback_events",
        "KAFKA_TOPIC_FEEDBACK_EVENTS",
        "feedback_events",
    ),
    (
        "kafka.topics.evolution_events",
        "KAFKA_TOPIC_EVOLUTION_EVENTS",
        "evolution_events",
    ),
    ("kafka.partitions", "KAFKA_TOPIC_PARTITIONS", "4"),
    ("kafka.replication_factor", "KAFKA_REPLICATION_FACTOR", "1"),
    ("kafka.retention_hours", "KAFKA_RETENTION_HOURS", "168"),
    (
        "kafka.delivery_timeout_ms",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "30000",
    ),
    (
        "kafka.security_protocol",
        "KAFKA_SECURITY_PROTOCOL",
        "plaintext",
    ),
    (
        "kafka.sasl_mechanism",
        "KAFKA_SASL_MECHANISM",
        "SCRAM-SHA-512",
    ),
    ("kafka.sasl_username", "KAFKA_SASL_USERNAME", ""),
    ("kafka.sasl_password", "KAFKA_SASL_PASSWORD", ""),
    ("kafka.ssl_ca_location", "KAFKA_SSL_CA_LOCATION", ""),
    ("openai.api_key", "OPENAI_API_KEY", ""),
    ("openai.base_url", "OPENAI_BASE_URL", ""),
    ("openai.model", "OPENAI_MODEL", "gpt-4o-mini"),
    ("openai.timeout_seconds", "OPENAI_TIMEOUT_SECONDS", "30"),
    ("openai.organization", "OPENAI_ORG_ID", ""),
    ("openai.max_retries", "OPENAI_MAX_RETRIES", "3"),
    ("openai.prices", "AOP_MODEL_PRICES", ""),
    (
        "agents.turn_timeout_seconds",
        "AOP_TURN_TIMEOUT_SECONDS",
        "60",
    ),
    (
        "agents.max_delegation_depth",
        "AOP_MAX_DELEGATION_DEPTH",
        "3",
    ),
    ("agents.max_tool_calls", "AOP_MAX_TOOL_CALLS", "8"),
    (
        "agents.history_budget_tokens",
        "AOP_HISTORY_BUDGET_TOKENS",
        "8000",
    ),
];

/// Settings whose values are secrets: never echoed in errors.
const SECRET_SETTINGS: &[&str] = &[
    "server.api_keys",
    "database.password",
    "openai.api_key",
    "kafka.sasl_password",
];

/// Values given on the command line, by setting key. They win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides(Vec<(&'static str, &'static str, String)>);

impl Overrides {
    /// Sets `key` (a `config.yaml` key such as `server.port`) from `flag`.
    pub fn set(&mut self, key: &'static str, flag: &'static str, value: impl Into<String>) {
        self.0.push((key, flag, value.into()));
    }
}

/// Everything wrong with a configuration, one line per setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// `server` section.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: IpAddr,
    pub port: u16,
    pub api_keys: Vec<SecretString>,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub stateless: bool,
    pub json_response: bool,
}

/// `database` section.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Neo4j, when configured.
    pub neo4j: Option<Neo4jConfig>,
}

#[derive(Debug, Clone)]
pub struct Neo4jConfig {
    /// Empty until the Neo4j secret supplies it, when only `NEO4J_SECRET_ARN` is set.
    pub uri: String,
    pub username: String,
    pub password: SecretString,
    pub database: String,
    pub max_connections: usize,
    pub connection_timeout: std::time::Duration,
    pub fetch_size: usize,
    pub max_connection_lifetime: std::time::Duration,
    /// Budget of one store operation, retries included.
    pub operation_timeout: std::time::Duration,
    /// Apply pending graph migrations at start (else start refuses an old schema).
    pub migrate_on_start: bool,
}

/// `secrets` section: AWS Secrets Manager secrets by ARN, each a JSON object.
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// `{"api_key": ...}`
    pub openai_arn: Option<String>,
    /// `{"username": ..., "password": ..., "uri": ...}` (`uri` optional)
    pub neo4j_arn: Option<String>,
    /// `{"username": ..., "password": ...}` for SASL/SCRAM
    pub kafka_arn: Option<String>,
    pub ttl: std::time::Duration,
}

impl SecretsConfig {
    pub fn any(&self) -> bool {
        self.openai_arn.is_some() || self.neo4j_arn.is_some() || self.kafka_arn.is_some()
    }
}

/// `kafka` section.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: Option<String>,
    pub agent_events_topic: String,
    pub feedback_events_topic: String,
    pub evolution_events_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_hours: i64,
    /// How long the producer keeps trying a record before the relay pauses.
    pub delivery_timeout_ms: u64,
    pub security: KafkaSecurityConfig,
    /// MSK cluster whose brokers are looked up when no bootstrap servers are given.
    pub cluster_arn: Option<String>,
}

/// How Kafka clients authenticate and encrypt.
#[derive(Debug, Clone)]
pub enum KafkaSecurityConfig {
    Plaintext,
    Tls {
        ca_location: Option<String>,
    },
    SaslScram {
        mechanism: String,
        username: String,
        password: SecretString,
        ca_location: Option<String>,
    },
}

/// `openai` section.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub api_key: Option<SecretString>,
    pub base_url: Option<String>,
    pub organization: Option<String>,
    pub model: String,
    /// Bound on one HTTP attempt.
    pub timeout_seconds: u64,
    /// Retries of transient failures after the first attempt.
    pub max_retries: u32,
    /// Model prices (USD per million tokens), the defaults plus `openai.prices`.
    pub prices: aop_core::pricing::PriceTable,
}

/// `agents` section: bounds on agent turns.
#[derive(Debug, Clone, Copy)]
pub struct AgentsConfig {
    pub limits: aop_core::conversation::TurnLimits,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub environment: String,
    pub log_level: String,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub openai: OpenAiConfig,
    pub agents: AgentsConfig,
    pub secrets: SecretsConfig,
}

/// Raw values by key, each with its origin.
struct Layers(BTreeMap<&'static str, (String, Origin)>);

impl Config {
    /// Loads from the process environment, the config file it names (`--config`, `AOP_CONFIG`,
    /// or `./config.yaml` when present) and the command-line overrides.
    ///
    /// # Errors
    /// `ConfigError` listing every invalid setting.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources(file, &env, overrides)
    }

    /// Loads from explicit sources; `env` stands for the process environment.
    ///
    /// # Errors
    /// `ConfigError` listing every invalid setting.
    pub fn from_sources(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut errors = Vec::new();
        let mut layers = Layers(
            SETTINGS
                .iter()
                .map(|(key, _, default)| (*key, ((*default).to_owned(), Origin::Default)))
                .collect(),
        );
        let named = file.map(Path::to_path_buf).or_else(|| {
            env.get("AOP_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let path = match named {
            Some(p) => Some(p),
            None => Some(PathBuf::from("config.yaml")).filter(|p| p.is_file()),
        };
        if let Some(path) = path {
            layers.read_file(&path, &mut errors);
        }
        for (key, var, _) in SETTINGS {
            if let Some(value) = env.get(*var) {
                layers.0.insert(key, (value.clone(), Origin::Env(var)));
            }
        }
        for (key, flag, value) in &overrides.0 {
            layers.0.insert(key, (value.clone(), Origin::Flag(flag)));
        }
        let config = layers.parse(&mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(errors))
        }
    }
}

impl Layers {
    fn read_file(&mut self, path: &Path, errors: &mut Vec<String>) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("config file {}: cannot read: {e}", path.display()));
                return;
            }
        };
        let doc: serde_yaml_ng::Value = match serde_yaml_ng::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!(
                    "config file {}: not valid YAML: {e}",
                    path.display()
                ));
                return;
            }
        };
        let mut flat = Vec::new();
        flatten("", &doc, &mut flat, errors, path);
        for (key, value) in flat {
            match SETTINGS.iter().find(|(k, _, _)| *k == key) {
                Some((k, _, _)) => {
                    self.0.insert(k, (value, Origin::File(path.to_owned())));
                }
                None => errors.push(format!(
                    "config file {}: unknown setting '{key}'",
                    path.display()
                )),
            }
        }
    }

    fn raw(&self, key: &str) -> (&str, &Origin) {
        let (value, origin) = self.0.get(key).expect("every setting has a default");
        (value.trim(), origin)
    }

    fn problem(&self, key: &str, reason: impl fmt::Display) -> String {
        let (value, origin) = self.raw(key);
        let var = SETTINGS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, _)| *v)
            .unwrap_or("");
        if SECRET_SETTINGS.contains(&key) {
            format!("{key} ({var}, from {origin}): {reason}")
        } else {
            format!("{key} ({var}, from {origin}): {reason} (got '{value}')")
        }
    }

    fn text(&self, key: &str) -> String {
        self.raw(key).0.to_owned()
    }

    fn optional(&self, key: &str) -> Option<String> {
        Some(self.text(key)).filter(|v| !v.is_empty())
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .0
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn boolean(&self, key: &str, errors: &mut Vec<String>) -> bool {
        match self.raw(key).0.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            _ => {
                errors.push(self.problem(key, "must be true or false"));
                false
            }
        }
    }

    fn number<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
        errors: &mut Vec<String>,
    ) -> Option<T> {
        match self.raw(key).0.parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(self.problem(key, format!("must be {what}")));
                None
            }
        }
    }

    /// The Neo4j settings. `uri` may be empty when the Neo4j secret will supply it.
    fn neo4j(&self, uri: String, errors: &mut Vec<String>) -> Neo4jConfig {
        const SCHEMES: [&str; 6] = [
            "bolt://",
            "bolt+s://",
            "bolt+ssc://",
            "neo4j://",
            "neo4j+s://",
            "neo4j+ssc://",
        ];
        if !uri.is_empty() && !SCHEMES.iter().any(|s| uri.starts_with(s)) {
            errors.push(self.problem(
                "database.uri",
                "must start with bolt://, bolt+s://, bolt+ssc://, neo4j://, neo4j+s:// or neo4j+ssc://",
            ));
        }
        let mut at_least = |key: &str, min: u64, what: &str| {
            let n = self.number::<u64>(key, what, errors).unwrap_or(min);
            if n < min {
                errors.push(self.problem(key, format!("must be at least {min}")));
            }
            n.max(min)
        };
        let max_connections = at_least("database.max_connections", 1, "a whole number");
        let connection_timeout_ms = at_least(
            "database.connection_timeout_ms",
            1,
            "a whole number of milliseconds",
        );
        let fetch_size = at_least("database.fetch_size", 1, "a whole number");
        let lifetime = at_least(
            "database.max_connection_lifetime_seconds",
            1,
            "a whole number of seconds",
        );
        let operation_timeout_ms = at_least(
            "database.operation_timeout_ms",
            1,
            "a whole number of milliseconds",
        );
        Neo4jConfig {
            uri,
            username: self.text("database.username"),
            password: SecretString::from(self.text("database.password")),
            database: self.text("database.name"),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            connection_timeout: std::time::Duration::from_millis(connection_timeout_ms),
            fetch_size: usize::try_from(fetch_size).unwrap_or(usize::MAX),
            max_connection_lifetime: std::time::Duration::from_secs(lifetime),
            operation_timeout: std::time::Duration::from_millis(operation_timeout_ms),
            migrate_on_start: self.boolean("database.migrate_on_start", errors),
        }
    }

    fn parse(&self, errors: &mut Vec<String>) -> Config {
        let host = match self.raw("server.host").0.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                errors.push(self.problem("server.host", "must be an IP address to bind to"));
                IpAddr::from([127, 0, 0, 1])
            }
        };
        let port = self
            .number::<u16>("server.port", "a port number 0-65535", errors)
            .unwrap_or(8000);
        let api_keys: Vec<SecretString> = self
            .list("server.api_keys")
            .into_iter()
            .map(SecretString::from)
            .collect();
        if api_keys.is_empty() && !host.is_loopback() {
            errors.push(self.problem(
                "server.host",
                "binding beyond loopback needs API keys (set AOP_API_KEYS)",
            ));
        }
        for origin in self.list("server.allowed_origins") {
            if !(origin == "null" || origin.contains("://")) {
                errors.push(self.problem(
                    "server.allowed_origins",
                    format!("'{origin}' needs a scheme, such as https://{origin}"),
                ));
            }
        }
        let log_level = self.text("logging.level");
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            errors.push(self.problem(
                "logging.level",
                "must be a level (error, warn, info, debug, trace) or a filter such as aop=debug,info",
            ));
        }
        let secret_arn = |key: &str, errors: &mut Vec<String>| {
            let arn = self.optional(key)?;
            if !arn.starts_with("arn:") {
                errors.push(self.problem(key, "must be a secret ARN (arn:aws:secretsmanager:...)"));
            }
            Some(arn)
        };
        let secrets = SecretsConfig {
            openai_arn: secret_arn("secrets.openai_arn", errors),
            neo4j_arn: secret_arn("secrets.neo4j_arn", errors),
            kafka_arn: secret_arn("secrets.kafka_arn", errors),
            ttl: std::time::Duration::from_secs(
                self.number::<u64>("secrets.ttl_seconds", "a whole number of seconds", errors)
                    .unwrap_or(300),
            ),
        };
        let neo4j_uri = self.optional("database.uri");
        let neo4j = if neo4j_uri.is_some() || secrets.neo4j_arn.is_some() {
            Some(self.neo4j(neo4j_uri.unwrap_or_default(), errors))
        } else {
            None
        };
        let cluster_arn = self.optional("kafka.cluster_arn");
        if let Some(arn) = &cluster_arn
            && !arn.starts_with("arn:")
        {
            errors.push(self.problem(
                "kafka.cluster_arn",
                "must be an MSK cluster ARN (arn:aws:kafka:...)",
            ));
        }
        let bootstrap = self.optional("kafka.bootstrap_servers");
        if let Some(servers) = &bootstrap {
            for server in servers.split(',') {
                let ok = server
                    .trim()
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    errors.push(self.problem(
                        "kafka.bootstrap_servers",
                        format!("'{}' is not host:port", server.trim()),
                    ));
                }
            }
        }
        let mut at_least_one = |key: &str| {
            let n = self
                .number::<i64>(key, "a whole number", errors)
                .unwrap_or(1);
            if n < 1 {
                errors.push(self.problem(key, "must be at least 1"));
            }
            n
        };
        let partitions = i32::try_from(at_least_one("kafka.partitions")).unwrap_or(i32::MAX);
        let replication_factor =
            i32::try_from(at_least_one("kafka.replication_factor")).unwrap_or(i32::MAX);
        let retention_hours = at_least_one("kafka.retention_hours");
        let delivery_timeout_ms =
            u64::try_from(at_least_one("kafka.delivery_timeout_ms")).unwrap_or(30_000);
        let ca_location = self.optional("kafka.ssl_ca_location");
        let security = match self
            .raw("kafka.security_protocol")
            .0
            .to_ascii_lowercase()
            .as_str()
        {
            "plaintext" => KafkaSecurityConfig::Plaintext,
            "ssl" => KafkaSecurityConfig::Tls { ca_location },
            "sasl_ssl" => {
                let mechanism = self.text("kafka.sasl_mechanism");
                if !["SCRAM-SHA-512", "SCRAM-SHA-256"].contains(&mechanism.as_str()) {
                    errors.push(self.problem(
                        "kafka.sasl_mechanism",
                        "must be SCRAM-SHA-512 or SCRAM-SHA-256",
                    ));
                }
                let username = self.text("kafka.sasl_username");
                let password = self.text("kafka.sasl_password");
                // With a Kafka secret, the credentials come from Secrets Manager at start.
                let from_secret = secrets.kafka_arn.is_some();
                if username.is_empty() && !from_secret {
                    errors.push(self.problem(
                        "kafka.sasl_username",
                        "is required with sasl_ssl (or set KAFKA_SECRET_ARN)",
                    ));
                }
                if password.is_empty() && !from_secret {
                    errors.push(self.problem(
                        "kafka.sasl_password",
                        "is required with sasl_ssl (or set KAFKA_SECRET_ARN)",
                    ));
                }
                KafkaSecurityConfig::SaslScram {
                    mechanism,
                    username,
                    password: SecretString::from(password),
                    ca_location,
                }
            }
            _ => {
                errors.push(self.problem(
                    "kafka.security_protocol",
                    "must be plaintext, ssl or sasl_ssl (MSK IAM auth is not supported yet)",
                ));
                KafkaSecurityConfig::Plaintext
            }
        };
        let base_url = self.optional("openai.base_url");
        if let Some(url) = &base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(self.problem("openai.base_url", "must be an http:// or https:// URL"));
        }
        let timeout_seconds = self
            .number::<u64>(
                "openai.timeout_seconds",
                "a whole number of seconds",
                errors,
            )
            .unwrap_or(30);
        if timeout_seconds == 0 {
            errors.push(self.problem("openai.timeout_seconds", "must be at least 1"));
        }
        let model = self.text("openai.model");
        if model.is_empty() {
            errors.push(self.problem("openai.model", "must not be empty"));
        }
        let max_retries = self
            .number::<u32>("openai.max_retries", "a whole number", errors)
            .unwrap_or(3);
        if max_retries > 10 {
            errors.push(self.problem("openai.max_retries", "must be at most 10"));
        }
        let mut prices = aop_core::pricing::PriceTable::openai_defaults();
        if let Err(reason) = prices.extend_from_spec(self.raw("openai.prices").0) {
            errors.push(self.problem("openai.prices", reason));
        }
        let mut positive = |key: &str| {
            let n = self
                .number::<u64>(key, "a whole number", errors)
                .unwrap_or(1);
            if n == 0 {
                errors.push(self.problem(key, "must be at least 1"));
            }
            n
        };
        let turn_timeout = positive("agents.turn_timeout_seconds");
        let max_tool_calls = positive("agents.max_tool_calls");
        let history_budget_tokens = positive("agents.history_budget_tokens");
        let max_delegation_depth = self
            .number::<usize>("agents.max_delegation_depth", "a whole number", errors)
            .unwrap_or(3);
        let limits = aop_core::conversation::TurnLimits {
            max_delegation_depth,
            max_tool_calls: usize::try_from(max_tool_calls).unwrap_or(usize::MAX),
            history_budget_tokens: usize::try_from(history_budget_tokens).unwrap_or(usize::MAX),
            turn_timeout: std::time::Duration::from_secs(turn_timeout),
        };
        let data_dir = PathBuf::from(self.text("database.data_dir"));
        if data_dir.as_os_str().is_empty() {
            errors.push(self.problem("database.data_dir", "must not be empty"));
        }
        Config {
            environment: self.text("environment"),
            log_level,
            server: ServerConfig {
                host,
                port,
                api_keys,
                allowed_hosts: self.list("server.allowed_hosts"),
                allowed_origins: self.list("server.allowed_origins"),
                stateless: self.boolean("server.stateless", errors),
                json_response: self.boolean("server.json_response", errors),
            },
            database: DatabaseConfig { data_dir, neo4j },
            kafka: KafkaConfig {
                bootstrap_servers: bootstrap,
                agent_events_topic: self.text("kafka.topics.agent_events"),
                feedback_events_topic: self.text("kafka.topics.feedback_events"),
                evolution_events_topic: self.text("kafka.topics.evolution_events"),
                partitions,
                replication_factor,
                retention_hours,
                delivery_timeout_ms,
                security,
                cluster_arn,
            },
            openai: OpenAiConfig {
                api_key: self.optional("openai.api_key").map(SecretString::from),
                base_url,
                organization: self.optional("openai.organization"),
                model,
                timeout_seconds,
                max_retries,
                prices,
            },
            agents: AgentsConfig { limits },
            secrets,
        }
    }
}

/// Flattens a YAML mapping into dotted keys; sequences become comma-separated lists.
fn flatten(
    prefix: &str,
    value: &serde_yaml_ng::Value,
    out: &mut Vec<(String, String)>,
    errors: &mut Vec<String>,
    path: &Path,
) {
    use serde_yaml_ng::Value;
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let Some(k) = k.as_str() else {
                    errors.push(format!(
                        "config file {}: keys must be strings",
                        path.display()
                    ));
                    continue;
                };
                let key = if prefix.is_empty() {
                    k.to_owned()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out, errors, path);
            }
        }
        Value::Null if prefix.is_empty() => {}
        Value::Null => out.push((prefix.to_owned(), String::new())),
        Value::Sequence(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            if parts.len() != items.len() {
                errors.push(format!(
                    "config file {}: {prefix}: list items must be plain values",
                    path.display()
                ));
            }
            out.push((prefix.to_owned(), parts.join(",")));
        }
        other => match scalar(other) {
            Some(s) => out.push((prefix.to_owned(), s)),
            None => errors.push(format!(
                "config file {}: {prefix}: unsupported value",
                path.display()
            )),
        },
    }
}

fn scalar(value: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Help text listing every setting, its variable and its default, for `--help`.
pub fn settings_help() -> String {
    let mut out = String::from(
        "Settings (config.yaml key / environment variable / default); precedence: defaults < config file < environment < flags:\n",
    );
    for (key, var, default) in SETTINGS {
        let shown = if default.is_empty() {
            "(unset)"
        } else {
            default
        };
        out.push_str(&format!("  {key:<30} {var:<30} {shown}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(file: Option<&Path>, e: &[(&str, &str)], o: &Overrides) -> Result<Config, ConfigError> {
        Config::from_sources(file, &env(e), o)
    }

    #[test]
    fn defaults_are_loopback_8000_and_the_embedded_store() {
        let c = load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 8000);
        assert!(c.server.host.is_loopback());
        assert!(c.database.neo4j.is_none());
        assert_eq!(c.database.data_dir, PathBuf::from("./.aop"));
        assert_eq!(c.kafka.agent_events_topic, "agent_events");
        assert_eq!(c.openai.timeout_seconds, 30);
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "server:\n  port: 9001\n  allowed_hosts: [a.example, b.example]\nopenai:\n  model: file-model\n",
        )
        .unwrap();
        let c = load(Some(&path), &[], &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(c.server.allowed_hosts, ["a.example", "b.example"]);
        assert_eq!(c.openai.model, "file-model");
        let c = load(
            Some(&path),
            &[("MCP_SERVER_PORT", "9002")],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.port, 9002);
        assert_eq!(c.openai.model, "file-model");
        let mut flags = Overrides::default();
        flags.set("server.port", "--port", "9003");
        let c = load(Some(&path), &[("MCP_SERVER_PORT", "9002")], &flags).unwrap();
        assert_eq!(c.server.port, 9003);
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let err = load(
            None,
            &[
                ("MCP_SERVER_PORT", "eighty"),
                ("LOG_LEVEL", "loud[["),
                ("AOP_STATELESS", "maybe"),
                ("NEO4J_URI", "http://db"),
            ],
            &Overrides::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(text.contains("server.port (MCP_SERVER_PORT, from environment variable MCP_SERVER_PORT): must be a port number 0-65535 (got 'eighty')"), "{text}");
        assert!(text.contains("logging.level (LOG_LEVEL"), "{text}");
        assert!(text.contains("server.stateless (AOP_STATELESS"), "{text}");
        assert!(text.contains("database.uri (NEO4J_URI"), "{text}");
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "server:\n  prot: 1\n").unwrap();
        let err = load(Some(&path), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting 'server.prot'"), "{err}");
        let missing = dir.path().join("nope.yaml");
        let err = load(Some(&missing), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.yaml: cannot read"), "{err}");
    }

    #[test]
    fn public_bind_without_keys_is_refused_and_keys_stay_secret() {
        let err = load(
            None,
            &[("MCP_SERVER_HOST", "0.0.0.0")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs API keys"), "{err}");
        let c = load(
            None,
            &[
                ("MCP_SERVER_HOST", "0.0.0.0"),
                ("AOP_API_KEYS", "sk-one, sk-two"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.api_keys.len(), 2);
        assert_eq!(c.server.api_keys[1].expose_secret(), "sk-two");
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-one"), "{debug}");
    }

    #[test]
    fn kafka_scram_needs_credentials_and_keeps_them_secret() {
        let err = load(
            None,
            &[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("kafka.sasl_username (KAFKA_SASL_USERNAME"),
            "{err}"
        );
        assert!(
            err.contains("kafka.sasl_password (KAFKA_SASL_PASSWORD"),
            "{err}"
        );
        let err = load(
            None,
            &[("KAFKA_SECURITY_PROTOCOL", "iam")],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("IAM auth is not supported yet"), "{err}");
        let c = load(
            None,
            &[
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_USERNAME", "aop"),
                ("KAFKA_SASL_PASSWORD", "kafka-secret"),
            ],
            &Overrides::default(),
        )
        .unwrap();
        assert!(matches!(
            c.kafka.security,
            KafkaSecurityConfig::SaslScram { .. }
        ));
        assert!(!format!("{c:?}").contains("kafka-secret"));
    }

    #[test]
    fn secret_values_are_not_echoed_in_errors() {
        let err = load(
            None,
            &[
                ("OPENAI_API_KEY", "sk-secret"),
                ("OPENAI_BASE_URL", "ftp://x"),
                ("OPENAI_TIMEOUT_SECONDS", "0"),
            ],
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("openai.base_url"), "{err}");
        assert!(err.contains("openai.timeout_seconds"), "{err}");
        assert!(!err.contains("sk-secret"), "{err}");
    }
}
