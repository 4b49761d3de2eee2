//! Runs the real `evolution-worker` binary against the Lambda Runtime API emulator with MSK
//! event-source batches of `evolution_events`: a started run takes its iteration from the model
//! once, a request for a run that does not exist is acknowledged, and records that can never
//! be applied go to `<topic>.dlq` (`AOP_TEST_KAFKA`) or, with no broker to write them to, are
//! delivered again.

use std::sync::Arc;

use aop_core::events::payload::EvolutionGenerationRequested;
use aop_core::evolution::{EvolutionId, EvolutionStatus};
use aop_core::principal::Principal;
use aop_core::services::evolution::{AddEvalCases, InitializeEvolution, NewEvalCase};
use aop_core::services::proposals::ReviewRules;
use aop_core::{
    AgentId, AgentService, Clock, CreateAgent, DeploymentService, DomainEvent, EventData,
    EventType, EvolutionRules, EvolutionService, Outbox, ProposalService, SystemClock,
};
use aop_events::CloudEvent;
use aop_store_sqlite::SqliteStore;
use aop_test_support::{Service, service};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lambda_emulator::LambdaEmulator;
use openai_test_server::{Reply, TestLlm};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/msk_batch.json");
const KEY: &str = "sk-evolution-worker-tests";
/// How long a test waits for a line of the function's output to reach the emulator.
const LOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The fixture's batch with one record per value, in offset order on partition 0 of `topic`.
fn batch(topic: &str, key: &str, values: &[Vec<u8>]) -> Value {
    let mut batch: Value = serde_json::from_str(FIXTURE).unwrap();
    let template = batch["records"]["evolution_events-0"][0].clone();
    let records: Vec<Value> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let mut record = template.clone();
            record["topic"] = json!(topic);
            record["offset"] = json!(42 + i as i64);
            record["key"] = json!(STANDARD.encode(key));
            record["value"] = json!(STANDARD.encode(value));
            record
        })
        .collect();
    batch["records"] = json!({ format!("{topic}-0"): records });
    batch
}

fn record_value(event: &DomainEvent) -> Vec<u8> {
    CloudEvent::from_domain(event, None).unwrap().to_bytes()
}

/// A request for an iteration of a run the store has never seen.
fn unknown_request() -> DomainEvent {
    DomainEvent::new(
        &AgentId::generate(),
        SystemClock.now_ms(),
        EvolutionGenerationRequested {
            evolution_id: EvolutionId::generate(),
            iteration: 0,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_an_unknown_evolution_is_acknowledged_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let request = unknown_request();
    let batch = batch(
        "evolution_events",
        request.subject.as_str(),
        &[record_value(&request)],
    );
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_evolution-worker"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            // Dead letters would go here; this batch has none.
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
        ],
    )
    .await;
    for _ in 0..2 {
        let answer = lambda.invoke(batch.clone()).await.unwrap();
        assert_eq!(answer, json!({"batchItemFailures": []}));
    }
    let logs = lambda
        .output_containing(r#""aop_events_consumed_total":1.0"#, LOG_WAIT)
        .await;
    assert!(
        logs.contains("an iteration was requested for an unknown evolution"),
        "{logs}"
    );
    assert!(
        logs.contains(r#""aop_events_consumed_total":1.0"#)
            && logs.contains(r#""aop_events_dead_lettered_total":0.0"#),
        "counted as consumed, not dead-lettered: {logs}"
    );
    assert!(
        store.pending(100).await.unwrap().is_empty(),
        "nothing was asked for"
    );
}

fn evolutions(store: &Arc<SqliteStore>) -> (AgentService, EvolutionService) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let agents = AgentService::new(store.clone(), clock.clone(), "gpt-4o-mini");
    let deployments = DeploymentService::new(
        store.clone(),
        store.clone(),
        clock.clone(),
        aop_core::deployment::CanaryPolicy::default(),
    );
    let proposals = ProposalService::new(
        agents.clone(),
        deployments.clone(),
        store.clone(),
        clock.clone(),
        ReviewRules::default(),
    );
    // Starting a run calls no model; the function's worker brings its own.
    let service = EvolutionService::new(
        agents.clone(),
        deployments,
        proposals,
        store.clone(),
        Arc::new(aop_core::llm::UnconfiguredModel),
        aop_core::pricing::PriceTable::default(),
        clock,
        EvolutionRules::default(),
    );
    (agents, service)
}

fn requests_in(events: &[DomainEvent]) -> Vec<(EvolutionId, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::EvolutionGenerationRequested(r) => {
                Some((r.evolution_id.clone(), r.iteration))
            }
            _ => None,
        })
        .collect()
}

/// The function calls the model it is configured with (`OPENAI_BASE_URL`, the key) to score the
/// seed on the validation cases, saves the iteration and asks for the next; the same request
/// delivered again calls the model no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_run_takes_its_iteration_from_the_model_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let (agents, service) = evolutions(&store);
    let agent_id = agents
        .create(CreateAgent {
            name: "adder".into(),
            instructions: "Add the two numbers.".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
        .agent
        .agent_id;
    let cases: Vec<NewEvalCase> = (1..=5)
        .map(|i| {
            serde_json::from_value(json!({
                "input": format!("What is {i} plus {i}?"),
                "checks": [{"kind": "equals", "value": (2 * i).to_string()}],
            }))
            .unwrap()
        })
        .collect();
    service
        .add_eval_cases(AddEvalCases {
            agent_id: agent_id.clone(),
            cases,
        })
        .await
        .unwrap();
    let start: InitializeEvolution = serde_json::from_value(json!({
        "agent_id": agent_id,
        "valset_size": 4,
        "minibatch_size": 2,
        "budget": {"max_metric_calls": 60},
    }))
    .unwrap();
    let run = service
        .initialize(start, &Principal::named("alice"))
        .await
        .unwrap();
    let pending = store.pending(100).await.unwrap();
    let request = pending
        .iter()
        .find(|e| e.event_type() == EventType::EvolutionGenerationRequested)
        .expect("the run asks for its first iteration");
    let batch = batch(
        "evolution_events",
        agent_id.as_str(),
        &[record_value(request)],
    );

    let llm = TestLlm::start().await;
    llm.respond_with(|_| Some(Reply::text("4")));
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_evolution-worker"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
            ("OPENAI_BASE_URL", llm.base_url()),
            ("OPENAI_API_KEY", KEY.to_owned()),
            ("AOP_EVOLUTION_CALL_TIMEOUT_SECONDS", "5".to_owned()),
        ],
    )
    .await;
    let answer = lambda.invoke(batch.clone()).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));

    let calls = llm.requests();
    assert_eq!(calls.len(), 4, "the seed scored on the 4 validation cases");
    let bearer = format!("Bearer {KEY}");
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(bearer.as_str()))
    );
    let after = service.run(&run.evolution_id).await.unwrap();
    assert_eq!(after.status, EvolutionStatus::Running);
    assert_eq!(after.iteration, 1);
    assert!(after.seed_score.is_some(), "the seed was scored");
    let asked = requests_in(&store.pending(100).await.unwrap());
    assert!(
        asked.contains(&(run.evolution_id.clone(), 1)),
        "the next iteration is asked for: {asked:?}"
    );

    let again = lambda.invoke(batch).await.unwrap();
    assert_eq!(again, json!({"batchItemFailures": []}));
    assert_eq!(
        llm.requests().len(),
        4,
        "a redelivered request calls no model"
    );
    assert_eq!(service.run(&run.evolution_id).await.unwrap().iteration, 1);
}

/// Two records no retry can fix (not a CloudEvent; a request without its iteration) reach
/// `<topic>.dlq` unchanged, in order, and are counted for the dead-letter alarm; the batch
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic() {
    let Some(servers) = service(Service::Kafka) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = format!(
        "evo{}.evolution_events",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut incomplete =
        serde_json::to_value(CloudEvent::from_domain(&unknown_request(), None).unwrap()).unwrap();
    incomplete["data"]
        .as_object_mut()
        .unwrap()
        .remove("iteration");
    let poison = [
        b"not a cloud event".to_vec(),
        serde_json::to_vec(&incomplete).unwrap(),
    ];
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_evolution-worker"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", servers.clone()),
            ("KAFKA_TOPIC_EVOLUTION_EVENTS", topic.clone()),
            ("LOG_LEVEL", "info".to_owned()),
        ],
    )
    .await;
    let answer = lambda
        .invoke(batch(&topic, "agt_poison", &poison))
        .await
        .unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));

    let dead = aop_test_support::read_topic(&servers, &format!("{topic}.dlq"), 2).await;
    let payloads: Vec<_> = dead.iter().map(|r| r.payload.clone().unwrap()).collect();
    assert_eq!(payloads, poison.to_vec(), "the original values, in order");
    assert!(
        dead.iter()
            .all(|r| r.key.as_deref() == Some(&b"agt_poison"[..])),
        "with their keys"
    );
    let logs = lambda
        .output_containing(r#""aop_events_dead_lettered_total":2.0"#, LOG_WAIT)
        .await;
    assert!(
        logs.contains(r#""aop_events_dead_lettered_total":2.0"#),
        "the dead letters are counted for the alarm: {logs}"
    );
}

/// With no broker to take the dead letter, a poison record is not dropped: the response names
/// it, so the event source delivers it again (and, after its retries, to the on-failure
/// destination).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_that_cannot_be_dead_lettered_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let request = unknown_request();
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_evolution-worker"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".to_owned()),
            ("KAFKA_DELIVERY_TIMEOUT_MS", "500".to_owned()),
        ],
    )
    .await;
    let answer = lambda
        .invoke(batch(
            "evolution_events",
            request.subject.as_str(),
            &[b"not a cloud event".to_vec(), record_value(&request)],
        ))
        .await
        .unwrap();
    // The record after it waits too: a partition is applied in order.
    assert_eq!(
        answer,
        json!({"batchItemFailures": [
            {"itemIdentifier": {"partition": "evolution_events-0", "offset": 42}},
            {"itemIdentifier": {"partition": "evolution_events-0", "offset": 43}},
        ]})
    );
    let logs = lambda
        .output_containing(r#""aop_events_failed_total":2.0"#, LOG_WAIT)
        .await;
    assert!(logs.contains(r#""aop_events_failed_total":2.0"#), "{logs}");
}

#[test]
fn without_kafka_configured_the_function_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_evolution-worker"))
        .env_clear()
        .env("AOP_DATA_DIR", dir.path())
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KAFKA_BOOTSTRAP_SERVERS"), "{stderr}");
}
