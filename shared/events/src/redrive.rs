//! Re-driving dead letters: the records in `<topic>.dlq` go back to `<topic>`, once each, in
//! their order, with their key and the event's own headers (the dead-letter headers stay
//! behind). Two kinds of letter are there: the processor's own (the original record, with
//! `aop_*` headers saying why), and on AWS the Lambda event source's, written when a batch
//! outlasted its retries: a JSON document whose `payload` is the failed record in the shape of
//! the function's MSK event, base64 key and value; those are unwrapped and the original record is
//! sent. For records dead-lettered because something outside them was wrong (a store outage
//! longer than the retries, a bug since fixed): handlers apply every event at most once, so a
//! record that had been applied after all changes nothing. The progress is the consumer group
//! `aop-redrive-<topic>`'s committed offsets, so a second run sends only letters written since.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::Topics;
use crate::kafka::{ClientSettings, KafkaContext, KafkaError};

/// A record to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a letter in `<topic>.dlq` stands for: the records to send back to `topic`.
///
/// # Errors
/// A letter of the Lambda event source whose records cannot be decoded, naming why.
pub fn unwrap_letter(
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: &[(String, Vec<u8>)],
) -> Result<Vec<Resend>, String> {
    if let Some(records) = event_source_letter(value) {
        let records = records?;
        return records
            .into_iter()
            .filter(|r| r.topic.as_deref().is_none_or(|t| t == topic))
            .map(|r| {
                let decode = |field: Option<&String>, what: &str| {
                    crate::msk::decode_b64(field)
                        .map_err(|e| format!("the letter's record {what} is {e}"))
                };
                Ok(Resend {
                    key: decode(r.key.as_ref(), "key")?,
                    value: decode(r.value.as_ref(), "value")?.unwrap_or_default(),
                    headers: r
                        .headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .map(|(name, bytes)| {
                            (
                                name.clone(),
                                bytes.iter().map(|b| b.to_ne_bytes()[0]).collect(),
                            )
                        })
                        .collect(),
                })
            })
            .collect();
    }
    Ok(vec![Resend {
        key: key.map(<[u8]>::to_vec),
        value: value.to_vec(),
        headers: headers
            .iter()
            .filter(|(name, _)| !name.starts_with("aop_"))
            .cloned()
            .collect(),
    }])
}

/// The records inside a Lambda event source's on-failure letter, or `None` when `value` is not
/// one (a CloudEvent, the processor's own letter).
fn event_source_letter(
    value: &[u8],
) -> Option<Result<Vec<aws_lambda_events::event::kafka::KafkaRecord>, String>> {
    #[derive(serde::Deserialize)]
    struct Letter {
        #[serde(rename = "requestContext")]
        _request_context: serde_json::Value,
        payload: serde_json::Value,
    }
    let letter: Letter = serde_json::from_slice(value).ok()?;
    // S3 destinations carry the payload as a string of JSON; Kafka ones as an object.
    let payload = match letter.payload {
        serde_json::Value::String(text) => serde_json::from_str(&text),
        other => Ok(other),
    };
    Some(
        payload
            .and_then(serde_json::from_value::<aws_lambda_events::event::kafka::KafkaEvent>)
            .map(|event| event.records.into_values().flatten().collect())
            .map_err(|e| {
                format!("a Lambda on-failure letter whose payload is not an MSK event: {e}")
            }),
    )
}

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
    let consumer: BaseConsumer<KafkaContext> = settings.create(
        settings
            .client_config()
            .set("group.id", group(topic))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true"),
    )?;
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
        let headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let resends = match unwrap_letter(
            topic,
            message.key(),
            message.payload().unwrap_or_default(),
            &headers,
        ) {
            Ok(resends) => resends,
            Err(reason) => {
                commit(&consumer, &done);
                return Err(KafkaError::Topic {
                    topic: dlq,
                    reason: format!(
                        "letter at partition {partition} offset {}: {reason}",
                        message.offset()
                    ),
                });
            }
        };
        for resend in &resends {
            let mut headers = OwnedHeaders::new();
            for (name, value) in &resend.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_slice()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(resend.value.as_slice())
                .headers(headers);
            if let Some(key) = &resend.key {
                record = record.key(key.as_slice());
            }
            if let Err((e, _)) = producer.send(record, settings.delivery_timeout).await {
                commit(&consumer, &done);
                return Err(KafkaError::Topic {
                    topic: topic.to_owned(),
                    reason: format!("cannot publish a re-driven letter: {e}"),
                });
            }
            sent += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A letter as the Lambda event source writes it to a Kafka on-failure destination (the
    /// example of AWS's "Record format for a Kafka destination", with our topic and record).
    fn event_source_letter(payload_as_string: bool) -> Vec<u8> {
        let payload = serde_json::json!({
            "bootstrapServers": "b-1.aop.kafka.eu-west-1.amazonaws.com:9098",
            "eventSource": "aws:kafka",
            "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/aop/abc",
            "records": {"feedback_events-2": [{
                "headers": [{"ce_type": [102, 101, 101, 100]}],
                "key": "YWd0XzE=",
                "offset": 100, "partition": 2, "timestamp": 1_749_116_692_330i64,
                "timestampType": "CREATE_TIME", "topic": "feedback_events",
                "value": "eyJzcGVjdmVyc2lvbiI6IjEuMCJ9"
            }]}
        });
        serde_json::to_vec(&serde_json::json!({
            "requestContext": {
                "requestId": "316aa6d0-8154-xmpl-9af7-85d5f4a6bc81",
                "functionArn": "arn:aws:lambda:eu-west-1:123456789012:function:aop-event-processor",
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": 11
            },
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": "2026-12-05T10:16:05.568Z",
            "KafkaBatchInfo": {"batchSize": 1, "payloadSize": 1162,
                "recordInfo": {"offset": "100", "timestamp": "2026-12-05T10:16:04.835Z"}},
            "payload": if payload_as_string { serde_json::Value::from(payload.to_string()) } else { payload }
        }))
        .unwrap()
    }

    #[test]
    fn an_event_source_letter_gives_back_the_record_it_wraps() {
        for as_string in [false, true] {
            let letter = event_source_letter(as_string);
            let resends = unwrap_letter("feedback_events", Some(b"agt_1"), &letter, &[]).unwrap();
            assert_eq!(
                resends,
                [Resend {
                    key: Some(b"agt_1".to_vec()),
                    value: br#"{"specversion":"1.0"}"#.to_vec(),
                    headers: vec![("ce_type".to_owned(), b"feed".to_vec())],
                }]
            );
        }
    }

    #[test]
    fn the_processors_own_letter_goes_back_as_it_is_without_its_dead_letter_headers() {
        let headers = [
            ("ce_type".to_owned(), b"feedback.submitted".to_vec()),
            ("aop_error".to_owned(), b"unusable".to_vec()),
        ];
        let value = br#"{"specversion":"1.0","data":{"requestContext":1}}"#;
        let resends = unwrap_letter("feedback_events", Some(b"agt_1"), value, &headers).unwrap();
        assert_eq!(
            resends,
            [Resend {
                key: Some(b"agt_1".to_vec()),
                value: value.to_vec(),
                headers: vec![headers[0].clone()],
            }]
        );
    }

    #[test]
    fn a_broken_event_source_letter_is_named() {
        let letter = br#"{"requestContext": {}, "payload": {"records": 7}}"#;
        let err = unwrap_letter("feedback_events", None, letter, &[]).unwrap_err();
        assert!(err.contains("payload is not an MSK event"), "{err}");
    }
}
