//! The checked-in event schemas match the Rust types. After changing an event payload, run
//! `AOP_UPDATE_SCHEMAS=1 cargo test -p aop-events` and commit the files (bump the version for a
//! breaking change).

use std::path::PathBuf;

use aop_core::EventType;
use aop_events::schema;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../infra/events/schemas")
}

#[test]
fn every_event_type_has_an_up_to_date_schema() {
    let update = std::env::var_os("AOP_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for &t in EventType::ALL {
        let path = dir().join(schema::file_name(t));
        let generated = serde_json::to_string_pretty(&schema::for_type(t)).unwrap() + "\n";
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == generated => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    // A schema file of a type that no longer exists is drift too.
    let known: Vec<String> = EventType::ALL
        .iter()
        .map(|t| schema::file_name(*t))
        .collect();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !known.contains(&name) {
            if update {
                std::fs::remove_file(&path).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "event schemas drifted from the Rust types (run AOP_UPDATE_SCHEMAS=1 cargo test -p aop-events): {stale:?}"
    );
}

#[test]
fn a_real_event_validates_against_its_schema_shape() {
    let s = schema::for_type(EventType::FeedbackSubmitted);
    assert_eq!(s["properties"]["type"]["const"], "feedback.submitted");
    let required: Vec<&str> = s["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "data",
    ] {
        assert!(required.contains(&field), "{field} must be required");
    }
    assert!(s["$defs"]["Feedback"].is_object(), "{s}");
}
