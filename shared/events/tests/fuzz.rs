//! Fuzz tests of what the event processor decodes from outside: CloudEvents envelopes and MSK
//! records. Inputs are the committed corpus (`tests/corpus/cloudevent`: events the platform
//! writes) and its mutations; a record is applied or dead-lettered, never retried forever and
//! never a panic. `AOP_UPDATE_CORPUS=1 cargo test -p aop-events --test fuzz` writes the corpus
//! again from a real store.

use std::sync::{Arc, Mutex};

use aop_core::services::feedback::SubmitFeedback;
use aop_core::{
    AgentService, CreateAgent, DomainEvent, EventHandler, EventType, FeedbackService, HandleError,
    Handled, Outbox, SystemClock,
};
use aop_events::CloudEvent;
use aop_events::msk::{DeadLetter, DeadLetters, process_batch};
use aop_store_sqlite::SqliteStore;
use aop_test_support::fuzz;
use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde_json::json;

/// The events a small session of the platform writes, as record values.
async fn written_events() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let agents = AgentService::new(store.clone(), Arc::new(SystemClock), "m");
    let agent = agents
        .create(CreateAgent {
            name: "fuzzed".into(),
            instructions: "Answer.".into(),
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
    feedback
        .submit(SubmitFeedback {
            caller: None,
            agent_id: agent.clone(),
            session_id: None,
            interaction_id: None,
            ratings: [
                ("helpfulness".to_owned(), 4.0),
                ("accuracy".to_owned(), 2.0),
            ]
            .into_iter()
            .collect(),
            scale: None,
            comments: Some("Clear, but wrong about the refund window.".into()),
            categories: vec!["accuracy".into()],
            user_id: Some("user-7".into()),
        })
        .await
        .unwrap();
    store
        .pending(100)
        .await
        .unwrap()
        .iter()
        .map(|e| CloudEvent::from_domain(e, None).unwrap().to_bytes())
        .collect()
}

#[tokio::test]
async fn the_corpus_is_events_the_platform_writes() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus/cloudevent");
    if std::env::var_os("AOP_UPDATE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, event) in written_events().await.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_slice(event).unwrap();
            let name = value["type"].as_str().unwrap();
            std::fs::write(dir.join(format!("{i:02}-{name}.json")), event).unwrap();
        }
    }
    let corpus = fuzz::corpus("cloudevent");
    let types: Vec<EventType> = corpus
        .iter()
        .map(|seed| {
            CloudEvent::decode(seed)
                .expect("every seed decodes")
                .event_type()
        })
        .collect();
    assert!(types.contains(&EventType::FeedbackSubmitted), "{types:?}");
    assert!(types.contains(&EventType::AgentCreated), "{types:?}");
}

/// Counts what it is given; applies everything.
#[derive(Default)]
struct Applied(Mutex<Vec<DomainEvent>>);

#[async_trait::async_trait]
impl EventHandler for Applied {
    fn name(&self) -> &'static str {
        "fuzz"
    }
    fn wants(&self, _: EventType) -> bool {
        true
    }
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(Handled::Applied)
    }
}

#[derive(Default)]
struct Letters(Mutex<Vec<DeadLetter>>);

#[async_trait::async_trait]
impl DeadLetters for Letters {
    async fn send(&self, letter: &DeadLetter) -> Result<(), String> {
        self.0.lock().unwrap().push(letter.clone());
        Ok(())
    }
}

fn msk_batch(value: &[u8]) -> KafkaEvent {
    serde_json::from_value(json!({
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/aop/abc",
        "bootstrapServers": "b-1.aop.kafka.eu-west-1.amazonaws.com:9092",
        "records": {"feedback_events-0": [{
            "topic": "feedback_events", "partition": 0, "offset": 7,
            "timestamp": 1_795_759_200_000i64, "timestampType": "CREATE_TIME",
            "key": STANDARD.encode(b"agt_1"), "value": STANDARD.encode(value),
            "headers": []
        }]}
    }))
    .unwrap()
}

proptest! {
    #![proptest_config(fuzz::config())]

    /// An envelope decodes to an event that encodes back to itself, or is refused saying why.
    #[test]
    fn cloud_events_decode_to_themselves_or_say_why(input in fuzz::inputs(fuzz::corpus("cloudevent"))) {
        match CloudEvent::decode(&input) {
            Ok(event) => {
                let again = CloudEvent::decode(&CloudEvent::from_domain(&event, None).unwrap().to_bytes());
                prop_assert_eq!(again.ok(), Some(event));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// An MSK record is applied or goes to the dead letters; the batch never asks for it again.
    #[test]
    fn msk_records_are_applied_or_dead_lettered(input in fuzz::inputs(fuzz::corpus("cloudevent"))) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (applied, letters) = (Applied::default(), Letters::default());
        let response = runtime.block_on(process_batch(&msk_batch(&input), &applied, &letters));
        prop_assert!(response.batch_item_failures.is_empty());
        let (applied, letters) = (applied.0.into_inner().unwrap(), letters.0.into_inner().unwrap());
        prop_assert_eq!(applied.len() + letters.len(), 1);
        if let Some(letter) = letters.first() {
            prop_assert_eq!(&letter.value, &input);
            prop_assert!(!letter.error.is_empty());
        }
    }
}
