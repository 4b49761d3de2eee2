//! Versioned schema migrations, applied in order at open and recorded in `schema_migrations`.
//!
//! A new database starts as a copy of `schema.sqlite3`, an empty database as the migrations
//! leave it: running them took two thirds of a fresh start's instructions (SQLite parses every
//! `CREATE` several times over, and reparses the whole schema after each `ALTER`), copying
//! 224 KiB takes none to speak of. Whatever migrations the image predates then apply as on any
//! older database. A test builds the schema by the migrations and fails when the image differs;
//! `AOP_BLESS=1 cargo test -p aop-store-sqlite --lib migrations` rewrites it.

use std::io::Write;
use std::path::Path;

use aop_core::StoreError;
use rusqlite::{Connection, TransactionBehavior, params};

use crate::error::map_err;

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "agents and versions",
        "CREATE TABLE agents (
        agent_id       TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        domain         TEXT NOT NULL,
        description    TEXT NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('active', 'archived')),
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL,
        latest_version INTEGER NOT NULL,
        aliases        TEXT NOT NULL
    );
    CREATE INDEX agents_by_domain ON agents (domain, agent_id);
    CREATE INDEX agents_by_status ON agents (status, agent_id);
    CREATE TABLE agent_versions (
        agent_id          TEXT NOT NULL REFERENCES agents (agent_id),
        version           INTEGER NOT NULL CHECK (version > 0),
        instructions      TEXT NOT NULL,
        model             TEXT NOT NULL,
        parameters        TEXT NOT NULL,
        capabilities      TEXT NOT NULL,
        knowledge_sources TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        created_by        TEXT NOT NULL,
        parents           TEXT NOT NULL,
        generation        INTEGER NOT NULL,
        change_summary    TEXT NOT NULL,
        PRIMARY KEY (agent_id, version)
    ) WITHOUT ROWID;",
    ),
    (
        "sessions, messages and interactions",
        "CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        agent_id   TEXT NOT NULL REFERENCES agents (agent_id),
        alias      TEXT NOT NULL,
        version    INTEGER NOT NULL,
        user_id    TEXT NOT NULL,
        context    TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('active', 'ended')),
        summary    TEXT,
        created_at INTEGER NOT NULL,
        ended_at   INTEGER
    );
    CREATE TABLE messages (
        session_id     TEXT NOT NULL REFERENCES sessions (session_id),
        seq            INTEGER NOT NULL CHECK (seq > 0),
        role           TEXT NOT NULL,
        content        TEXT NOT NULL,
        interaction_id TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE interactions (
        interaction_id        TEXT PRIMARY KEY,
        agent_id              TEXT NOT NULL,
        version               INTEGER NOT NULL,
        session_id            TEXT,
        parent_interaction_id TEXT,
        input                 TEXT NOT NULL,
        output                TEXT,
        model                 TEXT NOT NULL,
        prompt_tokens         INTEGER NOT NULL,
        completion_tokens     INTEGER NOT NULL,
        cost_usd              REAL,
        latency_ms            INTEGER NOT NULL,
        tool_calls            TEXT NOT NULL,
        status                TEXT NOT NULL CHECK (status IN ('completed', 'failed')),
        error                 TEXT,
        created_at            INTEGER NOT NULL
    );
    CREATE INDEX interactions_by_agent ON interactions (agent_id, interaction_id);
    CREATE INDEX interactions_by_parent ON interactions (parent_interaction_id);",
    ),
    (
        "transactional outbox",
        "CREATE TABLE outbox (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id       TEXT NOT NULL UNIQUE,
        event_type     TEXT NOT NULL,
        subject        TEXT NOT NULL,
        time           INTEGER NOT NULL,
        data           TEXT NOT NULL,
        correlation_id TEXT
    );",
    ),
    (
        "feedback, fitness and processed events",
        "CREATE TABLE feedback (
        feedback_id    TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL,
        version        INTEGER NOT NULL,
        session_id     TEXT,
        interaction_id TEXT,
        comments       TEXT,
        categories     TEXT NOT NULL,
        user_id        TEXT NOT NULL,
        created_at     INTEGER NOT NULL
    );
    CREATE TABLE feedback_ratings (
        feedback_id TEXT NOT NULL REFERENCES feedback (feedback_id),
        agent_id    TEXT NOT NULL,
        version     INTEGER NOT NULL,
        metric      TEXT NOT NULL,
        value       REAL NOT NULL,
        scale_min   REAL NOT NULL,
        scale_max   REAL NOT NULL,
        normalized  REAL NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (feedback_id, metric)
    ) WITHOUT ROWID;
    CREATE INDEX ratings_by_agent_time ON feedback_ratings (agent_id, created_at);
    CREATE TABLE fitness (
        agent_id   TEXT NOT NULL,
        version    INTEGER NOT NULL,
        metric     TEXT NOT NULL,
        count      INTEGER NOT NULL,
        mean       REAL NOT NULL,
        m2         REAL NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, version, metric)
    ) WITHOUT ROWID;
    CREATE TABLE processed_events (
        event_id     TEXT PRIMARY KEY,
        processed_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    ),
    (
        "outbox quarantine",
        "CREATE TABLE outbox_quarantine (
        event_id       TEXT PRIMARY KEY,
        event_type     TEXT NOT NULL,
        subject        TEXT NOT NULL,
        data           TEXT NOT NULL,
        error          TEXT NOT NULL,
        quarantined_at INTEGER NOT NULL
    );",
    ),
    (
        "deployments, canaries and proposals; indexes for windowed statistics",
        "CREATE TABLE deployments (
        deployment_id TEXT PRIMARY KEY,
        agent_id      TEXT NOT NULL,
        alias         TEXT NOT NULL,
        kind          TEXT NOT NULL,
        canary_id     TEXT,
        created_at    INTEGER NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE INDEX deployments_by_agent ON deployments (agent_id, deployment_id);
    CREATE TABLE canaries (
        canary_id  TEXT PRIMARY KEY,
        agent_id   TEXT NOT NULL,
        alias      TEXT NOT NULL,
        status     TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        revision   INTEGER NOT NULL,
        body       TEXT NOT NULL
    );
    CREATE INDEX canaries_by_alias ON canaries (agent_id, alias, canary_id);
    CREATE INDEX canaries_by_status ON canaries (status, canary_id);
    CREATE TABLE proposals (
        proposal_id TEXT PRIMARY KEY,
        agent_id    TEXT NOT NULL,
        status      TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        revision    INTEGER NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX proposals_by_agent ON proposals (agent_id, proposal_id);
    CREATE INDEX proposals_by_status ON proposals (status, expires_at);
    CREATE INDEX sessions_by_alias_time ON sessions (agent_id, alias, created_at);
    CREATE INDEX interactions_by_session ON interactions (session_id);
    CREATE INDEX interactions_by_agent_time ON interactions (agent_id, created_at);
    CREATE INDEX feedback_by_interaction ON feedback (interaction_id);",
    ),
    (
        "evolutions: eval cases, runs, candidates, the evaluation cache; version origins",
        "ALTER TABLE agent_versions ADD COLUMN origin TEXT;
    CREATE TABLE eval_cases (
        case_id    TEXT PRIMARY KEY,
        agent_id   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        body       TEXT NOT NULL
    );
    CREATE INDEX eval_cases_by_agent ON eval_cases (agent_id, case_id);
    CREATE TABLE evolutions (
        evolution_id TEXT PRIMARY KEY,
        agent_id     TEXT NOT NULL,
        status       TEXT NOT NULL,
        revision     INTEGER NOT NULL,
        body         TEXT NOT NULL
    );
    CREATE INDEX evolutions_by_agent ON evolutions (agent_id, evolution_id);
    CREATE UNIQUE INDEX one_running_evolution ON evolutions (agent_id) WHERE status = 'running';
    CREATE TABLE candidates (
        candidate_id TEXT PRIMARY KEY,
        evolution_id TEXT NOT NULL,
        body         TEXT NOT NULL
    );
    CREATE INDEX candidates_by_evolution ON candidates (evolution_id, candidate_id);
    CREATE TABLE evaluation_cache (
        evolution_id TEXT NOT NULL,
        key          TEXT NOT NULL,
        iteration    INTEGER NOT NULL,
        metric_calls INTEGER NOT NULL,
        llm_calls    INTEGER NOT NULL,
        tokens       INTEGER NOT NULL,
        cost_usd     REAL NOT NULL,
        value        TEXT NOT NULL,
        PRIMARY KEY (evolution_id, key)
    ) WITHOUT ROWID;",
    ),
    (
        "who asked for each turn and submitted each feedback; spend by caller",
        "ALTER TABLE interactions ADD COLUMN invoked_by TEXT;
    ALTER TABLE feedback ADD COLUMN submitted_by TEXT;
    DROP INDEX interactions_by_agent_time;
    CREATE INDEX interactions_by_agent_time ON interactions (agent_id, created_at, cost_usd);
    CREATE INDEX interactions_by_caller_time ON interactions (invoked_by, created_at, cost_usd)
        WHERE invoked_by IS NOT NULL;",
    ),
    (
        "the applied-event ledger by age, for its retention",
        "CREATE INDEX processed_events_by_time ON processed_events (processed_at);",
    ),
];

/// An empty database at some schema version (see the module's documentation).
const IMAGE: &[u8] = include_bytes!("../schema.sqlite3");

/// Creates the database file at `path` as a copy of [`IMAGE`] when there is no file there, and
/// says whether it did. The copy is written beside it and linked into place, so a concurrent
/// start sees either no file or the whole image, and never loses a file that appeared meanwhile.
/// Any failure leaves nothing behind and the migrations build the schema instead.
pub(crate) fn seed(path: &Path) -> bool {
    if path.exists() {
        return false;
    }
    let Some(name) = path.file_name() else {
        return false;
    };
    let mut draft_name = name.to_owned();
    draft_name.push(format!(".new-{}", std::process::id()));
    let draft = path.with_file_name(draft_name);
    let written = std::fs::File::create_new(&draft)
        .and_then(|mut file| file.write_all(IMAGE).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::hard_link(&draft, path));
    let _ = std::fs::remove_file(&draft);
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, path = %path.display(), "no schema image copied");
            false
        }
    }
}

/// Brings the database to [`SCHEMA_VERSION`]. `seeded` says it was just copied from the image:
/// its migrations are stamped as applied now.
pub(crate) fn apply(
    conn: &mut Connection,
    clock: &dyn aop_core::Clock,
    seeded: bool,
) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(map_err)?;
    let current: u32 = tx
        .query_row(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Permanent {
            message: format!(
                "database schema version {current} is newer than this build supports \
                 ({SCHEMA_VERSION}); upgrade aop"
            ),
            source: None,
        });
    }
    let now = clock.now_ms();
    if seeded {
        tx.execute("UPDATE schema_migrations SET applied_at = ?1", [now])
            .map_err(map_err)?;
        tracing::info!(version = current, "created the store from its schema image");
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        tx.execute_batch(sql).map_err(map_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, now],
        )
        .map_err(map_err)?;
        tracing::info!(version, name, "applied store migration");
    }
    tx.commit().map_err(map_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aop_core::clock::ManualClock;

    /// A table, index or trigger as SQLite keeps it: type, name, table, definition.
    type Object = (String, String, String, Option<String>);

    /// What a schema is made of: every object, and the migrations recorded.
    fn schema(path: &Path) -> (Vec<Object>, Vec<(u32, String)>) {
        let conn = Connection::open(path).unwrap();
        let objects = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let applied = conn
            .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (objects, applied)
    }

    #[test]
    fn the_schema_image_is_what_the_migrations_build() {
        let dir = tempfile::tempdir().unwrap();
        let migrated = dir.path().join("migrated.sqlite3");
        let mut conn = Connection::open(&migrated).unwrap();
        apply(&mut conn, &ManualClock::at(0), false).unwrap();
        if std::env::var("AOP_BLESS").is_ok_and(|v| v == "1") {
            conn.execute_batch("VACUUM").unwrap();
            drop(conn);
            let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.sqlite3");
            std::fs::copy(&migrated, image).unwrap();
            // This build still holds the old image; the next one compiles the new.
            return;
        }
        drop(conn);
        let seeded = dir.path().join("seeded.sqlite3");
        assert!(seed(&seeded), "a missing file is seeded");
        assert_eq!(
            schema(&seeded),
            schema(&migrated),
            "schema.sqlite3 is not what the migrations build: \
             `AOP_BLESS=1 cargo test -p aop-store-sqlite --lib migrations` rewrites it"
        );
    }

    #[test]
    fn a_seeded_store_is_stamped_now_and_an_existing_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite3");
        assert!(seed(&path));
        let mut conn = Connection::open(&path).unwrap();
        apply(&mut conn, &ManualClock::at(1_234), true).unwrap();
        let (versions, stamps): (u32, i64) = conn
            .query_row(
                "SELECT count(*), min(applied_at) FROM schema_migrations",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(versions, SCHEMA_VERSION);
        assert_eq!(stamps, 1_234);
        conn.execute_batch("CREATE TABLE kept (x INTEGER); INSERT INTO kept VALUES (7);")
            .unwrap();
        drop(conn);
        assert!(!seed(&path), "an existing database is left alone");
        let conn = Connection::open(&path).unwrap();
        let kept: i64 = conn
            .query_row("SELECT x FROM kept", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 7);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".new-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
