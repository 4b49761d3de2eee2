//! Batches from the Amazon MSK event source: records decoded (base64 value and headers),
//! applied per partition in offset order, with partial batch failures.
//!
//! A record that cannot be decoded, or whose event is unusable, goes to the dead-letter topic
//! with its error and counts as handled. A record that fails transiently is reported in
//! `batchItemFailures` together with the rest of its partition, so the event source redelivers
//! them in order. Handlers are idempotent, so redelivery changes nothing that was applied.

use std::collections::BTreeMap;

use aop_core::{DomainEvent, EventHandler, EventStub, HandleError};
use async_trait::async_trait;
use aws_lambda_events::event::kafka::{KafkaEvent, KafkaRecord};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::{CloudEvent, Record};

/// A record the event source should deliver again: `partition` is the batch's topic-partition
/// key (`<topic>-<partition>`), as the event source names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordId {
    pub partition: String,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub item_identifier: RecordId,
}

/// The function's answer to the event source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResponse {
    pub batch_item_failures: Vec<ItemFailure>,
}

/// A record that will never be applied, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The original record value, unchanged.
    pub value: Vec<u8>,
    pub error: String,
    pub attempts: u32,
}

/// Where dead letters go: `<topic>.dlq`.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// # Errors
    /// Why the letter could not be stored; the record is then retried instead.
    async fn send(&self, letter: &DeadLetter) -> Result<(), String>;
}

/// A base64 field of an MSK event record (key or value), decoded.
pub(crate) fn decode_b64(field: Option<&String>) -> Result<Option<Vec<u8>>, String> {
    field
        .map(|text| {
            STANDARD
                .decode(text)
                .map_err(|e| format!("not base64: {e}"))
        })
        .transpose()
}

/// What became of one record.
enum Fate {
    Done,
    DeadLettered,
    Retry,
}

/// How many records of each topic a batch applied, left for redelivery and dead-lettered: what
/// the caller reports as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// `topic -> (consumed, failed, dead_lettered)`
    pub by_topic: BTreeMap<String, (u64, u64, u64)>,
}

impl BatchStats {
    fn count(&mut self, topic: &str, fate: &Fate) {
        let entry = self.by_topic.entry(topic.to_owned()).or_default();
        match fate {
            Fate::Done => entry.0 += 1,
            Fate::Retry => entry.1 += 1,
            Fate::DeadLettered => entry.2 += 1,
        }
    }

    /// Records dead-lettered in the batch, every topic together.
    pub fn dead_lettered(&self) -> u64 {
        self.by_topic.values().map(|(_, _, d)| d).sum()
    }
}

/// One record of a batch: its event, or why it has none.
struct Decoded<'a> {
    record: &'a KafkaRecord,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    event: Result<DomainEvent, String>,
    /// An event that travelled without its data, until a handler reads it back.
    stub: Option<EventStub>,
}

fn decode(record: &KafkaRecord) -> Decoded<'_> {
    let key = decode_b64(record.key.as_ref()).ok().flatten();
    let mut stub = None;
    let (value, event) = match decode_b64(record.value.as_ref()) {
        Err(e) => (None, Err(format!("record value {e}"))),
        Ok(None) => (None, Err("record has no value".to_owned())),
        Ok(Some(bytes)) => {
            let event = match CloudEvent::decode_record(&bytes) {
                Ok(Record::Event(event)) => Ok(*event),
                Ok(Record::Stub(s)) => {
                    stub = Some(s);
                    Err(
                        "it travelled without its data (over the record size limit) and no \
                         handler can read it back from the store"
                            .to_owned(),
                    )
                }
                Err(e) => Err(e.to_string()),
            };
            (Some(bytes), event)
        }
    };
    Decoded {
        record,
        key,
        value,
        event,
        stub,
    }
}

/// Reads back the data of the batch's events that travelled without it. Returns the position
/// of the first one the store could not read for now: it and the records after it come again.
async fn recall(decoded: &mut [Decoded<'_>], handler: &dyn EventHandler) -> Option<usize> {
    for (at, d) in decoded.iter_mut().enumerate() {
        let Some(stub) = d.stub.take() else { continue };
        match handler.recall(&stub).await {
            Ok(Some(event)) => d.event = Ok(event),
            Ok(None) => {}
            Err(e @ HandleError::Poison { .. }) => d.event = Err(e.to_string()),
            Err(e @ HandleError::Transient { .. }) => {
                tracing::warn!(error = %e, offset = d.record.offset, "cannot read an event's data back now; it will be retried");
                return Some(at);
            }
        }
    }
    None
}

/// Sends a record that will never be applied to the dead-letter topic; it is retried when the
/// letter cannot be written.
async fn dead_letter(
    topic: &str,
    decoded: &Decoded<'_>,
    error: String,
    dead: &dyn DeadLetters,
) -> Fate {
    let letter = DeadLetter {
        topic: topic.to_owned(),
        partition: decoded.record.partition,
        offset: decoded.record.offset,
        key: decoded.key.clone(),
        value: decoded.value.clone().unwrap_or_default(),
        error,
        attempts: 1,
    };
    match dead.send(&letter).await {
        Ok(()) => {
            tracing::error!(topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "record sent to the dead-letter topic");
            Fate::DeadLettered
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot write the dead-letter topic; the record will be retried");
            Fate::Retry
        }
    }
}

/// Applies a batch and says which records to deliver again.
pub async fn process_batch(
    event: &KafkaEvent,
    handler: &dyn EventHandler,
    dead: &dyn DeadLetters,
) -> BatchResponse {
    process_batch_counted(event, handler, dead).await.0
}

/// As [`process_batch`], also counting what happened to the records of each topic.
pub async fn process_batch_counted(
    event: &KafkaEvent,
    handler: &dyn EventHandler,
    dead: &dyn DeadLetters,
) -> (BatchResponse, BatchStats) {
    let mut stats = BatchStats::default();
    let mut failures = Vec::new();
    for (key, records) in &event.records {
        // One list per topic-partition; apply it in offset order.
        let mut ordered: BTreeMap<i64, &KafkaRecord> = BTreeMap::new();
        for r in records {
            ordered.insert(r.offset, r);
        }
        // The partition's events go to the handler as one batch (one store transaction
        // where the handler can), then each record's fate is settled in offset order.
        let mut decoded: Vec<Decoded<'_>> = ordered.values().map(|r| decode(r)).collect();
        let unreadable = recall(&mut decoded, handler).await.unwrap_or(decoded.len());
        let events: Vec<&DomainEvent> = decoded[..unreadable]
            .iter()
            .filter_map(|d| d.event.as_ref().ok())
            .collect();
        let mut results = handler.handle_batch(&events).await.into_iter();
        let mut retrying = false;
        for (at, d) in decoded.iter().enumerate() {
            retrying |= at == unreadable;
            let id = RecordId {
                partition: key.clone(),
                offset: d.record.offset,
            };
            let topic = d.record.topic.clone().unwrap_or_default();
            let fate = if retrying {
                Fate::Retry
            } else {
                match &d.event {
                    Err(reason) => dead_letter(&topic, d, reason.clone(), dead).await,
                    Ok(_) => match results.next() {
                        Some(Ok(_)) => Fate::Done,
                        Some(Err(e @ HandleError::Poison { .. })) => {
                            dead_letter(&topic, d, e.to_string(), dead).await
                        }
                        Some(Err(e @ HandleError::Transient { .. })) => {
                            tracing::warn!(error = %e, partition = d.record.partition, offset = d.record.offset, "record will be retried");
                            Fate::Retry
                        }
                        // The handler stopped before this event: it comes again.
                        None => Fate::Retry,
                    },
                }
            };
            stats.count(&topic, &fate);
            if let Fate::Retry = fate {
                retrying = true;
                failures.push(ItemFailure {
                    item_identifier: id,
                });
            }
        }
    }
    let response = BatchResponse {
        batch_item_failures: failures,
    };
    (response, stats)
}
