//! The store contract suite against the embedded store, plus what only a file-backed store has
//! to show: data survives a reopen, and a newer schema is refused.

use std::sync::Arc;

use aop_core::contract::Fixture;
use aop_core::{AgentService, CreateAgent, SystemClock};
use aop_store_sqlite::SqliteStore;

async fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open_dir(dir.path()).expect("open store");
    let store = Arc::new(store);
    Some(Fixture::new(store, dir))
}

aop_core::store_contract_tests!(fixture());

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let created = {
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        let svc = AgentService::new(Arc::new(store), Arc::new(SystemClock), "m");
        svc.create(CreateAgent {
            name: "durable".into(),
            instructions: "persist".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap()
    };
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    let svc = AgentService::new(Arc::new(store), Arc::new(SystemClock), "m");
    let read = svc.get(&created.agent.agent_id, None).await.unwrap();
    assert_eq!(read, created);
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(err.contains("schema version 999 is newer"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.sqlite3");
    std::fs::write(&path, b"this is not sqlite, not at all, no header here....").unwrap();
    let err = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(err.contains("junk.sqlite3"), "{err}");
}

#[tokio::test]
async fn an_unreadable_outbox_row_is_quarantined_and_the_rest_flows() {
    use aop_core::Outbox;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    let svc = AgentService::new(Arc::new(store.clone()), Arc::new(SystemClock), "m");
    svc.create(CreateAgent {
        name: "fine".into(),
        instructions: "x".into(),
        ..CreateAgent::default()
    })
    .await
    .unwrap();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.execute(
        "INSERT INTO outbox (event_id, event_type, subject, time, data) \
         VALUES ('bad-1', 'agent.teleported', 'agt_x', 0, '{}')",
        [],
    )
    .unwrap();
    let pending = store.pending(100).await.unwrap();
    assert_eq!(pending.len(), 2, "the readable events still come out");
    let quarantined: String = conn
        .query_row(
            "SELECT error FROM outbox_quarantine WHERE event_id = 'bad-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(quarantined.contains("agent.teleported"), "{quarantined}");
    assert_eq!(store.backlog().await.unwrap(), 2);
}

/// Agents read once are kept in memory; nothing written afterwards, through this store or
/// through another connection to the same file (another process), is ever answered stale.
#[tokio::test]
async fn an_agent_changed_elsewhere_is_never_read_stale() {
    use aop_core::{AgentStatus, AgentStore, UpdateAgent};
    let update = |agent_id: &aop_core::AgentId, instructions: &str| UpdateAgent {
        agent_id: agent_id.clone(),
        expected_version: None,
        instructions: Some(instructions.into()),
        model: None,
        parameters: None,
        capabilities: None,
        knowledge_sources: None,
        change_summary: None,
        created_by: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let here = SqliteStore::open_dir(dir.path()).unwrap();
    let svc = AgentService::new(Arc::new(here.clone()), Arc::new(SystemClock), "m");
    let created = svc
        .create(CreateAgent {
            name: "cached".into(),
            instructions: "v1".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap();
    let id = created.agent.agent_id.clone();
    for _ in 0..2 {
        let read = here.get_agent(&id).await.unwrap().unwrap();
        assert_eq!(read.latest_version, 1);
    }

    // Written through this store: the next read has it.
    svc.update(update(&id, "v2")).await.unwrap();
    assert_eq!(
        here.get_agent(&id).await.unwrap().unwrap().latest_version,
        2
    );

    // Written through another connection, as another process would: the next read has it.
    let elsewhere = SqliteStore::open_dir(dir.path()).unwrap();
    let other = AgentService::new(Arc::new(elsewhere), Arc::new(SystemClock), "m");
    other.update(update(&id, "v3")).await.unwrap();
    assert_eq!(
        here.get_agent(&id).await.unwrap().unwrap().latest_version,
        3
    );
    other.archive(&id).await.unwrap();
    assert_eq!(
        here.get_agent(&id).await.unwrap().unwrap().status,
        AgentStatus::Archived
    );
    assert_eq!(svc.get(&id, None).await.unwrap().version.instructions, "v3");
}
