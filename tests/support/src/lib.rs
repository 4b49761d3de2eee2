//! What the tests share: finding the real servers they run against, and ([`fuzz`]) the inputs
//! of the decoders' fuzz tests.
//!
//! A test that needs a server asks [`service`] for its address. Without one it skips, saying
//! which variable to set; under `AOP_REQUIRE_SERVICES` (what `scripts/test-all` sets) a missing
//! server fails the test instead, so a run that promised real servers cannot pass by skipping.

pub mod fuzz;

/// A real server some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// A Kafka-protocol broker: `AOP_TEST_KAFKA=host:port`.
    Kafka,
    /// A Bolt (Neo4j protocol) server: `AOP_TEST_NEO4J=bolt://host:port`.
    Neo4j,
    /// moto's server mode for the AWS APIs: `AOP_TEST_MOTO=http://host:port`.
    Moto,
}

impl Service {
    fn variable(self) -> &'static str {
        match self {
            Self::Kafka => "AOP_TEST_KAFKA",
            Self::Neo4j => "AOP_TEST_NEO4J",
            Self::Moto => "AOP_TEST_MOTO",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Self::Kafka => "127.0.0.1:PORT (infra/kafka/broker start noida PORT)",
            Self::Neo4j => "bolt://127.0.0.1:PORT (infra/neo4j/arcadedb start PORT)",
            Self::Moto => "http://127.0.0.1:PORT (infra/aws/moto start PORT)",
        }
    }
}

/// The server's address, or `None` after printing why the calling test skips.
///
/// # Panics
/// When `AOP_REQUIRE_SERVICES` is set and the server's variable is not.
pub fn service(service: Service) -> Option<String> {
    let variable = service.variable();
    match std::env::var(variable) {
        Ok(address) if !address.is_empty() => Some(address),
        _ => {
            assert!(
                std::env::var_os("AOP_REQUIRE_SERVICES").is_none(),
                "{variable} is not set, but AOP_REQUIRE_SERVICES requires the tests that need it"
            );
            eprintln!(
                "SKIPPED (service not configured): set {variable}={}",
                service.example()
            );
            None
        }
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Reads the first `count` records of `topic` (from the earliest offset, in a consumer group of
/// its own), leaving the group before it returns.
///
/// # Panics
/// When they do not all arrive within 30 s, or the broker refuses the consumer.
pub async fn read_topic(servers: &str, topic: &str, count: usize) -> Vec<Record> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;

    let group = format!(
        "check-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of {count} records of {topic} arrived", records.len()))
            .expect("a record");
        records.push(Record {
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        });
    }
    // Leaving the group at once: some brokers hold a dead member's partitions until it times out.
    consumer.unsubscribe();
    records
}
