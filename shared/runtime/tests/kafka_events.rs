//! The platform's events on a real broker: the right CloudEvents on the right topics, keyed by
//! agent, in per-agent order; and nothing lost when Kafka is down. Needs `AOP_TEST_KAFKA`; the
//! outage test starts and stops its own noida-db broker with `infra/kafka/broker`.

use aop_test_support::{Service, service};
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
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

fn kafka() -> Option<String> {
    service(Service::Kafka)
}

fn kafka_env(servers: &str, prefix: &str, dir: &std::path::Path) -> BTreeMap<String, String> {
    [
        ("AOP_DATA_DIR", dir.display().to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", servers.to_owned()),
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
    .collect()
}

async fn apply(config: &Config) {
    let settings = aop_runtime::adapters::kafka_client(config).unwrap();
    let specs = config.kafka.topic_specs();
    aop_events::kafka::apply_topics(&settings, &specs)
        .await
        .unwrap();
}

fn consumer(servers: &str, topics: &[&str]) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set(
            "group.id",
            format!("check-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(topics).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_turns_and_feedback_land_on_their_topics_keyed_and_in_order() {
    let Some(servers) = kafka() else { return };
    let llm = openai_test_server::TestLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut env = kafka_env(&servers, &prefix, dir.path());
    env.insert("OPENAI_BASE_URL".into(), llm.base_url());
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let platform = Platform::build(&config).unwrap();
    apply(&config).await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(platform.kafka_relay(&config).unwrap().run(shutdown.clone()));

    let mut agents = Vec::new();
    for name in ["first", "second"] {
        let id = platform
            .mcp
            .agents
            .create(CreateAgent {
                name: name.into(),
                instructions: "x".into(),
                ..CreateAgent::default()
            })
            .await
            .unwrap()
            .agent
            .agent_id;
        let turn = platform
            .mcp
            .conversations
            .run_agent(
                aop_core::services::conversation::RunAgent {
                    caller: None,
                    agent_id: id.clone(),
                    alias: None,
                    input: "hello".into(),
                    user_id: None,
                },
                None,
            )
            .await
            .unwrap();
        platform
            .mcp
            .feedback
            .submit(aop_core::services::feedback::SubmitFeedback {
                caller: None,
                agent_id: id.clone(),
                session_id: None,
                interaction_id: Some(turn.interaction_id),
                ratings: [("helpfulness".to_owned(), 4.0)].into_iter().collect(),
                scale: None,
                comments: None,
                categories: Vec::new(),
                user_id: None,
            })
            .await
            .unwrap();
        agents.push(id);
    }

    let agent_topic = format!("{prefix}.agent_events");
    let feedback_topic = format!("{prefix}.feedback_events");
    let c = consumer(&servers, &[&agent_topic, &feedback_topic]);
    // Per agent: agent.created, agent.version.created, interaction.completed on agent_events;
    // feedback.submitted on feedback_events.
    let mut seen: BTreeMap<(String, String), Vec<(i64, String)>> = BTreeMap::new();
    for _ in 0..8 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("every event arrives")
            .unwrap();
        let event = aop_events::CloudEvent::decode(m.payload().unwrap()).unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        assert_eq!(key, event.subject.as_str(), "keyed by agent id");
        seen.entry((m.topic().to_owned(), key))
            .or_default()
            .push((m.offset(), event.event_type().as_str().to_owned()));
    }
    c.unsubscribe();
    for agent in &agents {
        let mut on_agent = seen[&(agent_topic.clone(), agent.to_string())].clone();
        on_agent.sort();
        let types: Vec<&str> = on_agent.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "agent.created",
                "agent.version.created",
                "interaction.completed"
            ],
            "in the order they happened"
        );
        let on_feedback = &seen[&(feedback_topic.clone(), agent.to_string())];
        assert_eq!(on_feedback.len(), 1);
        assert_eq!(on_feedback[0].1, "feedback.submitted");
    }
    shutdown.cancel();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_nothing() {
    if kafka().is_none() {
        return;
    }
    let port = free_port();
    let name = format!("outage-{port}");
    broker(&["start", "noida", &port.to_string(), &name]);
    let _stop = Outage(name.clone());

    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("o{port}");
    let env = kafka_env(&format!("127.0.0.1:{port}"), &prefix, dir.path());
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let platform = Platform::build(&config).unwrap();
    apply(&config).await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(platform.kafka_relay(&config).unwrap().run(shutdown.clone()));

    broker(&["stop", &name]);
    let mut created = HashSet::new();
    for i in 0..100 {
        let agent = platform
            .mcp
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
        platform.mcp.stores.outbox.backlog().await.unwrap(),
        200,
        "two events per agent wait"
    );

    broker(&["start", "noida", &port.to_string(), &name]);
    apply(&config).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while platform.mcp.stores.outbox.backlog().await.unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the outbox drains once the broker is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let consumer = consumer(
        &format!("127.0.0.1:{port}"),
        &[&format!("{prefix}.agent_events")],
    );
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

/// A sink that refuses one agent's first event and takes the rest, as a broker does when one
/// partition's leader is away.
struct OnePartitionDown {
    down: aop_core::AgentId,
}

#[async_trait::async_trait]
impl aop_core::EventSink for OnePartitionDown {
    async fn deliver(&self, events: &[aop_core::DomainEvent]) -> aop_core::Delivery {
        let subjects: Vec<&aop_core::AgentId> = events.iter().map(|e| &e.subject).collect();
        let arrived: Vec<bool> = events.iter().map(|e| e.subject != self.down).collect();
        aop_core::Delivery::per_agent(&subjects, &arrived, Some("partition leader away".into()))
    }
}

#[tokio::test]
async fn a_partial_delivery_keeps_only_the_undelivered_agents_events_for_later() {
    use aop_core::Outbox;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(aop_store_sqlite::SqliteStore::open_dir(dir.path()).unwrap());
    let agents = aop_core::AgentService::new(store.clone(), Arc::new(aop_core::SystemClock), "m");
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let created = agents
            .create(aop_core::CreateAgent {
                name: name.into(),
                instructions: "x".into(),
                ..aop_core::CreateAgent::default()
            })
            .await
            .unwrap();
        ids.push(created.agent.agent_id);
    }
    let before = store.pending(100).await.unwrap();
    let of = |id: &aop_core::AgentId| before.iter().filter(|e| &e.subject == id).count();
    assert!(of(&ids[0]) >= 1 && of(&ids[1]) >= 1);
    let relay = aop_runtime::relay::OutboxRelay::new(
        store.clone(),
        Arc::new(OnePartitionDown {
            down: ids[0].clone(),
        }),
        Arc::new(tokio::sync::Notify::new()),
    );
    let relayed = relay.drain().await.unwrap();
    assert_eq!(relayed, of(&ids[1]), "the other agent's events went out");
    let left = store.pending(100).await.unwrap();
    assert_eq!(left.len(), of(&ids[0]));
    assert!(
        left.iter().all(|e| e.subject == ids[0]),
        "only the refused agent's events wait, to be sent again in order"
    );
}
