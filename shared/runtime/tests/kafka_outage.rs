//! Nothing is lost when Kafka is down: writes succeed into the outbox, and once the broker is
//! back the relay publishes every event. Needs `AOP_TEST_KAFKA` (any value) to run; it starts and
//! stops its own noida-db broker with `infra/kafka/broker`.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use aop_core::CreateAgent;
use aop_runtime::{Config, Overrides, Platform};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/kafka/broker");

fn broker(args: &[&str]) {
    let status = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "infra/kafka/broker {args:?} failed");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Outage(String);

impl Drop for Outage {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["stop", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    if std::env::var("AOP_TEST_KAFKA").map_or(true, |v| v.is_empty()) {
        assert!(
            std::env::var_os("AOP_REQUIRE_SERVICES").is_none(),
            "AOP_TEST_KAFKA is not set, but AOP_REQUIRE_SERVICES requires the Kafka tests"
        );
        eprintln!("SKIPPED (service not configured): set AOP_TEST_KAFKA to run the outage test");
        return;
    }
    let port = free_port();
    let name = format!("outage-{port}");
    broker(&["start", "noida", &port.to_string(), &name]);
    let _stop = Outage(name.clone());

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("o{port}");
    let env: BTreeMap<String, String> = [
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}")),
        ("KAFKA_TOPIC_AGENT_EVENTS", format!("{prefix}.agent_events")),
        (
            "KAFKA_TOPIC_FEEDBACK_EVENTS",
            format!("{prefix}.feedback_events"),
        ),
        (
            "KAFKA_TOPIC_EVOLUTION_EVENTS",
            format!("{prefix}.evolution_events"),
        ),
        ("KAFKA_DELIVERY_TIMEOUT_MS", "2000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let platform = Platform::build(&config).unwrap();
    let apply = || async {
        let settings = aop_runtime::platform::kafka_settings(&config).unwrap();
        let specs: Vec<_> = aop_runtime::platform::topics(&config)
            .all()
            .into_iter()
            .map(|name| aop_events::kafka::TopicSpec {
                name,
                partitions: 4,
                replication: 1,
                retention_ms: 3_600_000,
            })
            .collect();
        aop_events::kafka::apply_topics(&settings, &specs)
            .await
            .unwrap();
    };
    apply().await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(platform.kafka_relay(&config).unwrap().run(shutdown.clone()));

    broker(&["stop", &name]);
    let mut created = HashSet::new();
    for i in 0..100 {
        let agent = platform
            .agents
            .create(CreateAgent {
                name: format!("written during the outage {i}"),
                instructions: "x".into(),
                ..CreateAgent::default()
            })
            .await
            .expect("writes succeed while Kafka is down");
        created.insert(agent.agent.agent_id.to_string());
    }
    assert_eq!(
        platform.outbox.backlog().await.unwrap(),
        200,
        "two events per agent wait"
    );

    broker(&["start", "noida", &port.to_string(), &name]);
    apply().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while platform.outbox.backlog().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox drains once the broker is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", format!("outage-check-{port}"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{prefix}.agent_events")])
        .unwrap();
    let mut ids = HashSet::new();
    let mut subjects = HashSet::new();
    while ids.len() < 200 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("every event arrives")
            .unwrap();
        let event = aop_events::CloudEvent::decode(message.payload().unwrap()).unwrap();
        subjects.insert(event.subject.to_string());
        ids.insert(event.id);
    }
    consumer.unsubscribe();
    assert_eq!(
        ids.len(),
        200,
        "after de-duplication by event id, each event once"
    );
    assert_eq!(subjects, created, "every agent's events arrived");
    shutdown.cancel();
    relay.await.unwrap();
}
