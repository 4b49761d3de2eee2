//! The JSON schema of every event type: the envelope with its `data`, versioned (`v1`), checked
//! in under `infra/events/schemas/` and kept in step with the Rust types by a test.

use aop_core::EventType;
use schemars::schema_for;
use serde_json::Value;

/// Schema version of the envelopes published today.
pub const VERSION: u32 = 1;

fn data_schema(t: EventType) -> Value {
    serde_json::to_value(t.data_schema()).unwrap_or(Value::Null)
}

/// The schema of one event type's envelope.
pub fn for_type(t: EventType) -> Value {
    let mut envelope = serde_json::to_value(schema_for!(crate::CloudEvent)).unwrap_or(Value::Null);
    let mut data = data_schema(t);
    let defs = data
        .as_object_mut()
        .and_then(|o| o.remove("$defs"))
        .unwrap_or(Value::Object(Default::default()));
    if let Some(obj) = data.as_object_mut() {
        obj.remove("$schema");
    }
    envelope["$id"] = Value::String(file_name(t));
    envelope["title"] = Value::String(format!("{} v{VERSION}", t.as_str()));
    envelope["properties"]["type"] = serde_json::json!({"const": t.as_str()});
    envelope["properties"]["data"] = data;
    envelope["$defs"] = defs;
    envelope
}

pub fn file_name(t: EventType) -> String {
    format!("{}.v{VERSION}.json", t.as_str())
}
