//! The store itself: one SQLite connection, migrated at open, and the agent and outbox ports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use aop_core::{
    Agent, AgentFilter, AgentId, AgentStatus, AgentStore, AgentVersion, Alias, Clock, DomainEvent,
    Outbox, PageRequest, StatusFilter, StoreError, StoreHealth, SystemClock,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::error::map_err;
use crate::{migrations, rows};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "aop.sqlite3";

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// Versions already read. A version never changes once written, so a copy is never stale.
    versions: Arc<Mutex<HashMap<(AgentId, u32), AgentVersion>>>,
    /// Agents already read, kept while the database is as it was then.
    agents: Arc<Mutex<AgentCache>>,
}

/// How many versions [`SqliteStore`] keeps in memory; the cache starts over when full.
const CACHED_VERSIONS: usize = 1_024;
/// How many agents [`SqliteStore`] keeps in memory; the cache starts over when full.
const CACHED_AGENTS: usize = 1_024;

/// Agents as read at one state of the database, which a pair of counters tells apart: the rows
/// written through the store's connection (`total_changes`) and the commits of every other
/// connection, another process's included (`PRAGMA data_version`). A point read checks the pair
/// in a statement that reads no table and drops every agent when either moved, so an agent
/// comes from the cache only when nothing at all was written since it was read.
#[derive(Default)]
struct AgentCache {
    state: Option<(i64, u64)>,
    agents: HashMap<AgentId, Agent>,
}

impl AgentCache {
    /// The cached agent, after forgetting everything if the database is not at `state` any more.
    fn get(&mut self, state: (i64, u64), id: &AgentId) -> Option<Agent> {
        if self.state != Some(state) {
            self.agents.clear();
            self.state = Some(state);
        }
        self.agents.get(id).cloned()
    }

    fn keep(&mut self, agent: &Agent) {
        if self.agents.len() >= CACHED_AGENTS {
            self.agents.clear();
        }
        self.agents.insert(agent.agent_id.clone(), agent.clone());
    }
}

/// The state [`AgentCache`] is keyed by. Only for the store's own connection, whose lock the
/// caller holds while it reads the cache.
fn database_state(conn: &Connection) -> Result<(i64, u64), StoreError> {
    let version: i64 = conn
        .prepare_cached("PRAGMA data_version")
        .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)))
        .map_err(map_err)?;
    Ok((version, conn.total_changes()))
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and applies pending migrations.
    ///
    /// # Errors
    /// `Permanent` when the directory cannot be created, the file is not a database, or its
    /// schema is newer than this build knows.
    pub fn open_dir(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_dir_with_clock(data_dir, Arc::new(SystemClock))
    }

    /// As [`SqliteStore::open_dir`], stamping bookkeeping rows with `clock`'s time.
    ///
    /// # Errors
    /// As [`SqliteStore::open_dir`].
    pub fn open_dir_with_clock(data_dir: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::permanent(
                format!("cannot create data directory {}", data_dir.display()),
                e,
            )
        })?;
        Self::open_with_clock(&data_dir.join(DB_FILE), clock)
    }

    /// Opens the database file at `path` and applies pending migrations.
    ///
    /// # Errors
    /// As [`SqliteStore::open_dir`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// As [`SqliteStore::open`], stamping bookkeeping rows (migrations, processed and
    /// quarantined events) with `clock`'s time.
    ///
    /// # Errors
    /// As [`SqliteStore::open_dir`].
    pub fn open_with_clock(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let seeded = migrations::seed(path);
        let mut conn = Connection::open(path).map_err(|e| {
            StoreError::permanent(format!("cannot open database {}", path.display()), e)
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(map_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| {
            StoreError::permanent(
                format!("{} is not a usable SQLite database", path.display()),
                e,
            )
        })?;
        migrations::apply(&mut conn, clock.as_ref(), seeded)?;
        // Every statement the store runs often stays prepared (rusqlite keeps 16 by default,
        // fewer than the store has).
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
            clock,
            versions: Arc::default(),
            agents: Arc::default(),
        })
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How long a write waits for another writer's lock before failing as unavailable.
    pub fn set_busy_timeout(&self, timeout: std::time::Duration) {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = conn.busy_timeout(timeout) {
            tracing::warn!(error = %e, "cannot set the busy timeout");
        }
    }

    /// Whether a commit waits for the disk before it returns (`synchronous = FULL`, the
    /// default: an acknowledged write survives a power loss) or only for the write-ahead log's
    /// write (`NORMAL`: faster; the last commits before a power loss may vanish).
    ///
    /// # Errors
    /// `Permanent` when SQLite refuses the setting.
    pub fn set_durable(&self, durable: bool) -> Result<(), StoreError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mode = if durable { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!("PRAGMA synchronous = {mode};"))
            .map_err(|e| StoreError::permanent(format!("cannot set synchronous = {mode}"), e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a point read (one row by key) where it is: in WAL mode a reader does not wait for
    /// writers, and such a read takes microseconds, less than handing it to the blocking pool and
    /// back (two thread wake-ups, which cost a request most of its CPU). When the connection
    /// is busy with another call, the read queues on the blocking pool like everything else.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The guard must be gone before the fallback awaits.
        let queued = match self.conn.try_lock() {
            Ok(mut guard) => return f(&mut guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                return f(&mut poisoned.into_inner());
            }
            Err(std::sync::TryLockError::WouldBlock) => f,
        };
        self.with(queued).await
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::permanent("store task failed", e))?
    }
}

/// Locks `mutex`, taking over the data of a thread that panicked while holding it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn insert_agent(
        &self,
        agent: &Agent,
        first: &AgentVersion,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let agent = agent.clone();
        let first = first.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            rows::insert_agent(&tx, &agent)?;
            rows::insert_version(&tx, &first)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn insert_version(
        &self,
        agent: &Agent,
        version: &AgentVersion,
        previous_aliases: &[Alias],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let agent = agent.clone();
        let version = version.clone();
        let previous_aliases = previous_aliases.to_vec();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let current: Option<(u32, String, String)> = tx
                .query_row(
                    "SELECT latest_version, status, aliases FROM agents WHERE agent_id = ?1",
                    [agent.agent_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(map_err)?;
            if let Some((_, status, aliases)) = &current {
                if status != "active" {
                    return Err(StoreError::Conflict(format!(
                        "agent '{}' was archived meanwhile",
                        agent.agent_id
                    )));
                }
                let stored: Vec<Alias> = rows::parse("aliases", aliases)?;
                if stored != previous_aliases {
                    return Err(StoreError::Conflict(format!(
                        "an alias of agent '{}' moved meanwhile",
                        agent.agent_id
                    )));
                }
            }
            match current.map(|(latest, _, _)| latest) {
                None => {
                    return Err(StoreError::Permanent {
                        message: format!("agent '{}' does not exist", agent.agent_id),
                        source: None,
                    });
                }
                Some(n) if n + 1 != version.version => {
                    return Err(StoreError::Conflict(format!(
                        "agent '{}' is at version {n}, cannot add version {}",
                        agent.agent_id, version.version
                    )));
                }
                Some(_) => {}
            }
            rows::insert_version(&tx, &version)?;
            rows::update_agent(&tx, &agent)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn set_status(
        &self,
        agent_id: &AgentId,
        status: AgentStatus,
        updated_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let id = agent_id.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let n = tx
                .execute(
                    "UPDATE agents SET status = ?2, updated_at = ?3 WHERE agent_id = ?1",
                    params![id.as_str(), status.as_str(), updated_at],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Permanent {
                    message: format!("agent '{id}' does not exist"),
                    source: None,
                });
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn get_agent(&self, agent_id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let id = agent_id.clone();
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {} FROM agents WHERE agent_id = ?1",
                rows::AGENT_COLUMNS
            )
        });
        let cache = self.agents.clone();
        self.read(move |conn| {
            // Under the connection's lock: no write of this process lands between the check
            // and the read.
            let state = database_state(conn)?;
            if let Some(found) = lock(&cache).get(state, &id) {
                return Ok(Some(found));
            }
            let mut stmt = conn.prepare_cached(&SQL).map_err(map_err)?;
            let raw = stmt
                .query_row([id.as_str()], rows::RawAgent::read)
                .optional()
                .map_err(map_err)?;
            let agent = raw.map(rows::RawAgent::into_agent).transpose()?;
            if let Some(agent) = &agent {
                lock(&cache).keep(agent);
            }
            Ok(agent)
        })
        .await
    }

    async fn get_version(
        &self,
        agent_id: &AgentId,
        version: u32,
    ) -> Result<Option<AgentVersion>, StoreError> {
        let key = (agent_id.clone(), version);
        if let Some(found) = lock(&self.versions).get(&key) {
            return Ok(Some(found.clone()));
        }
        let id = agent_id.clone();
        let found = self
            .read(move |conn| {
                static SQL: LazyLock<String> = LazyLock::new(|| {
                    format!(
                        "SELECT {} FROM agent_versions WHERE agent_id = ?1 AND version = ?2",
                        rows::VERSION_COLUMNS
                    )
                });
                let mut stmt = conn.prepare_cached(&SQL).map_err(map_err)?;
                let raw = stmt
                    .query_row(params![id.as_str(), version], rows::RawVersion::read)
                    .optional()
                    .map_err(map_err)?;
                raw.map(rows::RawVersion::into_version).transpose()
            })
            .await?;
        if let Some(found) = &found {
            let mut cached = lock(&self.versions);
            if cached.len() >= CACHED_VERSIONS {
                cached.clear();
            }
            cached.insert(key, found.clone());
        }
        Ok(found)
    }

    async fn list_agents(
        &self,
        filter: &AgentFilter,
        page: &PageRequest,
    ) -> Result<Vec<Agent>, StoreError> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut args: Vec<String> = Vec::new();
        match filter.status {
            StatusFilter::Active => clauses.push("a.status = 'active'"),
            StatusFilter::Archived => clauses.push("a.status = 'archived'"),
            StatusFilter::Any => {}
        }
        if let Some(domain) = &filter.domain {
            clauses.push("a.domain = ?");
            args.push(domain.clone());
        }
        if let Some(text) = &filter.text {
            clauses.push(
                "(instr(lower(a.name), lower(?)) > 0 OR instr(lower(a.description), lower(?)) > 0)",
            );
            args.push(text.clone());
            args.push(text.clone());
        }
        if let Some(cap) = &filter.capability {
            clauses.push(
                "EXISTS (SELECT 1 FROM agent_versions v, json_each(v.capabilities) c \
                 WHERE v.agent_id = a.agent_id AND v.version = a.latest_version \
                 AND json_extract(c.value, '$.name') = ?)",
            );
            args.push(cap.clone());
        }
        if let Some(after) = &page.after {
            clauses.push("a.agent_id > ?");
            args.push(after.key().to_owned());
        }
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM agents a {where_sql} ORDER BY a.agent_id LIMIT {}",
            rows::AGENT_COLUMNS_A,
            page.limit + 1
        );
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params_from_iter(args.iter()),
                rows::RawAgent::read,
                rows::RawAgent::into_agent,
            )
        })
        .await
    }

    async fn list_versions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<AgentVersion>, StoreError> {
        let id = agent_id.clone();
        let after = page.after_number();
        let limit = page.limit + 1;
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM agent_versions WHERE agent_id = ?1 AND version > ?2 \
                     ORDER BY version LIMIT ?3",
                    rows::VERSION_COLUMNS
                ))
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![id.as_str(), after, limit],
                rows::RawVersion::read,
                rows::RawVersion::into_version,
            )
        })
        .await
    }

    async fn health(&self) -> StoreHealth {
        let detail = self.path.display().to_string();
        let probe = self
            .with(|conn| {
                conn.query_row("SELECT count(*) FROM schema_migrations", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(map_err)
            })
            .await;
        match probe {
            Ok(_) => StoreHealth {
                kind: "sqlite",
                up: true,
                detail,
            },
            Err(e) => StoreHealth {
                kind: "sqlite",
                up: false,
                detail: format!("{detail}: {e}"),
            },
        }
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn pending(&self, limit: u32) -> Result<Vec<DomainEvent>, StoreError> {
        let clock = self.clock.clone();
        self.with(move |conn| {
            let raws = {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT event_id, event_type, subject, time, data, correlation_id \
                         FROM outbox ORDER BY seq LIMIT ?1",
                    )
                    .map_err(map_err)?;
                stmt.query_map([limit], rows::read_event)
                    .map_err(map_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(map_err)?
            };
            // A row this build cannot read (written by a newer build, say) must not stop the
            // rest: it moves to the quarantine table, where an operator can look at it.
            let mut events = Vec::with_capacity(raws.len());
            for raw in raws {
                let (id, event_type, subject, _, data, _) = raw.clone();
                match rows::decode_event(raw) {
                    Ok(event) => events.push(event),
                    Err(e) => {
                        tracing::error!(event_id = %id, error = %e, "quarantining an unreadable outbox event");
                        let tx = conn
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .map_err(map_err)?;
                        tx.execute(
                            "INSERT OR REPLACE INTO outbox_quarantine \
                             (event_id, event_type, subject, data, error, quarantined_at) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![
                                id,
                                event_type,
                                subject,
                                data,
                                e.to_string(),
                                clock.now_ms()
                            ],
                        )
                        .map_err(map_err)?;
                        tx.execute("DELETE FROM outbox WHERE event_id = ?1", [&id])
                            .map_err(map_err)?;
                        tx.commit().map_err(map_err)?;
                    }
                }
            }
            Ok(events)
        })
        .await
    }

    async fn mark_published(&self, event_ids: &[String]) -> Result<(), StoreError> {
        let ids = event_ids.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            {
                let mut stmt = tx
                    .prepare_cached("DELETE FROM outbox WHERE event_id = ?1")
                    .map_err(map_err)?;
                for id in &ids {
                    stmt.execute([id]).map_err(map_err)?;
                }
            }
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn backlog(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(map_err)
        })
        .await
    }
}
