//! Backups of the embedded store. A backup reads a snapshot: a read transaction on a connection
//! of its own, which in WAL mode sees the database as it was when it began while the platform
//! goes on writing. A restore loads a staged file beside the database and puts it in place only
//! when everything is in, so an interrupted restore leaves nothing half-loaded.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aop_core::StoreError;
use aop_core::backup::{
    AppliedRecord, BackupSource, CachedRecord, ExportPage, FitnessRecord, Kind, OutboxRecord,
    QuarantinedRecord, Record, RestoreTarget,
};
use aop_core::evolution::Spend;
use aop_core::feedback::{Feedback, Metric, Rating};
use aop_core::ports::CanaryWrite;
use aop_core::principal::Principal;
use aop_core::session::{FeedbackId, InteractionId, SessionId};
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Row, TransactionBehavior, params, params_from_iter};

use crate::error::{corrupt, map_err};
use crate::rows::{self, AGENT_COLUMNS, RawAgent, RawVersion, VERSION_COLUMNS};
use crate::sessions::{
    INTERACTION_COLUMNS, MESSAGE_COLUMNS, SESSION_COLUMNS, decode_interaction, decode_message,
    decode_session, invalid, read_interaction, read_message, read_session,
};
use crate::{SqliteStore, deployments, evolutions, feedback, proposals, sessions};

/// Where a kind's records are and how one row becomes a record.
struct Spec {
    table: &'static str,
    columns: &'static str,
    /// The order of the export: the table's key, so a page starts where the last one ended.
    keys: &'static [&'static str],
    decode: fn(&Connection, &Row<'_>) -> Result<Record, StoreError>,
}

const FEEDBACK_COLUMNS: &str = "feedback_id, agent_id, version, session_id, interaction_id, \
    comments, categories, user_id, created_at, submitted_by";

/// A kind kept whole as JSON in a `body` column.
fn body(
    table: &'static str,
    keys: &'static [&'static str],
    decode: fn(&Connection, &Row<'_>) -> Result<Record, StoreError>,
) -> Spec {
    Spec {
        table,
        columns: "body",
        keys,
        decode,
    }
}

fn spec(kind: Kind) -> Spec {
    match kind {
        Kind::Version => Spec {
            table: "agent_versions",
            columns: VERSION_COLUMNS,
            // Parents before children, which a graph store links as it loads.
            keys: &["created_at", "agent_id", "version"],
            decode: |_, r| {
                let raw = RawVersion::read(r).map_err(map_err)?;
                Ok(Record::Version(raw.into_version()?))
            },
        },
        Kind::Agent => Spec {
            table: "agents",
            columns: AGENT_COLUMNS,
            keys: &["agent_id"],
            decode: |_, r| {
                Ok(Record::Agent(
                    RawAgent::read(r).map_err(map_err)?.into_agent()?,
                ))
            },
        },
        Kind::Session => Spec {
            table: "sessions",
            columns: SESSION_COLUMNS,
            keys: &["session_id"],
            decode: |_, r| {
                Ok(Record::Session(decode_session(
                    read_session(r).map_err(map_err)?,
                )?))
            },
        },
        Kind::Interaction => Spec {
            table: "interactions",
            columns: INTERACTION_COLUMNS,
            keys: &["interaction_id"],
            decode: |_, r| {
                Ok(Record::Interaction(decode_interaction(
                    read_interaction(r).map_err(map_err)?,
                )?))
            },
        },
        Kind::Message => Spec {
            table: "messages",
            columns: MESSAGE_COLUMNS,
            keys: &["session_id", "seq"],
            decode: |_, r| {
                Ok(Record::Message(decode_message(
                    read_message(r).map_err(map_err)?,
                )?))
            },
        },
        Kind::Feedback => Spec {
            table: "feedback",
            columns: FEEDBACK_COLUMNS,
            keys: &["feedback_id"],
            decode: decode_feedback,
        },
        Kind::Fitness => Spec {
            table: "fitness",
            columns: "agent_id, version, metric, count, mean, m2, updated_at",
            keys: &["agent_id", "version", "metric"],
            decode: |_, r| {
                let metric: String = r.get(2).map_err(map_err)?;
                Ok(Record::Fitness(FitnessRecord {
                    agent_id: rows::agent_id(r.get(0).map_err(map_err)?)?,
                    version: r.get(1).map_err(map_err)?,
                    metric: Metric::parse(&metric).ok_or_else(|| {
                        corrupt("fitness metric", std::io::Error::other(metric.clone()))
                    })?,
                    count: u64::try_from(r.get::<_, i64>(3).map_err(map_err)?).unwrap_or(0),
                    mean: r.get(4).map_err(map_err)?,
                    m2: r.get(5).map_err(map_err)?,
                    updated_at: r.get(6).map_err(map_err)?,
                }))
            },
        },
        Kind::Deployment => body("deployments", &["deployment_id"], |_, r| {
            Ok(Record::Deployment(body_of(r, "deployment")?))
        }),
        Kind::Canary => body("canaries", &["canary_id"], |_, r| {
            Ok(Record::Canary(Box::new(body_of(r, "canary")?)))
        }),
        Kind::Proposal => body("proposals", &["proposal_id"], |_, r| {
            Ok(Record::Proposal(body_of(r, "proposal")?))
        }),
        Kind::EvalCase => body("eval_cases", &["case_id"], |_, r| {
            Ok(Record::EvalCase(body_of(r, "evaluation case")?))
        }),
        Kind::Evolution => body("evolutions", &["evolution_id"], |_, r| {
            Ok(Record::Evolution(Box::new(body_of(r, "evolution")?)))
        }),
        Kind::Candidate => body("candidates", &["candidate_id"], |_, r| {
            Ok(Record::Candidate(body_of(r, "candidate")?))
        }),
        Kind::Cached => Spec {
            table: "evaluation_cache",
            columns: "evolution_id, key, iteration, metric_calls, llm_calls, tokens, cost_usd, value",
            keys: &["evolution_id", "key"],
            decode: |_, r| {
                let id: String = r.get(0).map_err(map_err)?;
                let value: String = r.get(7).map_err(map_err)?;
                Ok(Record::Cached(CachedRecord {
                    evolution_id: aop_core::evolution::EvolutionId::try_from(id)
                        .map_err(|e| invalid("evolution id", &e))?,
                    key: r.get(1).map_err(map_err)?,
                    iteration: r.get(2).map_err(map_err)?,
                    spend: Spend {
                        metric_calls: r.get(3).map_err(map_err)?,
                        llm_calls: r.get(4).map_err(map_err)?,
                        tokens: u64::try_from(r.get::<_, i64>(5).map_err(map_err)?).unwrap_or(0),
                        cost_usd: r.get(6).map_err(map_err)?,
                    },
                    value: rows::parse("cached evaluation", &value)?,
                }))
            },
        },
        Kind::Outbox => Spec {
            table: "outbox",
            columns: "event_id, event_type, subject, time, data, correlation_id",
            keys: &["event_id"],
            decode: |_, r| {
                let data: String = r.get(4).map_err(map_err)?;
                Ok(Record::Outbox(OutboxRecord {
                    event_id: r.get(0).map_err(map_err)?,
                    event_type: r.get(1).map_err(map_err)?,
                    subject: r.get(2).map_err(map_err)?,
                    time: r.get(3).map_err(map_err)?,
                    data: rows::parse("event data", &data)?,
                    correlation_id: r.get(5).map_err(map_err)?,
                }))
            },
        },
        Kind::Applied => Spec {
            table: "processed_events",
            columns: "event_id, processed_at",
            keys: &["event_id"],
            decode: |_, r| {
                Ok(Record::Applied(AppliedRecord {
                    event_id: r.get(0).map_err(map_err)?,
                    processed_at: r.get(1).map_err(map_err)?,
                }))
            },
        },
        Kind::Quarantined => Spec {
            table: "outbox_quarantine",
            columns: "event_id, event_type, subject, data, error, quarantined_at",
            keys: &["event_id"],
            decode: |_, r| {
                Ok(Record::Quarantined(QuarantinedRecord {
                    event_id: r.get(0).map_err(map_err)?,
                    event_type: r.get(1).map_err(map_err)?,
                    subject: r.get(2).map_err(map_err)?,
                    data: r.get(3).map_err(map_err)?,
                    error: r.get(4).map_err(map_err)?,
                    quarantined_at: r.get(5).map_err(map_err)?,
                }))
            },
        },
    }
}

fn body_of<T: serde::de::DeserializeOwned>(r: &Row<'_>, what: &str) -> Result<T, StoreError> {
    let text: String = r.get(0).map_err(map_err)?;
    rows::parse(what, &text)
}

fn decode_feedback(conn: &Connection, r: &Row<'_>) -> Result<Record, StoreError> {
    let id: String = r.get(0).map_err(map_err)?;
    let categories: String = r.get(6).map_err(map_err)?;
    let ratings = conn
        .prepare_cached(
            "SELECT metric, value, scale_min, scale_max, normalized FROM feedback_ratings \
             WHERE feedback_id = ?1 ORDER BY metric",
        )
        .and_then(|mut stmt| {
            stmt.query_map([id.as_str()], |x| {
                Ok(Rating {
                    metric: x.get(0)?,
                    value: x.get(1)?,
                    scale_min: x.get(2)?,
                    scale_max: x.get(3)?,
                    normalized: x.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(map_err)?;
    let session_id: Option<String> = r.get(3).map_err(map_err)?;
    let interaction_id: Option<String> = r.get(4).map_err(map_err)?;
    let submitted_by: Option<String> = r.get(9).map_err(map_err)?;
    Ok(Record::Feedback(Feedback {
        feedback_id: FeedbackId::try_from(id).map_err(|e| invalid("feedback id", &e))?,
        agent_id: rows::agent_id(r.get(1).map_err(map_err)?)?,
        version: r.get(2).map_err(map_err)?,
        session_id: session_id
            .map(SessionId::try_from)
            .transpose()
            .map_err(|e| invalid("session id", &e))?,
        interaction_id: interaction_id
            .map(InteractionId::try_from)
            .transpose()
            .map_err(|e| invalid("interaction id", &e))?,
        ratings,
        comments: r.get(5).map_err(map_err)?,
        categories: rows::parse("categories", &categories)?,
        user_id: r.get(7).map_err(map_err)?,
        created_at: r.get(8).map_err(map_err)?,
        submitted_by: submitted_by.as_deref().map(Principal::named),
    }))
}

/// A page of `kind` after `after` (a JSON array of the last row's key values).
fn export_page(
    conn: &Connection,
    kind: Kind,
    after: Option<&str>,
    limit: u32,
) -> Result<ExportPage, StoreError> {
    let spec = spec(kind);
    let order = spec.keys.join(", ");
    let (filter, mut args) = match after {
        None => (String::new(), Vec::new()),
        Some(position) => {
            let values: Vec<serde_json::Value> =
                serde_json::from_str(position).map_err(|e| corrupt("backup position", e))?;
            let args = values
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => SqlValue::Text(s),
                    serde_json::Value::Number(n) => SqlValue::Integer(n.as_i64().unwrap_or(0)),
                    _ => SqlValue::Null,
                })
                .collect::<Vec<_>>();
            let marks = (1..=args.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            (format!("WHERE ({order}) > ({marks})"), args)
        }
    };
    args.push(SqlValue::Integer(i64::from(limit)));
    let sql = format!(
        "SELECT {}, {order} FROM {} {filter} ORDER BY {order} LIMIT ?{}",
        spec.columns,
        spec.table,
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(map_err)?;
    let first_key = stmt.column_count() - spec.keys.len();
    let mut found = stmt.query(params_from_iter(args)).map_err(map_err)?;
    let mut page = ExportPage::default();
    let mut last = Vec::new();
    while let Some(row) = found.next().map_err(map_err)? {
        page.records.push((spec.decode)(conn, row)?);
        last.clear();
        for i in first_key..first_key + spec.keys.len() {
            last.push(match row.get::<_, SqlValue>(i).map_err(map_err)? {
                SqlValue::Integer(n) => serde_json::Value::from(n),
                SqlValue::Text(s) => serde_json::Value::from(s),
                _ => serde_json::Value::Null,
            });
        }
    }
    if page.records.len() == limit as usize {
        page.next = Some(serde_json::Value::Array(last).to_string());
    }
    Ok(page)
}

fn census(conn: &Connection) -> Result<Vec<(Kind, u64)>, StoreError> {
    let mut counts = Vec::new();
    for kind in Kind::ALL {
        let n: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {}", spec(kind).table),
                [],
                |r| r.get(0),
            )
            .map_err(map_err)?;
        if n > 0 {
            counts.push((kind, u64::try_from(n).unwrap_or(0)));
        }
    }
    Ok(counts)
}

fn import(conn: &Connection, record: &Record) -> Result<(), StoreError> {
    match record {
        Record::Version(v) => rows::insert_version(conn, v),
        Record::Agent(a) => rows::insert_agent(conn, a),
        Record::Session(s) => sessions::write_session(conn, s),
        Record::Interaction(i) => sessions::write_interaction(conn, i),
        Record::Message(m) => sessions::write_message(conn, m),
        Record::Feedback(f) => feedback::write_feedback(conn, f),
        Record::Fitness(f) => conn
            .execute(
                "INSERT INTO fitness (agent_id, version, metric, count, mean, m2, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    f.agent_id.as_str(),
                    f.version,
                    f.metric.key(),
                    i64::try_from(f.count).unwrap_or(i64::MAX),
                    f.mean,
                    f.m2,
                    f.updated_at
                ],
            )
            .map(drop)
            .map_err(map_err),
        Record::Deployment(d) => deployments::write_deployment(conn, d),
        Record::Canary(c) => deployments::write_canary(
            conn,
            CanaryWrite {
                canary: c,
                expected_revision: None,
            },
        ),
        Record::Proposal(p) => proposals::write_proposal(conn, p),
        Record::EvalCase(c) => evolutions::write_eval_case(conn, c),
        Record::Evolution(e) => evolutions::write_evolution(conn, e),
        Record::Candidate(c) => evolutions::write_candidate(conn, c),
        Record::Cached(c) => {
            evolutions::write_cache_entry(conn, c.evolution_id.as_str(), &c.entry(), true)
        }
        Record::Outbox(e) => conn
            .execute(
                "INSERT INTO outbox (event_id, event_type, subject, time, data, correlation_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.event_id,
                    e.event_type,
                    e.subject,
                    e.time,
                    e.data.to_string(),
                    e.correlation_id
                ],
            )
            .map(drop)
            .map_err(map_err),
        Record::Applied(a) => conn
            .execute(
                "INSERT INTO processed_events (event_id, processed_at) VALUES (?1, ?2)",
                params![a.event_id, a.processed_at],
            )
            .map(drop)
            .map_err(map_err),
        Record::Quarantined(q) => conn
            .execute(
                "INSERT INTO outbox_quarantine \
                 (event_id, event_type, subject, data, error, quarantined_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    q.event_id,
                    q.event_type,
                    q.subject,
                    q.data,
                    q.error,
                    q.quarantined_at
                ],
            )
            .map(drop)
            .map_err(map_err),
    }
    .map_err(|e| match e {
        // A duplicate key in an archive is the archive's fault, not a race to retry.
        StoreError::Conflict(message) => StoreError::Permanent {
            message: format!("cannot load a {}: {message}", record.kind()),
            source: None,
        },
        other => other,
    })
}

/// The embedded store as it was when [`SqliteStore::snapshot`] was called.
pub struct SqliteSnapshot {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// A consistent view of the database for a backup, on a connection of its own: writers
    /// go on (the write-ahead log keeps growing until the snapshot is dropped).
    ///
    /// # Errors
    /// `Permanent` when the database cannot be opened again.
    pub fn snapshot(&self) -> Result<SqliteSnapshot, StoreError> {
        let conn = Connection::open(self.path()).map_err(|e| {
            StoreError::permanent(
                format!("cannot open {} for a backup", self.path().display()),
                e,
            )
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(map_err)?;
        // The first read of a transaction fixes what the whole transaction sees.
        conn.execute_batch("BEGIN DEFERRED; SELECT count(*) FROM schema_migrations;")
            .map_err(map_err)?;
        Ok(SqliteSnapshot {
            conn: Mutex::new(conn),
        })
    }

    /// Opens a fresh database beside `target` (the same name with `.restoring` appended,
    /// emptied first) to restore into; [`StagedRestore::commit`] puts it in place of `target`.
    ///
    /// # Errors
    /// `Permanent` when the staged file cannot be created.
    pub fn stage_restore(target: &Path) -> Result<StagedRestore, StoreError> {
        let mut name = target.as_os_str().to_owned();
        name.push(".restoring");
        let staged = PathBuf::from(name);
        remove_database(&staged)?;
        let store = Self::open(&staged)?;
        // Commits wait for the disk once, in `commit`; the staged file is worth nothing until.
        store.set_durable(false)?;
        store.with_connection(|conn| {
            // Versions come before the agents they belong to: references are checked at the end.
            conn.execute_batch("PRAGMA foreign_keys = OFF;")
                .map_err(map_err)
        })?;
        Ok(StagedRestore {
            store: Some(store),
            complete: false,
            staged,
            target: target.to_owned(),
        })
    }

    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }
}

/// Removes a database file and its write-ahead log and shared-memory files.
fn remove_database(path: &Path) -> Result<(), StoreError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::remove_file(PathBuf::from(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::permanent(
                    format!("cannot remove {}", PathBuf::from(&name).display()),
                    e,
                ));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl BackupSource for SqliteSnapshot {
    fn reads_one_snapshot(&self) -> bool {
        true
    }

    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        census(
            &self
                .conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    async fn export(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ExportPage, StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        export_page(&conn, kind, after, limit)
    }
}

/// A restore being loaded into a staged database file, removed unless committed.
pub struct StagedRestore {
    store: Option<SqliteStore>,
    /// Loaded and synced: kept even if putting it in place fails.
    complete: bool,
    staged: PathBuf,
    target: PathBuf,
}

impl Drop for StagedRestore {
    fn drop(&mut self) {
        // Uncommitted: the staged file is worth nothing (after a commit it is gone already).
        self.store = None;
        if self.complete {
            return;
        }
        if let Err(e) = remove_database(&self.staged) {
            tracing::warn!(error = %e, "cannot remove the staged restore");
        }
    }
}

impl StagedRestore {
    /// The store to load into.
    ///
    /// # Panics
    /// Never: the store is there until the restore is committed or dropped.
    pub fn store(&self) -> &SqliteStore {
        self.store
            .as_ref()
            .expect("the staged store is open until commit")
    }

    /// Puts the loaded database in place of the target, removing the target's files (the
    /// caller has made sure it holds nothing).
    ///
    /// # Errors
    /// `Permanent` when the files cannot be synced, removed or renamed; the target is then
    /// as it was, or absent with the staged file complete beside it.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let store = self
            .store
            .take()
            .expect("the staged store is open until commit");
        store.with_connection(|conn| {
            conn.execute_batch("PRAGMA journal_mode = DELETE;")
                .map_err(map_err)
        })?;
        drop(store);
        let io = |what: String| move |e| StoreError::permanent(what, e);
        std::fs::File::open(&self.staged)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("cannot sync {}", self.staged.display())))?;
        self.complete = true;
        remove_database(&self.target)?;
        std::fs::rename(&self.staged, &self.target).map_err(io(format!(
            "cannot move {} to {} (the restored database is complete in the former: move it \
             by hand)",
            self.staged.display(),
            self.target.display()
        )))?;
        if let Some(dir) = self.target.parent() {
            // The rename itself survives a power loss only once the directory is on disk.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RestoreTarget for SqliteStore {
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        self.with(|conn| census(conn)).await
    }

    async fn restored_so_far(&self, _archive: &str) -> Result<Option<u64>, StoreError> {
        // A restore goes into a staged file that a new attempt starts afresh.
        Ok(None)
    }

    async fn import(
        &self,
        _archive: &str,
        _done: u64,
        records: &[Record],
    ) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            for record in &records {
                import(&tx, record)?;
            }
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn finish_restore(&self, _archive: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            let broken: Vec<(String, String)> = conn
                .prepare("PRAGMA foreign_key_check")
                .and_then(|mut stmt| {
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(map_err)?;
            if let Some((table, parent)) = broken.first() {
                return Err(StoreError::Permanent {
                    message: format!(
                        "the archive is inconsistent: {} row(s) refer to records it does not \
                         hold (first: a row of {table} whose {parent} is missing)",
                        broken.len()
                    ),
                    source: None,
                });
            }
            conn.execute_batch("PRAGMA foreign_keys = ON;")
                .map_err(map_err)
        })
        .await
    }
}
