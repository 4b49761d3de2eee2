//! The transactional outbox as `(:OutboxEvent)` nodes, written in the same transaction as the
//! change that caused them. Event ids are UUID v7, so ordering by id is ordering by creation.

use aop_core::{AgentId, DomainEvent, EventData, EventType, Outbox, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde::Deserialize;

use crate::error::corrupt;
use crate::{Failure, Neo4jStore, Work, column, rows, run};

/// Writes outbox rows built by [`crate::params::event_rows`].
pub(crate) async fn write_events(txn: &mut Txn, events: BoltType) -> Result<(), Failure> {
    if matches!(&events, BoltType::List(list) if list.is_empty()) {
        return Ok(());
    }
    run(txn, query(CREATE_EVENTS).param("rows", events)).await
}

/// Creates outbox events (`$rows` of [`crate::params::event_rows`]).
pub(crate) const CREATE_EVENTS: &str =
    "UNWIND $rows AS e CREATE (n:OutboxEvent {event_id: e.event_id}) SET n += e";

/// An `(:OutboxEvent)` node's properties.
#[derive(Deserialize, Clone)]
pub(crate) struct RawEvent {
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) subject: String,
    pub(crate) time: i64,
    pub(crate) data: String,
    pub(crate) correlation_id: Option<String>,
}

fn decode(raw: RawEvent) -> Result<DomainEvent, StoreError> {
    let event_type =
        EventType::parse(&raw.event_type).ok_or_else(|| corrupt("event type", &raw.event_type))?;
    let data = serde_json::from_str(&raw.data).map_err(|e| corrupt("event data", e))?;
    Ok(DomainEvent {
        subject: AgentId::try_from(raw.subject).map_err(|e| corrupt("event subject", e))?,
        time: raw.time,
        data: EventData::from_json(event_type, data).map_err(|e| corrupt("event data", e))?,
        correlation_id: raw.correlation_id,
        id: raw.event_id,
    })
}

#[async_trait]
impl Outbox for Neo4jStore {
    async fn pending(&self, limit: u32) -> Result<Vec<DomainEvent>, StoreError> {
        let found = self
            .transact("outbox_pending", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (e:OutboxEvent) WITH e ORDER BY e.event_id LIMIT $limit
                     RETURN properties(e) AS event",
                )
                .param("limit", i64::from(limit));
                Box::pin(rows(txn, q))
            })
            .await?;
        let mut events = Vec::with_capacity(found.len());
        for row in &found {
            let raw: RawEvent = column(row, "event", "outbox event")?;
            match decode(raw.clone()) {
                Ok(event) => events.push(event),
                // A node this build cannot read (written by a newer build, say) must not stop
                // the rest: it moves to quarantine, where an operator can look at it.
                Err(e) => self.quarantine(&raw, &e.to_string()).await?,
            }
        }
        Ok(events)
    }

    async fn mark_published(&self, event_ids: &[String]) -> Result<(), StoreError> {
        let ids: BoltType = event_ids.to_vec().into();
        self.transact("outbox_mark_published", |txn| -> Work<'_, ()> {
            let q = query("UNWIND $ids AS id MATCH (e:OutboxEvent {event_id: id}) DELETE e")
                .param("ids", ids.clone());
            Box::pin(run(txn, q))
        })
        .await
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        let found = self
            .transact("outbox_backlog", |txn| -> Work<'_, Vec<Row>> {
                Box::pin(rows(
                    txn,
                    query("MATCH (e:OutboxEvent) RETURN count(e) AS n"),
                ))
            })
            .await?;
        let n: i64 = found.first().map_or(Ok(0), |r| column(r, "n", "backlog"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl Neo4jStore {
    async fn quarantine(&self, raw: &RawEvent, error: &str) -> Result<(), StoreError> {
        tracing::error!(event_id = %raw.event_id, error, "quarantining an unreadable outbox event");
        let now = self.now_ms();
        let (id, event_type, subject, data) = (
            raw.event_id.clone(),
            raw.event_type.clone(),
            raw.subject.clone(),
            raw.data.clone(),
        );
        let error = error.to_owned();
        self.transact("outbox_quarantine", |txn| -> Work<'_, ()> {
            let q = query(
                "MATCH (e:OutboxEvent {event_id: $event_id}) DELETE e
                 WITH count(*) AS removed
                 MERGE (q:QuarantinedEvent {event_id: $event_id})
                 SET q.event_type = $event_type, q.subject = $subject, q.data = $data,
                     q.error = $error, q.quarantined_at = $now",
            )
            .param("event_id", id.as_str())
            .param("event_type", event_type.as_str())
            .param("subject", subject.as_str())
            .param("data", data.as_str())
            .param("error", error.as_str())
            .param("now", now);
            Box::pin(run(txn, q))
        })
        .await
    }
}
