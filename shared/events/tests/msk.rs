//! MSK event-source batches through the event processor on the embedded store: idempotent
//! redelivery, poison records to the dead-letter topic (real broker), transient failures
//! reported in `batchItemFailures` with the rest of their partition.

use aop_test_support::{Service, service};
use std::sync::Arc;
use std::time::Duration;

use aop_core::services::feedback::{MetricsQuery, SubmitFeedback};
use aop_core::{
    AgentId, AgentService, CreateAgent, DomainEvent, FeedbackService, FeedbackStore,
    FitnessHandler, Outbox, SystemClock,
};
use aop_events::kafka::{ClientSettings, KafkaDeadLetters, TopicSpec, apply_topics};
use aop_events::msk::{BatchResponse, process_batch};
use aop_events::{CloudEvent, Topics};
use aop_store_sqlite::SqliteStore;
use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

struct World {
    store: Arc<SqliteStore>,
    agent: AgentId,
    feedback: FeedbackService,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
    let agents = AgentService::new(store.clone(), Arc::new(SystemClock), "m");
    let agent = agents
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
    World {
        store,
        agent,
        feedback,
        _dir: dir,
    }
}

impl World {
    async fn rate(&self, values: &[f64]) -> Vec<DomainEvent> {
        for v in values {
            self.feedback
                .submit(SubmitFeedback {
                    caller: None,
                    agent_id: self.agent.clone(),
                    session_id: None,
                    interaction_id: None,
                    ratings: [("helpfulness".to_owned(), *v)].into_iter().collect(),
                    scale: None,
                    comments: None,
                    categories: Vec::new(),
                    user_id: None,
                })
                .await
                .unwrap();
        }
        let events: Vec<DomainEvent> = self
            .store
            .pending(1_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.event_type() == aop_core::EventType::FeedbackSubmitted)
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        self.store.mark_published(&ids).await.unwrap();
        events
    }

    fn processor(&self) -> FitnessHandler {
        let store: Arc<dyn FeedbackStore> = self.store.clone();
        FitnessHandler::new(store)
    }

    async fn helpfulness(&self) -> (u64, f64, f64) {
        let report = self
            .feedback
            .metrics(MetricsQuery {
                agent_id: self.agent.clone(),
                version: None,
                metric: Some("helpfulness".into()),
                from: None,
                to: None,
            })
            .await
            .unwrap();
        report
            .metrics
            .first()
            .map_or((0, 0.0, 0.0), |m| (m.count, m.mean, m.variance))
    }
}

/// An MSK event as the event source sends it: base64 keys and values, byte-array headers.
fn msk_event(topic: &str, records: &[(i64, i64, Vec<u8>, &str)]) -> KafkaEvent {
    let mut by_partition: serde_json::Map<String, Value> = serde_json::Map::new();
    for (partition, offset, value, key) in records {
        let header: Vec<i8> = b"feedback.submitted".iter().map(|b| *b as i8).collect();
        let record = json!({
            "topic": topic, "partition": partition, "offset": offset,
            "timestamp": 1_795_759_200_000i64, "timestampType": "CREATE_TIME",
            "key": STANDARD.encode(key), "value": STANDARD.encode(value),
            "headers": [{"ce_type": header}]
        });
        by_partition
            .entry(format!("{topic}-{partition}"))
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(record);
    }
    serde_json::from_value(json!({
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/aop/abc",
        "bootstrapServers": "b-1.aop.kafka.eu-west-1.amazonaws.com:9092",
        "records": by_partition
    }))
    .unwrap()
}

fn encode(e: &DomainEvent) -> Vec<u8> {
    CloudEvent::from_domain(e, None).unwrap().to_bytes()
}

/// A topic of its own on the broker, with its dead-letter topic.
async fn fresh_topic(servers: &str) -> (String, ClientSettings) {
    let topic = format!(
        "t{}.feedback_events",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let settings = ClientSettings::new(servers);
    let spec = |name: String| TopicSpec {
        name,
        partitions: 1,
        replication: 1,
        retention_ms: 3_600_000,
    };
    apply_topics(
        &settings,
        &[spec(topic.clone()), spec(Topics::dead_letter(&topic))],
    )
    .await
    .unwrap();
    (topic, settings)
}

fn unused_dead_letters() -> KafkaDeadLetters {
    // Never written to in these tests: a batch without poison records.
    KafkaDeadLetters::new(&ClientSettings::new("127.0.0.1:1")).unwrap()
}

#[tokio::test]
async fn the_same_batch_twice_changes_nothing() {
    let w = world().await;
    let events = w.rate(&[5.0, 3.0, 4.0, 1.0]).await;
    let records: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| ((i % 2) as i64, i as i64, encode(e), w.agent.as_str()))
        .collect();
    let batch = msk_event("feedback_events", &records);
    let dead = unused_dead_letters();
    let first = process_batch(&batch, &w.processor(), &dead).await;
    assert_eq!(first, BatchResponse::default());
    let once = w.helpfulness().await;
    assert_eq!(once.0, 4);
    let second = process_batch(&batch, &w.processor(), &dead).await;
    assert_eq!(second, BatchResponse::default());
    assert_eq!(w.helpfulness().await, once, "redelivery changes nothing");
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_the_rest_of_its_partition() {
    let w = world().await;
    let events = w.rate(&[5.0, 1.0, 3.0]).await;
    let records: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (0, 10 + i as i64, encode(e), w.agent.as_str()))
        .collect();
    let batch = msk_event("feedback_events", &records);
    w.store.set_busy_timeout(Duration::from_millis(50));
    let blocker = rusqlite::Connection::open(w.store.path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let response = process_batch(&batch, &w.processor(), &unused_dead_letters()).await;
    let failed: Vec<(String, i64)> = response
        .batch_item_failures
        .iter()
        .map(|f| {
            (
                f.item_identifier.partition.clone(),
                f.item_identifier.offset,
            )
        })
        .collect();
    let key = || "feedback_events-0".to_owned();
    assert_eq!(
        failed,
        [(key(), 10), (key(), 11), (key(), 12)],
        "the failed record and all after it"
    );
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(
        wire["batchItemFailures"][0],
        json!({"itemIdentifier": {"partition": "feedback_events-0", "offset": 10}})
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    let retried = process_batch(&batch, &w.processor(), &unused_dead_letters()).await;
    assert_eq!(retried, BatchResponse::default());
    assert_eq!(w.helpfulness().await.0, 3);
}

#[tokio::test]
async fn a_poison_record_goes_to_the_dead_letter_topic() {
    let Some(servers) = service(Service::Kafka) else {
        return;
    };
    let (topic, settings) = fresh_topic(&servers).await;

    let w = world().await;
    let events = w.rate(&[5.0, 1.0]).await;
    let poison = b"{\"this is\": \"not a CloudEvent\"}".to_vec();
    let batch = msk_event(
        &topic,
        &[
            (0, 0, encode(&events[0]), w.agent.as_str()),
            (0, 1, poison.clone(), w.agent.as_str()),
            (0, 2, encode(&events[1]), w.agent.as_str()),
        ],
    );
    let dead = KafkaDeadLetters::new(&settings).unwrap();
    let response = process_batch(&batch, &w.processor(), &dead).await;
    assert_eq!(
        response,
        BatchResponse::default(),
        "the poison record counts as handled"
    );
    assert_eq!(w.helpfulness().await.0, 2, "the other records were applied");

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", format!("dlq-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&Topics::dead_letter(&topic)]).unwrap();
    let letter = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the dead letter arrives")
        .unwrap();
    assert_eq!(
        letter.payload().unwrap(),
        poison.as_slice(),
        "the original value, unchanged"
    );
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    };
    assert!(
        header("aop_error").unwrap().contains("not a CloudEvent"),
        "{:?}",
        header("aop_error")
    );
    assert_eq!(header("aop_attempts").as_deref(), Some("1"));
    assert_eq!(header("aop_source_offset").as_deref(), Some("1"));
    consumer.unsubscribe();
}

/// Keeps the dead letters it is given.
#[derive(Default)]
struct KeptLetters(std::sync::Mutex<Vec<aop_events::msk::DeadLetter>>);

#[async_trait::async_trait]
impl aop_events::msk::DeadLetters for KeptLetters {
    async fn send(&self, letter: &aop_events::msk::DeadLetter) -> Result<(), String> {
        self.0.lock().unwrap().push(letter.clone());
        Ok(())
    }
}

impl World {
    /// A completed turn whose answer is 1 MB, recorded with its event; the event as the relay
    /// would publish it (without its data).
    async fn huge_turn(&self) -> Vec<u8> {
        use aop_core::SessionStore;
        let mut interaction = aop_core::samples::interaction(&self.agent, 1);
        interaction.output = Some("x".repeat(1_000_000));
        let event = DomainEvent::new(
            &self.agent,
            interaction.created_at,
            aop_core::events::payload::InteractionCompleted {
                interaction: interaction.clone(),
            },
        );
        self.store
            .record_turn(&interaction, &[], std::slice::from_ref(&event))
            .await
            .unwrap();
        let (value, truncated) = aop_events::kafka::record_value(&event);
        assert!(truncated, "1 MB does not fit a record");
        assert!(value.len() < 2_000);
        value
    }

    async fn latency_count(&self) -> u64 {
        let report = self
            .feedback
            .metrics(MetricsQuery {
                agent_id: self.agent.clone(),
                version: None,
                metric: Some("interaction.latency_ms".into()),
                from: None,
                to: None,
            })
            .await
            .unwrap();
        report.metrics.first().map_or(0, |m| m.count)
    }
}

#[tokio::test]
async fn an_event_over_the_record_limit_is_applied_from_the_store() {
    let w = world().await;
    let value = w.huge_turn().await;
    let batch = msk_event("agent_events", &[(0, 7, value, w.agent.as_str())]);
    let letters = KeptLetters::default();

    // Without a way to read it back, it is dead-lettered, saying why.
    let response = process_batch(&batch, &w.processor(), &letters).await;
    assert_eq!(response, BatchResponse::default());
    let kept = letters.0.lock().unwrap().clone();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].error.contains("travelled without its data"),
        "{}",
        kept[0].error
    );
    assert_eq!(w.latency_count().await, 0);

    // The processor reads the interaction back by the id the record kept, and applies it once.
    let processor = w.processor().with_sessions(w.store.clone());
    let response = process_batch(&batch, &processor, &letters).await;
    assert_eq!(response, BatchResponse::default());
    assert_eq!(
        letters.0.lock().unwrap().len(),
        1,
        "nothing more dead-lettered"
    );
    assert_eq!(w.latency_count().await, 1);
    process_batch(&batch, &processor, &letters).await;
    assert_eq!(w.latency_count().await, 1, "redelivery changes nothing");
}

#[tokio::test]
async fn a_store_that_cannot_read_an_event_back_now_gets_it_again_in_order() {
    let w = world().await;
    let value = w.huge_turn().await;
    let after = w.rate(&[4.0]).await;
    let batch = msk_event(
        "agent_events",
        &[
            (0, 20, value, w.agent.as_str()),
            (0, 21, encode(&after[0]), w.agent.as_str()),
        ],
    );
    let letters = KeptLetters::default();
    let processor = w.processor().with_sessions(w.store.clone());
    w.store.set_busy_timeout(Duration::from_millis(50));
    let blocker = rusqlite::Connection::open(w.store.path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let response = process_batch(&batch, &processor, &letters).await;
    let offsets: Vec<i64> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.offset)
        .collect();
    assert_eq!(
        offsets,
        [20, 21],
        "the unreadable record and the one after it"
    );
    assert!(letters.0.lock().unwrap().is_empty());
    blocker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        process_batch(&batch, &processor, &letters).await,
        BatchResponse::default()
    );
    assert_eq!(w.latency_count().await, 1);
    assert_eq!(w.helpfulness().await.0, 1);
}

#[tokio::test]
async fn the_processor_trims_the_ledger_to_its_retention_hourly() {
    let w = world().await;
    let events = w.rate(&[5.0, 3.0]).await;
    let batch = |offset: i64, e: &DomainEvent| {
        msk_event(
            "feedback_events",
            &[(0, offset, encode(e), w.agent.as_str())],
        )
    };
    let now = aop_core::Clock::now_ms(&SystemClock);
    let clock = Arc::new(aop_core::clock::ManualClock::at(now));
    let day = 86_400_000;
    let processor = w
        .processor()
        .with_ledger_retention(Duration::from_millis(2 * day as u64), clock.clone());
    let dead = unused_dead_letters();
    process_batch(&batch(0, &events[0]), &processor, &dead).await;
    assert_eq!(w.helpfulness().await.0, 1);

    // Three days on, the entries written so far (at `now`, by the store's clock) are past the
    // retention: the next batch trims them, and a redelivery of the first event counts again.
    clock.set(now + 3 * day);
    process_batch(&batch(1, &events[1]), &processor, &dead).await;
    assert_eq!(w.helpfulness().await.0, 2);
    process_batch(&batch(0, &events[0]), &processor, &dead).await;
    assert_eq!(
        w.helpfulness().await.0,
        3,
        "the entry was forgotten (why the retention must outlast redelivery)"
    );
    // Within the hour nothing is trimmed again: the entry just written guards as before.
    process_batch(&batch(0, &events[0]), &processor, &dead).await;
    assert_eq!(w.helpfulness().await.0, 3);
}

/// On AWS: the store is down for longer than the event source retries a batch, so the event
/// source gives the records up to `<topic>.dlq` (as it writes them there: a JSON letter around
/// each record); once the store is back, `aop events redrive` sends them back and the processor
/// applies every one. Nothing is lost, nothing counted twice.
#[tokio::test]
async fn an_outage_longer_than_the_retries_loses_nothing_after_a_redrive() {
    let Some(servers) = service(Service::Kafka) else {
        return;
    };
    let (topic, settings) = fresh_topic(&servers).await;

    let w = world().await;
    let events = w.rate(&[5.0, 3.0, 4.0]).await;
    let records: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (0, i as i64, encode(e), w.agent.as_str()))
        .collect();
    let batch = msk_event(&topic, &records);
    let letters = KeptLetters::default();

    // The outage: every attempt of the event source fails the whole batch.
    w.store.set_busy_timeout(Duration::from_millis(20));
    let blocker = rusqlite::Connection::open(w.store.path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for _ in 0..3 {
        let response = process_batch(&batch, &w.processor(), &letters).await;
        assert_eq!(response.batch_item_failures.len(), 3, "{response:?}");
    }
    assert!(letters.0.lock().unwrap().is_empty(), "nothing is poison");

    // The event source gives up: one letter per record to the on-failure destination.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .unwrap();
    let source = serde_json::to_value(&batch).unwrap();
    for record in source["records"][format!("{topic}-0")].as_array().unwrap() {
        let mut payload = source.clone();
        payload["records"] = json!({ format!("{topic}-0"): [record] });
        let letter = json!({
            "requestContext": {"requestId": uuid::Uuid::new_v4().to_string(),
                "functionArn": "arn:aws:lambda:eu-west-1:123456789012:function:aop-event-processor",
                "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST"},
            "version": "1.0",
            "timestamp": "2026-12-05T10:16:05.568Z",
            "KafkaBatchInfo": {"batchSize": 1, "eventSourceArn": source["eventSourceArn"],
                "recordInfo": {"offset": record["offset"].to_string()}},
            "payload": payload,
        })
        .to_string();
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&Topics::dead_letter(&topic))
                    .key(w.agent.as_str())
                    .payload(&letter),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // The store is back; the operator re-drives.
    blocker.execute_batch("ROLLBACK").unwrap();
    let sent = aop_events::redrive::redrive(&settings, &topic, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sent, 3);
    let back = aop_test_support::read_topic(&servers, &topic, 3).await;
    let redelivered: Vec<_> = back
        .iter()
        .enumerate()
        .map(|(i, r)| {
            assert_eq!(r.key.as_deref(), Some(w.agent.as_str().as_bytes()));
            (
                0,
                10 + i as i64,
                r.payload.clone().unwrap(),
                w.agent.as_str(),
            )
        })
        .collect();
    let response = process_batch(&msk_event(&topic, &redelivered), &w.processor(), &letters).await;
    assert_eq!(response, BatchResponse::default());
    let (count, mean, _) = w.helpfulness().await;
    assert_eq!(count, 3, "every rating applied");
    assert!((mean - 0.75).abs() < 1e-9, "{mean}: (1 + 0.5 + 0.75) / 3");
    // A second re-drive finds nothing new; a late duplicate would change nothing either.
    assert_eq!(
        aop_events::redrive::redrive(&settings, &topic, Duration::from_secs(30))
            .await
            .unwrap(),
        0
    );
    process_batch(&msk_event(&topic, &redelivered), &w.processor(), &letters).await;
    assert_eq!(w.helpfulness().await.0, 3);
}
