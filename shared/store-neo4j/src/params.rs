//! Values into Bolt parameters. Rows for `UNWIND $rows` are built as JSON values first: one
//! conversion for every shape.

use aop_core::{DomainEvent, StoreError};
use neo4rs::BoltType;
use serde_json::{Value, json};

/// A JSON value as a Bolt parameter.
pub(crate) fn bolt(value: Value) -> Result<BoltType, StoreError> {
    BoltType::try_from(value).map_err(|e| StoreError::permanent("cannot encode a parameter", e))
}

/// Text that holds a nested value the graph does not model (a JSON Schema, a tool call record).
pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::permanent("cannot encode a value", e))
}

/// Outbox rows of `events`, for [`crate::outbox::WRITE_EVENTS`].
pub(crate) fn event_rows(events: &[DomainEvent]) -> Result<BoltType, StoreError> {
    let rows = events
        .iter()
        .map(|e| {
            let data = e.data.to_json().map_err(|err| {
                StoreError::permanent(
                    format!(
                        "cannot encode the data of {} event {}",
                        e.event_type().as_str(),
                        e.id
                    ),
                    err,
                )
            })?;
            Ok(json!({
                "event_id": e.id,
                "event_type": e.event_type().as_str(),
                "subject": e.subject.as_str(),
                "time": e.time,
                "data": data.to_string(),
                "correlation_id": e.correlation_id,
            }))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    bolt(Value::Array(rows))
}

/// The key of an agent version node: `agent_id:version`.
pub(crate) fn version_key(agent_id: &str, version: u32) -> String {
    format!("{agent_id}:{version}")
}
