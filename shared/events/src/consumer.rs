//! Local consumers: with Kafka configured, `aop serve` reads each handler's topics in its consumer
//! group and hands each batch to [`process_batch`](crate::msk::process_batch), the code path the
//! MSK event source uses on Lambda. Offsets are committed after a batch is handled; records to
//! retry are sought back to, so they come again in order.

use std::collections::BTreeMap;
use std::time::Duration;

use aop_core::EventHandler;
use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::kafka::{ClientSettings, KafkaContext, KafkaError};
use crate::msk::{BatchStats, DeadLetters, process_batch_counted};

/// Records per batch, as the event source's batch size.
const BATCH: usize = 500;
/// How long a batch waits to fill once it has a first record.
const WINDOW: Duration = Duration::from_millis(20);
/// Pause before records that failed transiently come again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The message as the MSK event source would present it.
fn as_record(m: &BorrowedMessage<'_>) -> serde_json::Value {
    let headers: Vec<serde_json::Value> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let bytes: Vec<i8> = h
                        .value
                        .unwrap_or_default()
                        .iter()
                        .map(|b| *b as i8)
                        .collect();
                    serde_json::json!({ h.key: bytes })
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp": m.timestamp().to_millis().unwrap_or(0),
        "timestampType": "CREATE_TIME",
        "key": m.key().map(|k| STANDARD.encode(k)),
        "value": m.payload().map(|v| STANDARD.encode(v)),
        "headers": headers,
    })
}

/// Consumes `topics` in `group` until `shutdown`, then leaves the group cleanly.
///
/// # Errors
/// `Client` when the consumer cannot be created or subscribe.
pub async fn run(
    settings: &ClientSettings,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    dead: &dyn DeadLetters,
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    run_observed(settings, group, topics, handler, dead, &|_| {}, shutdown).await
}

/// As [`run`], handing the counts of every batch to `observe` (for metrics).
///
/// # Errors
/// As [`run`].
pub async fn run_observed(
    settings: &ClientSettings,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    dead: &dyn DeadLetters,
    observe: &(dyn Fn(&BatchStats) + Send + Sync),
    shutdown: CancellationToken,
) -> Result<(), KafkaError> {
    // A consumer that could not rewind for a retry is replaced: the new one resumes from the
    // committed offsets, which already point at the records to retry.
    while consume(settings, group, topics, handler, dead, observe, &shutdown).await? {
        tracing::warn!(
            group,
            "restarting the event consumer to retry from committed offsets"
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Ok(())
}

/// One consumer's life. Returns `true` when it must be replaced, `false` at shutdown.
async fn consume(
    settings: &ClientSettings,
    group: &str,
    topics: &[&str],
    handler: &dyn EventHandler,
    dead: &dyn DeadLetters,
    observe: &(dyn Fn(&BatchStats) + Send + Sync),
    shutdown: &CancellationToken,
) -> Result<bool, KafkaError> {
    let mut restart = false;
    let client_error = |source| KafkaError::Client {
        servers: settings.bootstrap_servers.clone(),
        source,
    };
    // With MSK IAM the consumer asks for its token when polled: the first recv() does that.
    let consumer: StreamConsumer<KafkaContext> = settings.create(
        settings
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000"),
    )?;
    consumer.subscribe(topics).map_err(client_error)?;
    tracing::info!(group, ?topics, "event consumer started");
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut records: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        let mut next_offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut add = |m: &BorrowedMessage<'_>| {
            records
                .entry(format!("{}-{}", m.topic(), m.partition()))
                .or_default()
                .push(as_record(m));
            next_offsets.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
        };
        add(&first);
        let mut count = 1;
        while count < BATCH {
            match tokio::time::timeout(WINDOW, consumer.recv()).await {
                Ok(Ok(m)) => {
                    add(&m);
                    count += 1;
                }
                _ => break,
            }
        }
        let event: KafkaEvent = match serde_json::from_value(serde_json::json!({
            "eventSource": "aop:local", "records": records
        })) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a batch from consumed records");
                continue;
            }
        };
        let (response, stats) = process_batch_counted(&event, handler, dead).await;
        observe(&stats);
        let mut retry: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for failure in &response.batch_item_failures {
            let id = &failure.item_identifier;
            // The failure names its topic-partition key exactly as the batch did.
            if let Some((topic, partition)) = next_offsets
                .keys()
                .find(|(t, p)| format!("{t}-{p}") == id.partition)
            {
                let first_failed = retry
                    .entry((topic.clone(), *partition))
                    .or_insert(id.offset);
                *first_failed = (*first_failed).min(id.offset);
            }
        }
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), next) in &next_offsets {
            let offset = retry
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(*next);
            let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(offset));
        }
        if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
            // Uncommitted offsets only mean the batch may come again; handlers are idempotent.
            tracing::warn!(error = %e, "cannot commit offsets; the batch may come again");
        }
        for ((topic, partition), offset) in &retry {
            if let Err(e) = consumer.seek(
                topic,
                *partition,
                Offset::Offset(*offset),
                Duration::from_secs(5),
            ) {
                tracing::warn!(error = %e, topic, partition, "cannot seek back for a retry");
                restart = true;
            }
        }
        if restart {
            break;
        }
        if !retry.is_empty() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    consumer.unsubscribe();
    tracing::info!(group, "event consumer stopped");
    Ok(restart)
}
