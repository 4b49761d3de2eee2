//! The `kafka` settings: where the brokers are, the topics and how clients authenticate.

use std::sync::Arc;
use std::time::Duration;

use aop_config::{Kind, Problems, Section, Setting};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::Topics;

/// `KAFKA_SASL_MECHANISM` for MSK IAM access control (the name AWS's own client libraries use).
pub const MSK_IAM_MECHANISM: &str = "AWS_MSK_IAM";

/// Where Kafka clients get SASL `OAUTHBEARER` tokens (MSK IAM). Called from librdkafka's
/// threads: it must answer from memory.
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// A token and when it expires, in milliseconds since the Unix epoch.
    ///
    /// # Errors
    /// Why no token can be made; the client reports it and asks again.
    fn token(&self) -> Result<(String, i64), String>;
}

/// How clients authenticate and encrypt.
#[derive(Debug, Clone, Default)]
pub enum KafkaSecurity {
    #[default]
    Plaintext,
    /// TLS, optionally with a CA bundle (MSK's certificates are publicly trusted).
    Tls { ca_location: Option<String> },
    /// SASL/SCRAM over TLS (MSK's SCRAM listeners).
    SaslScram {
        /// `SCRAM-SHA-512` or `SCRAM-SHA-256`.
        mechanism: String,
        username: String,
        password: SecretString,
        ca_location: Option<String>,
    },
    /// MSK IAM access control: SASL `OAUTHBEARER` over TLS with tokens signed by AWS
    /// credentials (`BootstrapBrokerStringSaslIam`, port 9098). `tokens` is filled at start,
    /// when the credentials are read; a client without it cannot authenticate.
    Iam {
        tokens: Option<Arc<dyn TokenSource>>,
        ca_location: Option<String>,
    },
}

/// A topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub retention_ms: i64,
}

/// The `kafka` section. `Debug` never shows the SASL password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// MSK cluster whose brokers are looked up when no bootstrap servers are given.
    pub cluster_arn: Option<String>,
    /// `host:port,host:port`; no Kafka when neither this nor the cluster ARN is set.
    pub bootstrap_servers: Option<String>,
    pub topics: Topics,
    pub partitions: i32,
    pub replication_factor: i32,
    pub retention_hours: i64,
    /// How long the applied-event ledger remembers an event: longer than an event can come
    /// again (the topics' retention, plus the time a dead letter waits to be re-driven).
    pub ledger_retention_days: i64,
    /// How long the producer keeps trying a record before the relay pauses.
    #[serde(rename = "delivery_timeout_ms", with = "aop_config::millis")]
    pub delivery_timeout: Duration,
    /// `plaintext`, `ssl` or `sasl_ssl`.
    pub security_protocol: String,
    pub sasl_mechanism: String,
    pub sasl_username: String,
    #[serde(skip_serializing)]
    pub sasl_password: SecretString,
    pub ssl_ca_location: Option<String>,
    /// The token source of MSK IAM authentication, set at start from the AWS credentials.
    #[serde(skip)]
    pub iam_tokens: Option<Arc<dyn TokenSource>>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            cluster_arn: None,
            bootstrap_servers: None,
            topics: Topics::default(),
            partitions: 4,
            replication_factor: 1,
            retention_hours: 168,
            ledger_retention_days: 30,
            delivery_timeout: Duration::from_secs(30),
            security_protocol: "plaintext".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: String::new(),
            sasl_password: SecretString::from(""),
            ssl_ca_location: None,
            iam_tokens: None,
        }
    }
}

impl KafkaSettings {
    /// Whether the protocol is SASL/SCRAM over TLS, which needs a user name and password.
    pub fn uses_sasl(&self) -> bool {
        self.security_protocol.eq_ignore_ascii_case("sasl_ssl") && !self.uses_iam()
    }

    /// Whether clients authenticate with MSK IAM (`sasl_ssl` with `AWS_MSK_IAM`), which needs
    /// AWS credentials and a region.
    pub fn uses_iam(&self) -> bool {
        self.security_protocol.eq_ignore_ascii_case("sasl_ssl")
            && self.sasl_mechanism.eq_ignore_ascii_case(MSK_IAM_MECHANISM)
    }

    /// How clients authenticate, from the protocol and its settings.
    pub fn security(&self) -> KafkaSecurity {
        let ca_location = self.ssl_ca_location.clone();
        match self.security_protocol.to_ascii_lowercase().as_str() {
            "ssl" => KafkaSecurity::Tls { ca_location },
            "sasl_ssl" if self.uses_iam() => KafkaSecurity::Iam {
                tokens: self.iam_tokens.clone(),
                ca_location,
            },
            "sasl_ssl" => KafkaSecurity::SaslScram {
                mechanism: self.sasl_mechanism.clone(),
                username: self.sasl_username.clone(),
                password: self.sasl_password.clone(),
                ca_location,
            },
            _ => KafkaSecurity::Plaintext,
        }
    }

    /// Every event topic and its dead-letter topic, as configured: what `aop topics apply`
    /// creates.
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        self.topics
            .all()
            .into_iter()
            .map(|name| TopicSpec {
                name,
                partitions: self.partitions,
                replication: self.replication_factor,
                retention_ms: self.retention_hours * 3_600_000,
            })
            .collect()
    }
}

impl Section for KafkaSettings {
    const NAME: &'static str = "kafka";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("cluster_arn", "MSK_CLUSTER_ARN", Kind::Text),
        Setting::new("bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", Kind::Text),
        Setting::new(
            "topics.agent_events",
            "KAFKA_TOPIC_AGENT_EVENTS",
            Kind::Text,
        ),
        Setting::new(
            "topics.feedback_events",
            "KAFKA_TOPIC_FEEDBACK_EVENTS",
            Kind::Text,
        ),
        Setting::new(
            "topics.evolution_events",
            "KAFKA_TOPIC_EVOLUTION_EVENTS",
            Kind::Text,
        ),
        Setting::new("partitions", "KAFKA_TOPIC_PARTITIONS", Kind::Whole),
        Setting::new(
            "replication_factor",
            "KAFKA_REPLICATION_FACTOR",
            Kind::Whole,
        ),
        Setting::new("retention_hours", "KAFKA_RETENTION_HOURS", Kind::Whole),
        Setting::new(
            "ledger_retention_days",
            "AOP_LEDGER_RETENTION_DAYS",
            Kind::Whole,
        )
        .expecting("whole days, longer than the topics' retention"),
        Setting::new(
            "delivery_timeout_ms",
            "KAFKA_DELIVERY_TIMEOUT_MS",
            Kind::Whole,
        )
        .expecting("a whole number of milliseconds"),
        Setting::new("security_protocol", "KAFKA_SECURITY_PROTOCOL", Kind::Text),
        Setting::new("sasl_mechanism", "KAFKA_SASL_MECHANISM", Kind::Text),
        Setting::new("sasl_username", "KAFKA_SASL_USERNAME", Kind::Text),
        Setting::secret("sasl_password", "KAFKA_SASL_PASSWORD", Kind::Text),
        Setting::new("ssl_ca_location", "KAFKA_SSL_CA_LOCATION", Kind::Text),
    ];

    fn check(&self, problems: &mut Problems) {
        if self
            .cluster_arn
            .as_ref()
            .is_some_and(|arn| !arn.starts_with("arn:"))
        {
            problems.push(
                "cluster_arn",
                "must be an MSK cluster ARN (arn:aws:kafka:...)",
            );
        }
        for server in self.bootstrap_servers.iter().flat_map(|s| s.split(',')) {
            let ok = server
                .trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                problems.push(
                    "bootstrap_servers",
                    format!("'{}' is not host:port", server.trim()),
                );
            }
        }
        for (key, topic) in [
            ("topics.agent_events", &self.topics.agent_events),
            ("topics.feedback_events", &self.topics.feedback_events),
            ("topics.evolution_events", &self.topics.evolution_events),
        ] {
            if topic.is_empty() {
                problems.push(key, "must not be empty");
            }
        }
        problems.at_least("partitions", self.partitions, 1);
        problems.at_least("replication_factor", self.replication_factor, 1);
        problems.at_least("retention_hours", self.retention_hours, 1);
        if self.ledger_retention_days.saturating_mul(24) <= self.retention_hours {
            problems.push(
                "ledger_retention_days",
                format!(
                    "must be longer than the topics' retention (retention_hours {}): an event \
                     can come again until then, and a forgotten one would be applied twice",
                    self.retention_hours
                ),
            );
        }
        if self.delivery_timeout.is_zero() {
            problems.push("delivery_timeout_ms", "must be at least 1");
        }
        match self.security_protocol.to_ascii_lowercase().as_str() {
            "plaintext" | "ssl" => {}
            "sasl_ssl" => {
                if !self.uses_iam()
                    && !["SCRAM-SHA-512", "SCRAM-SHA-256"].contains(&self.sasl_mechanism.as_str())
                {
                    problems.push(
                        "sasl_mechanism",
                        "must be SCRAM-SHA-512, SCRAM-SHA-256 or AWS_MSK_IAM",
                    );
                }
            }
            _ => problems.push("security_protocol", "must be plaintext, ssl or sasl_ssl"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_setting() {
        assert_eq!(
            aop_config::undeclared::<KafkaSettings>(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn topic_specs_cover_every_topic_and_dead_letter_topic() {
        let specs = KafkaSettings::default().topic_specs();
        assert_eq!(specs.len(), 6);
        assert!(
            specs
                .iter()
                .all(|s| s.partitions == 4 && s.retention_ms == 168 * 3_600_000)
        );
        assert!(specs.iter().any(|s| s.name == "feedback_events.dlq"));
    }
}
