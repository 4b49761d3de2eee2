//! Re-driving dead letters: the records in `<topic>.dlq` go back to `<topic>`, once each, in
//! their order, with their key and the event's own headers (the dead-letter headers stay
//! behind). For records dead-lettered because something outside them was wrong (a store outage
//! longer than the retries, a bug since fixed): handlers apply every event at most once, so a
//! record that had been applied after all changes nothing. The progress is the consumer group
//! `aop-redrive-<topic>`'s committed offsets, so a second run sends only letters written since.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::Topics;
use crate::kafka::{ClientSettings, KafkaContext, KafkaError};

/// The consumer group that remembers how far re-driving `topic` got.
pub fn group(topic: &str) -> String {
    format!("aop-redrive-{topic}")
}

fn unreachable(settings: &ClientSettings) -> impl Fn(rdkafka::error::KafkaError) -> KafkaError {
    let servers = settings.bootstrap_servers.clone();
    move |source| KafkaError::Unreachable {
        servers: servers.clone(),
        source,
    }
}

/// Sends the letters of `<topic>.dlq` written before this call back to `topic`, and returns how
/// many it sent. Letters written while it runs wait for the next run.
///
/// # Errors
/// `Unreachable` when the brokers do not answer within `timeout`; `Topic` when a letter cannot
/// be published (the letters before it stay sent and committed).
pub async fn redrive(
    settings: &ClientSettings,
    topic: &str,
    timeout: Duration,
) -> Result<u64, KafkaError> {
    let dlq = Topics::dead_letter(topic);
    let started = Instant::now();
    let consumer: BaseConsumer<KafkaContext> = settings
        .client_config()
        .set("group.id", group(topic))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create_with_context(settings.context())
        .map_err(|source| KafkaError::Client {
            servers: settings.bootstrap_servers.clone(),
            source,
        })?;
    let producer = settings.reliable_producer()?;
    let metadata = consumer
        .fetch_metadata(Some(&dlq), timeout)
        .map_err(unreachable(settings))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == dlq)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::Topic {
            topic: dlq,
            reason: "does not exist (run `aop topics apply`)".into(),
        });
    }
    // Where each partition ends now, and where the last run stopped.
    let mut listed = TopicPartitionList::new();
    for p in &partitions {
        listed.add_partition(&dlq, *p);
    }
    let committed = consumer
        .committed_offsets(listed.clone(), timeout)
        .map_err(unreachable(settings))?;
    let mut todo: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&dlq, *p, timeout)
            .map_err(unreachable(settings))?;
        let from = match committed.find_partition(&dlq, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if from < high {
            todo.insert(*p, (from, high));
        }
    }
    let mut assignment = TopicPartitionList::new();
    for (p, (from, _)) in &todo {
        assignment
            .add_partition_offset(&dlq, *p, Offset::Offset(*from))
            .map_err(unreachable(settings))?;
    }
    consumer
        .assign(&assignment)
        .map_err(unreachable(settings))?;
    let mut sent = 0u64;
    let mut done = TopicPartitionList::new();
    while !todo.is_empty() {
        if started.elapsed() > timeout {
            commit(&consumer, &done);
            return Err(KafkaError::Topic {
                topic: dlq,
                reason: format!(
                    "re-drive stopped after {} s with letters left",
                    timeout.as_secs()
                ),
            });
        }
        let Some(received) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match received {
            Ok(message) => message,
            // Nothing more in this partition (the high watermark counted a record that is not
            // delivered, such as a transaction marker).
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                todo.remove(&partition);
                continue;
            }
            Err(e) => return Err(unreachable(settings)(e)),
        };
        let partition = message.partition();
        let Some(&(_, high)) = todo.get(&partition) else {
            continue;
        };
        if message.offset() >= high {
            todo.remove(&partition);
            continue;
        }
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter().filter(|h| !h.key.starts_with("aop_")) {
                headers = headers.insert(header);
            }
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Err((e, _)) = producer.send(record, settings.delivery_timeout).await {
            commit(&consumer, &done);
            return Err(KafkaError::Topic {
                topic: topic.to_owned(),
                reason: format!("cannot publish a re-driven letter: {e}"),
            });
        }
        sent += 1;
        let next = message.offset() + 1;
        done.add_partition_offset(&dlq, partition, Offset::Offset(next))
            .map_err(unreachable(settings))?;
        if next >= high {
            todo.remove(&partition);
        }
    }
    commit(&consumer, &done);
    Ok(sent)
}

fn commit(consumer: &BaseConsumer<KafkaContext>, done: &TopicPartitionList) {
    if done.count() == 0 {
        return;
    }
    if let Err(e) = consumer.commit(done, CommitMode::Sync) {
        // The letters are sent; the next run sends them again, which the handlers absorb.
        tracing::warn!(error = %e, "cannot record how far the re-drive got");
    }
}
