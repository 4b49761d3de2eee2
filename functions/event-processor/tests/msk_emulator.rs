//! Runs the real `event-processor` binary against the Lambda Runtime API emulator with MSK
//! event-source batches (base64 values, headers, several partitions).

use std::sync::Arc;

use aop_core::FeedbackService;
use aop_core::services::feedback::{MetricsQuery, SubmitFeedback};
use aop_core::{AgentService, CreateAgent, EventType, Outbox, SystemClock};
use aop_events::CloudEvent;
use aop_store_sqlite::SqliteStore;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lambda_emulator::LambdaEmulator;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/msk_batch.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msk_batches_are_applied_once_and_answered_with_batch_item_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let agent = AgentService::new(store.clone(), Arc::new(SystemClock), "m")
        .create(CreateAgent {
            name: "rated".into(),
            instructions: "x".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id;
    let feedback = FeedbackService::new(
        store.clone(),
        store.clone(),
        store.clone(),
        Arc::new(SystemClock),
    );
    for v in [5.0, 4.0, 1.0, 2.0] {
        feedback
            .submit(SubmitFeedback {
                caller: None,
                agent_id: agent.clone(),
                session_id: None,
                interaction_id: None,
                ratings: [("helpfulness".to_owned(), v)].into_iter().collect(),
                scale: None,
                comments: None,
                categories: Vec::new(),
                user_id: None,
            })
            .await
            .unwrap();
    }
    let events: Vec<_> = store
        .pending(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type() == EventType::FeedbackSubmitted)
        .collect();

    // The fixture's record, repeated over two partitions with the real events in it.
    let mut batch: Value = serde_json::from_str(FIXTURE).unwrap();
    let template = batch["records"]["feedback_events-0"][0].clone();
    let mut partitions = serde_json::Map::new();
    for (i, event) in events.iter().enumerate() {
        let partition = (i % 2) as i64;
        let mut record = template.clone();
        record["partition"] = json!(partition);
        record["offset"] = json!(100 + i as i64);
        record["key"] = json!(STANDARD.encode(agent.as_str()));
        record["value"] =
            json!(STANDARD.encode(CloudEvent::from_domain(event, None).unwrap().to_bytes()));
        partitions
            .entry(format!("feedback_events-{partition}"))
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(record);
    }
    batch["records"] = Value::Object(partitions);

    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_event-processor"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            // Dead letters would go here; this batch has none.
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
        ],
    )
    .await;
    let metrics = || async {
        feedback
            .metrics(MetricsQuery {
                agent_id: agent.clone(),
                version: None,
                metric: Some("helpfulness".into()),
                from: None,
                to: None,
            })
            .await
            .unwrap()
            .metrics
    };
    let first = lambda.invoke(batch.clone()).await.unwrap();
    assert_eq!(first, json!({"batchItemFailures": []}));
    let once = metrics().await;
    assert_eq!(once[0].count, 4);
    let second = lambda.invoke(batch).await.unwrap();
    assert_eq!(second, json!({"batchItemFailures": []}));
    assert_eq!(metrics().await, once, "a redelivered batch changes nothing");
}

#[test]
fn without_kafka_configured_the_function_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_event-processor"))
        .env_clear()
        .env("AOP_DATA_DIR", dir.path())
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KAFKA_BOOTSTRAP_SERVERS"), "{stderr}");
}

/// The function's schedule trigger: a canary that saw no decision for longer than its timeout is
/// rolled back by the scheduled pass, as the controller would after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_pass_rolls_back_a_canary_past_its_timeout() {
    use aop_core::clock::ManualClock;
    use aop_core::deployment::{CanaryPolicy, CanaryStatus};
    use aop_core::principal::Principal;
    use aop_core::services::deployments::{DeployVersion, StartCanary};
    use aop_core::{AgentStore, Clock, DeploymentService, DeploymentStore, UpdateAgent};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    // Eight days ago: the canary's seven-day timeout has passed.
    let then = SystemClock.now_ms() - 8 * 24 * 3_600_000;
    let clock = Arc::new(ManualClock::at(then));
    let agents = AgentService::new(store.clone(), clock.clone(), "m");
    let id = agents
        .create(CreateAgent {
            name: "idle".into(),
            instructions: "v1".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id;
    agents
        .update(UpdateAgent {
            agent_id: id.clone(),
            expected_version: None,
            instructions: Some("v2".into()),
            model: None,
            parameters: None,
            capabilities: None,
            knowledge_sources: None,
            change_summary: None,
            created_by: None,
        })
        .await
        .unwrap();
    let deployments = DeploymentService::new(
        store.clone(),
        store.clone(),
        clock.clone(),
        CanaryPolicy::default(),
    );
    let alice = Principal::named("alice");
    deployments
        .deploy(
            DeployVersion {
                agent_id: id.clone(),
                version: 1,
                alias: None,
                reason: None,
            },
            &alice,
        )
        .await
        .unwrap();
    let canary = deployments
        .start_canary(
            StartCanary {
                agent_id: id.clone(),
                version: 2,
                alias: None,
                steps: None,
                policy: None,
                reason: None,
            },
            &alice,
        )
        .await
        .unwrap()
        .canary
        .unwrap();

    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_event-processor"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
        ],
    )
    .await;
    let scheduled = json!({
        "version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-12-05T00:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/aop-deployment-checks"],
        "detail": {}
    });
    let answer = lambda.invoke(scheduled.clone()).await.unwrap();
    assert_eq!(
        answer,
        json!({"canaries_decided": 1, "proposals_expired": 0, "evolutions_resumed": 0, "evolutions_started": 0})
    );
    let after = store.canary(&canary.canary_id).await.unwrap().unwrap();
    assert_eq!(after.status, CanaryStatus::RolledBack);
    assert!(
        after
            .last_decision
            .unwrap()
            .reason
            .starts_with("inconclusive"),
        "rolled back for want of a decision"
    );
    let agent = store.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(agent.aliases[0].routes.len(), 1);
    assert_eq!(agent.aliases[0].routes[0].version, 1);
    let again = lambda.invoke(scheduled).await.unwrap();
    assert_eq!(
        again,
        json!({"canaries_decided": 0, "proposals_expired": 0, "evolutions_resumed": 0, "evolutions_started": 0}),
        "nothing is decided twice"
    );
}
