//! Kafka: an idempotent producer (`acks=all`, lz4, bounded delivery timeout) that publishes
//! domain events as CloudEvents keyed by agent id, and topic administration.
//!
//! Plaintext, TLS, SASL/SCRAM over TLS and MSK IAM (SASL `OAUTHBEARER` with tokens signed by
//! AWS credentials, renewed by librdkafka before they expire) are configurable.

use std::sync::Arc;
use std::time::Duration;

use aop_core::{Delivery, DomainEvent, EventSink};
use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::{CloudEvent, KafkaSettings, TokenSource, Topics};
pub use crate::{KafkaSecurity, TopicSpec};

/// The context of every Kafka client the platform makes: it answers librdkafka's requests for
/// an `OAUTHBEARER` token (MSK IAM) and otherwise behaves as rdkafka's default (log lines go to
/// the `log` facade, errors are logged).
#[derive(Debug, Clone, Default)]
pub struct KafkaContext {
    tokens: Option<Arc<dyn TokenSource>>,
}

impl ClientContext for KafkaContext {
    // librdkafka raises the refresh event only for the OAUTHBEARER mechanism.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let tokens = self.tokens.as_ref().ok_or(
            "MSK IAM authentication is configured but the AWS credentials were not read at start",
        )?;
        let (token, lifetime_ms) = tokens.token().map_err(|e| {
            tracing::error!(error = %e, "cannot make an MSK IAM token");
            e
        })?;
        Ok(OAuthToken {
            token,
            // MSK takes the principal from the signed request, not from this name.
            principal_name: String::new(),
            lifetime_ms,
        })
    }
}

impl ConsumerContext for KafkaContext {}

/// The producer every part of the platform uses.
pub type KafkaProducer = FutureProducer<KafkaContext>;

/// How to reach the brokers.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `host:port,host:port`
    pub bootstrap_servers: String,
    pub client_id: String,
    /// How long the producer keeps trying one record before reporting it undelivered.
    pub delivery_timeout: Duration,
    pub security: KafkaSecurity,
}

impl ClientSettings {
    /// The client settings of the `kafka` section, or `None` when no brokers are configured.
    pub fn from_settings(settings: &KafkaSettings) -> Option<Self> {
        let servers = settings.bootstrap_servers.clone()?;
        Some(Self {
            delivery_timeout: settings.delivery_timeout,
            security: settings.security(),
            ..Self::new(servers)
        })
    }

    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: "aop".into(),
            delivery_timeout: Duration::from_secs(30),
            security: KafkaSecurity::Plaintext,
        }
    }

    /// An idempotent producer that waits for every replica (`acks=all`) within the delivery
    /// timeout: for records that must not be lost or doubled (dead letters, re-driven ones).
    ///
    /// # Errors
    /// `Client` when the producer cannot be created.
    pub(crate) fn reliable_producer(&self) -> Result<KafkaProducer, KafkaError> {
        self.create(&self.reliable_config())
    }

    /// An idempotent producer's settings, waiting for every replica within the delivery timeout.
    fn reliable_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true").set("acks", "all").set(
            "delivery.timeout.ms",
            self.delivery_timeout.as_millis().to_string(),
        );
        c
    }

    /// A client of `config`, with this connection's context (its MSK IAM tokens).
    ///
    /// # Errors
    /// `Client` naming the brokers when librdkafka refuses the settings.
    pub(crate) fn create<T>(&self, config: &ClientConfig) -> Result<T, KafkaError>
    where
        T: rdkafka::config::FromClientConfigAndContext<KafkaContext>,
    {
        config
            .create_with_context(self.context())
            .map_err(|source| KafkaError::Client {
                servers: self.bootstrap_servers.clone(),
                source,
            })
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        use secrecy::ExposeSecret;
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("socket.timeout.ms", "10000");
        let ca = match &self.security {
            KafkaSecurity::Plaintext => {
                c.set("security.protocol", "plaintext");
                None
            }
            KafkaSecurity::Tls { ca_location } => {
                c.set("security.protocol", "ssl");
                ca_location.as_ref()
            }
            KafkaSecurity::SaslScram {
                mechanism,
                username,
                password,
                ca_location,
            } => {
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanism", mechanism)
                    .set("sasl.username", username)
                    .set("sasl.password", password.expose_secret());
                ca_location.as_ref()
            }
            KafkaSecurity::Iam { ca_location, .. } => {
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanism", "OAUTHBEARER");
                ca_location.as_ref()
            }
        };
        if let Some(ca) = ca {
            c.set("ssl.ca.location", ca);
        }
        c
    }

    /// The context for a client: with MSK IAM, where its tokens come from.
    pub fn context(&self) -> KafkaContext {
        KafkaContext {
            tokens: match &self.security {
                KafkaSecurity::Iam { tokens, .. } => tokens.clone(),
                _ => None,
            },
        }
    }

    /// Whether clients authenticate with MSK IAM.
    pub fn uses_iam(&self) -> bool {
        matches!(self.security, KafkaSecurity::Iam { .. })
    }

    /// A producer for reading cluster metadata: unlike the admin client, it answers
    /// librdkafka's token requests (on its polling thread), so it works with MSK IAM too.
    fn metadata_client(&self) -> Result<KafkaProducer, KafkaError> {
        self.create(&self.client_config())
    }
}

/// Why Kafka could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create the Kafka client for {servers}")]
    Client {
        servers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("the Kafka brokers at {servers} did not answer")]
    Unreachable {
        servers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Publishes events to their stream's topic, keyed by agent id.
pub struct KafkaSink {
    producer: std::sync::Mutex<KafkaProducer>,
    /// Set after a failed delivery: the next delivery starts from a fresh producer.
    replace: std::sync::atomic::AtomicBool,
    topics: Topics,
    settings: ClientSettings,
}

/// The relay's producer: reliable, and batching a little (lz4, 5 ms linger).
fn idempotent_producer(settings: &ClientSettings) -> Result<KafkaProducer, KafkaError> {
    let mut config = settings.reliable_config();
    config.set("compression.type", "lz4").set("linger.ms", "5");
    settings.create(&config)
}

impl KafkaSink {
    /// # Errors
    /// `Client` when the producer cannot be created (bad settings).
    pub fn new(settings: ClientSettings, topics: Topics) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: std::sync::Mutex::new(idempotent_producer(&settings)?),
            replace: std::sync::atomic::AtomicBool::new(false),
            topics,
            settings,
        })
    }

    /// The producer, replaced after a failed delivery or a fatal error. An idempotent producer
    /// can stay wedged (or go fatal) when the cluster forgets its producer id, as when a broker
    /// that lost its state comes back; a new one starts with a new id, and the outbox re-sends
    /// whatever was not acknowledged.
    fn producer(&self) -> KafkaProducer {
        let mut current = self
            .producer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fatal = current.client().fatal_error();
        let failed = self
            .replace
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        if fatal.is_some() || failed {
            tracing::info!(fatal = ?fatal, "starting a new Kafka producer after a failed delivery");
            match idempotent_producer(&self.settings) {
                Ok(fresh) => *current = fresh,
                Err(e) => tracing::error!(error = %e, "cannot start a new Kafka producer"),
            }
        }
        current.clone()
    }

    /// Waits until every queued record is delivered or has failed.
    pub fn flush(&self) {
        let _ = self.producer().flush(self.settings.delivery_timeout);
    }
}

#[async_trait]
impl EventSink for KafkaSink {
    async fn deliver(&self, events: &[DomainEvent]) -> Delivery {
        // Queue every record first so they travel in one pipeline; the idempotent producer
        // keeps each partition's (each agent's) order.
        let producer = self.producer();
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let topic = self.topics.topic(event.event_type().stream());
            let (value, truncated) = record_value(event);
            let key = event.subject.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ce_type",
                    value: Some(event.event_type().as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json"),
                })
                .insert(Header {
                    key: "aop_truncated",
                    value: Some(if truncated { "true" } else { "false" }),
                });
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => pending.push(delivery),
                Err((e, _)) => {
                    // The local queue is full: deliver what is queued and stop here; the rest
                    // counts as not delivered.
                    let (mut arrived, failure) = await_all(pending).await;
                    arrived.resize(events.len(), false);
                    return Delivery::per_agent(
                        &subjects(events),
                        &arrived,
                        Some(failure.unwrap_or_else(|| e.to_string())),
                    );
                }
            }
        }
        let (arrived, failure) = await_all(pending).await;
        if failure.is_some() {
            self.replace
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Delivery::per_agent(&subjects(events), &arrived, failure)
    }
}

/// Largest record value we send: under the 1 MB `message.max.bytes` brokers (MSK included) use
/// by default, with room for the key and headers.
pub const MAX_VALUE_BYTES: usize = 900 * 1024;

/// The record value for an event. An event too large for the broker (an agent version with very
/// long instructions, say) travels without its data, marked `truncated`, so the stream keeps
/// flowing: consumers that need the data read it from the store by the subject and ids left in.
///
/// An event whose data cannot be written as JSON (it was read back from the outbox, so this
/// does not happen unless a value changed meaning between builds) travels the same way, with
/// the reason: consumers dead-letter it, where an operator sees it, instead of it blocking the
/// relay or travelling with empty data.
pub fn record_value(event: &DomainEvent) -> (Vec<u8>, bool) {
    let mut envelope = match CloudEvent::from_domain(event, None) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::error!(event_id = %event.id, error = %e, "publishing an event whose data cannot be encoded without it");
            let mut envelope = CloudEvent::without_data(event);
            envelope.data = serde_json::json!({
                "truncated": true,
                "reason": format!("the event data cannot be encoded: {e}"),
            });
            return (envelope.to_bytes(), true);
        }
    };
    let full = envelope.to_bytes();
    if full.len() <= MAX_VALUE_BYTES {
        return (full, false);
    }
    let mut stub = serde_json::json!({
        "truncated": true,
        "original_bytes": full.len(),
        "reason": "the event data exceeds the record size limit; read it from the store"
    });
    // What a consumer needs to read the data back: the interaction of an interaction event
    // (the one kind whose data has no bound: a model's answer, its tool results).
    if let aop_core::EventData::InteractionCompleted(
        aop_core::events::payload::InteractionCompleted { interaction },
    )
    | aop_core::EventData::InteractionFailed(aop_core::events::payload::InteractionFailed {
        interaction,
    }) = &event.data
    {
        stub["interaction_id"] = serde_json::Value::from(interaction.interaction_id.as_str());
    }
    envelope.data = stub;
    tracing::warn!(event_id = %event.id, bytes = full.len(), "publishing an oversized event without its data");
    (envelope.to_bytes(), true)
}

fn subjects(events: &[DomainEvent]) -> Vec<&aop_core::AgentId> {
    events.iter().map(|e| &e.subject).collect()
}

/// Awaits every delivery; says which arrived, and the first failure.
async fn await_all(pending: Vec<rdkafka::producer::DeliveryFuture>) -> (Vec<bool>, Option<String>) {
    let mut arrived = Vec::with_capacity(pending.len());
    let mut failure = None;
    for delivery in pending {
        let outcome = match delivery.await {
            Ok(Ok(_)) => None,
            Ok(Err((e, _))) => Some(e.to_string()),
            Err(_) => Some("the producer dropped the record".to_owned()),
        };
        arrived.push(outcome.is_none());
        if failure.is_none() {
            failure = outcome;
        }
    }
    if let Some(e) = &failure {
        let delivered = arrived.iter().filter(|a| **a).count();
        tracing::warn!(error = %e, delivered, "Kafka delivery failed");
    }
    (arrived, failure)
}

/// What applying a topic did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    Unchanged,
    /// Exists with another partition count: partitions are never changed automatically.
    Drift {
        partitions: i32,
    },
}

/// Creates missing topics and reports drift of existing ones. Idempotent.
///
/// # Errors
/// `Client` or `Topic` when the brokers refuse.
pub async fn apply_topics(
    settings: &ClientSettings,
    specs: &[TopicSpec],
) -> Result<Vec<(String, TopicOutcome)>, KafkaError> {
    if settings.uses_iam() {
        return Err(KafkaError::Unsupported(iam_topic_commands(settings, specs)));
    }
    let admin: AdminClient<KafkaContext> = settings.create(&settings.client_config())?;
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
    let new: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            NewTopic::new(
                &s.name,
                s.partitions,
                TopicReplication::Fixed(s.replication),
            )
            .set("retention.ms", r)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|source| KafkaError::Client {
            servers: settings.bootstrap_servers.clone(),
            source,
        })?;
    let mut outcomes = Vec::with_capacity(specs.len());
    for (spec, result) in specs.iter().zip(results) {
        let outcome = match result {
            Ok(_) => TopicOutcome::Created,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let partitions = partition_count(admin.inner(), &spec.name)?;
                if partitions == spec.partitions {
                    TopicOutcome::Unchanged
                } else {
                    TopicOutcome::Drift { partitions }
                }
            }
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        };
        outcomes.push((spec.name.clone(), outcome));
    }
    Ok(outcomes)
}

/// Why topics are not created over MSK IAM, and the commands that create them with Kafka's own
/// tools and AWS's `aws-msk-iam-auth` library instead.
fn iam_topic_commands(settings: &ClientSettings, specs: &[TopicSpec]) -> String {
    let mut text = String::from(
        "topics cannot be created over MSK IAM authentication: librdkafka's admin client (through \
         rdkafka 0.39) never asks for an OAUTHBEARER token. Create them over a SASL/SCRAM or TLS \
         listener, or with Kafka's own tools and the aws-msk-iam-auth library on the classpath, \
         with an iam.properties of:\n  security.protocol=SASL_SSL\n  sasl.mechanism=AWS_MSK_IAM\n  \
         sasl.jaas.config=software.amazon.msk.auth.iam.IAMLoginModule required;\n  \
         sasl.client.callback.handler.class=software.amazon.msk.auth.iam.IAMClientCallbackHandler\n\
         and for each topic:",
    );
    for spec in specs {
        text.push_str(&format!(
            "\n  kafka-topics.sh --bootstrap-server {} --command-config iam.properties --create \
             --if-not-exists --topic {} --partitions {} --replication-factor {} --config \
             retention.ms={}",
            settings.bootstrap_servers,
            spec.name,
            spec.partitions,
            spec.replication,
            spec.retention_ms
        ));
    }
    text
}

/// Which of `topics` the brokers do not have. Blocks up to `timeout` (call it off the async
/// threads).
///
/// # Errors
/// `Client` when the brokers cannot be reached within `timeout`.
pub fn missing_topics(
    settings: &ClientSettings,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<String>, KafkaError> {
    let client = settings.metadata_client()?;
    let metadata = client
        .client()
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaError::Unreachable {
            servers: settings.bootstrap_servers.clone(),
            source,
        })?;
    let present: std::collections::HashSet<&str> =
        metadata.topics().iter().map(|t| t.name()).collect();
    Ok(topics
        .iter()
        .filter(|t| !present.contains(t.as_str()))
        .cloned()
        .collect())
}

fn partition_count(
    client: &rdkafka::client::Client<KafkaContext>,
    topic: &str,
) -> Result<i32, KafkaError> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| KafkaError::Topic {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| {
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
        }))
}

/// Writes dead letters to `<topic>.dlq`: the original key and value, with the error, the attempt
/// count and the record's origin in headers.
pub struct KafkaDeadLetters {
    producer: KafkaProducer,
    timeout: Duration,
}

impl KafkaDeadLetters {
    /// # Errors
    /// `Client` when the producer cannot be created.
    pub fn new(settings: &ClientSettings) -> Result<Self, KafkaError> {
        let producer = settings.reliable_producer()?;
        Ok(Self {
            producer,
            timeout: settings.delivery_timeout,
        })
    }
}

#[async_trait]
impl crate::msk::DeadLetters for KafkaDeadLetters {
    async fn send(&self, letter: &crate::msk::DeadLetter) -> Result<(), String> {
        let topic = Topics::dead_letter(&letter.topic);
        let attempts = letter.attempts.to_string();
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "aop_error",
                value: Some(letter.error.as_str()),
            })
            .insert(Header {
                key: "aop_attempts",
                value: Some(attempts.as_str()),
            })
            .insert(Header {
                key: "aop_source_topic",
                value: Some(letter.topic.as_str()),
            })
            .insert(Header {
                key: "aop_source_partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "aop_source_offset",
                value: Some(offset.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
            .payload(letter.value.as_slice())
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| format!("cannot write {topic}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version_created(agent: &aop_core::AgentId, instructions: &str) -> DomainEvent {
        let version = aop_core::AgentVersion {
            agent_id: agent.clone(),
            version: 1,
            instructions: instructions.to_owned(),
            model: "m".into(),
            parameters: aop_core::ModelParameters::default(),
            capabilities: Vec::new(),
            knowledge_sources: Vec::new(),
            created_at: 0,
            created_by: "user".into(),
            parents: Vec::new(),
            generation: 0,
            change_summary: "created".into(),
            origin: None,
        };
        DomainEvent::new(
            agent,
            0,
            aop_core::events::payload::AgentVersionCreated {
                version,
                aliases: Vec::new(),
            },
        )
    }

    #[test]
    fn oversized_events_travel_without_their_data() {
        let agent = aop_core::AgentId::parse("agent_id", "agt_big").unwrap();
        let small = version_created(&agent, "short");
        let (value, truncated) = record_value(&small);
        assert!(!truncated);
        assert_eq!(CloudEvent::decode(&value).unwrap(), small);

        let big = version_created(&agent, &"x".repeat(2 * MAX_VALUE_BYTES));
        let (value, truncated) = record_value(&big);
        assert!(truncated);
        assert!(value.len() <= MAX_VALUE_BYTES);
        let decoded: CloudEvent = serde_json::from_slice(&value).unwrap();
        assert_eq!(
            decoded.id, big.id,
            "the same event, so consumers still de-duplicate it"
        );
        assert_eq!(decoded.subject, agent.as_str());
        assert_eq!(decoded.data["truncated"], true);
    }

    #[test]
    fn security_settings_map_to_librdkafka_properties() {
        let mut s = ClientSettings::new("b-1:9096");
        assert_eq!(
            s.client_config().get("security.protocol"),
            Some("plaintext")
        );
        s.security = KafkaSecurity::Tls { ca_location: None };
        assert_eq!(s.client_config().get("security.protocol"), Some("ssl"));
        s.security = KafkaSecurity::SaslScram {
            mechanism: "SCRAM-SHA-512".into(),
            username: "aop".into(),
            password: secrecy::SecretString::from("s3cret"),
            ca_location: Some("/etc/ssl/certs/ca-certificates.crt".into()),
        };
        let c = s.client_config();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("aop"));
        assert_eq!(
            c.get("ssl.ca.location"),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "the password never prints"
        );
        // librdkafka accepts the combination (TLS and SCRAM are compiled in).
        let producer: Result<FutureProducer, _> = c.create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    /// Counts the tokens asked for.
    #[derive(Debug, Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl TokenSource for Counting {
        fn token(&self) -> Result<(String, i64), String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let in_15_min = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 900_000;
            Ok(("signed-url".into(), i64::try_from(in_15_min).unwrap()))
        }
    }

    fn iam(tokens: Option<Arc<dyn TokenSource>>) -> ClientSettings {
        let mut s = ClientSettings::new("127.0.0.1:1");
        s.security = KafkaSecurity::Iam {
            tokens,
            ca_location: None,
        };
        s
    }

    #[test]
    fn msk_iam_clients_speak_oauthbearer_over_tls() {
        let c = iam(None).client_config();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(c.get("sasl.username"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_msk_iam_producer_asks_the_token_source_without_being_polled() {
        let counting = Arc::new(Counting::default());
        let settings = iam(Some(counting.clone()));
        let _producer = settings.reliable_producer().unwrap();
        for _ in 0..100 {
            if counting.0.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            counting.0.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "librdkafka asked the context for a token on the producer's polling thread"
        );
    }

    #[test]
    fn without_credentials_the_token_request_says_why() {
        let err = iam(None)
            .context()
            .generate_oauth_token(None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("the AWS credentials were not read at start"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn topics_are_not_created_over_msk_iam_and_the_error_says_how_instead() {
        let spec = TopicSpec {
            name: "agent_events".into(),
            partitions: 4,
            replication: 3,
            retention_ms: 604_800_000,
        };
        let err = apply_topics(&iam(None), &[spec])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be created over MSK IAM"), "{err}");
        assert!(err.contains("sasl.mechanism=AWS_MSK_IAM"), "{err}");
        assert!(
            err.contains(
                "kafka-topics.sh --bootstrap-server 127.0.0.1:1 --command-config iam.properties \
                 --create --if-not-exists --topic agent_events --partitions 4 \
                 --replication-factor 3 --config retention.ms=604800000"
            ),
            "{err}"
        );
    }
}
