//! Runs the real `outbox-relay` binary against the Lambda Runtime API emulator with an
//! EventBridge scheduled event: what waits in the outbox reaches its Kafka topic, and the answer
//! says how much was published and how much is left. Needs `AOP_TEST_KAFKA`.

use aop_test_support::{Service, service};
use std::sync::Arc;

use aop_core::{AgentService, CreateAgent, Outbox, SystemClock};
use aop_store_sqlite::SqliteStore;
use lambda_emulator::LambdaEmulator;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/scheduled_event.json");

fn kafka() -> Option<String> {
    service(Service::Kafka)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_publishes_the_outbox_to_kafka() {
    let Some(servers) = kafka() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let agent = AgentService::new(store.clone(), Arc::new(SystemClock), "m")
        .create(CreateAgent {
            name: "relayed".into(),
            instructions: "x".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id;
    let waiting = store.backlog().await.unwrap();
    assert_eq!(waiting, 2, "agent created and its first version");

    let topic = format!(
        "relay{}.agent_events",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_outbox-relay"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", servers.clone()),
            ("KAFKA_TOPIC_AGENT_EVENTS", topic.clone()),
        ],
    )
    .await;
    let event: Value = serde_json::from_str(FIXTURE).unwrap();
    let answer = lambda.invoke(event.clone()).await.unwrap();
    assert_eq!(answer, json!({"published": 2, "backlog": 0}));
    assert_eq!(store.backlog().await.unwrap(), 0);
    let again = lambda.invoke(event).await.unwrap();
    assert_eq!(
        again,
        json!({"published": 0, "backlog": 0}),
        "nothing is published twice"
    );

    let records = aop_test_support::read_topic(&servers, &topic, 2).await;
    let mut types = Vec::new();
    for record in records {
        assert_eq!(record.key.as_deref(), Some(agent.as_str().as_bytes()));
        let body: Value = serde_json::from_slice(&record.payload.unwrap()).unwrap();
        types.push(body["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(types.len(), 2);
    assert!(types[0].ends_with("agent.created"), "{types:?}");
}
