//! The Neo4j store: the graph model of the design behind the core's store ports, over Bolt with
//! `neo4rs`.
//!
//! Every use case runs in one explicit transaction. `neo4rs` does not retry explicit
//! transactions (and its retry of auto-commit queries can last 60 s, longer than an API Gateway
//! request), so this crate retries transient failures itself, with backoff, inside a budget per
//! operation. A refused login re-reads the credentials once (they may have been rotated).

mod agents;
mod backup;
mod deployments;
mod error;
mod evolutions;
mod feedback;
pub mod migrations;
mod outbox;
mod params;
mod proposals;
mod sessions;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aop_config::{Kind, Problems, Section, Setting};
use aop_core::StoreError;
use async_trait::async_trait;
use neo4rs::{ConfigBuilder, Graph, Query, Row, Txn};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Retry, classify, to_store_error};

pub use migrations::SCHEMA_VERSION;

/// How to reach Neo4j: the `database` settings of a Neo4j store. `Debug` never shows the
/// password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Neo4jSettings {
    /// `bolt://`, `bolt+s://`, `bolt+ssc://`, `neo4j://`, `neo4j+s://` or `neo4j+ssc://`; empty
    /// until the Neo4j secret supplies it, when only `NEO4J_SECRET_ARN` is set.
    pub uri: String,
    pub username: String,
    #[serde(skip_serializing)]
    pub password: SecretString,
    /// One database per pool: some servers keep a pooled connection on the first database it
    /// used.
    #[serde(rename = "name")]
    pub database: String,
    pub max_connections: usize,
    #[serde(rename = "connection_timeout_ms", with = "aop_config::millis")]
    pub connection_timeout: Duration,
    /// Rows fetched per round trip.
    pub fetch_size: usize,
    /// Connections older than this are closed; keep it under the server's idle reset (Aura
    /// closes idle connections after about 15 minutes).
    #[serde(
        rename = "max_connection_lifetime_seconds",
        with = "aop_config::seconds"
    )]
    pub max_connection_lifetime: Duration,
    /// Budget of one store operation, retries included.
    #[serde(rename = "operation_timeout_ms", with = "aop_config::millis")]
    pub operation_timeout: Duration,
    /// Apply pending graph migrations at start (else start refuses another schema version).
    pub migrate_on_start: bool,
}

impl Default for Neo4jSettings {
    /// The seed's defaults: 10 connections, 5 s to connect.
    fn default() -> Self {
        Self {
            uri: String::new(),
            username: "neo4j".into(),
            password: SecretString::from(""),
            database: "neo4j".into(),
            max_connections: 10,
            connection_timeout: Duration::from_millis(5_000),
            fetch_size: 500,
            max_connection_lifetime: Duration::from_secs(600),
            operation_timeout: Duration::from_secs(10),
            migrate_on_start: false,
        }
    }
}

impl std::fmt::Debug for Neo4jSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jSettings")
            .field("uri", &redact_uri(&self.uri))
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("database", &self.database)
            .field("max_connections", &self.max_connections)
            .field("connection_timeout", &self.connection_timeout)
            .field("fetch_size", &self.fetch_size)
            .field("max_connection_lifetime", &self.max_connection_lifetime)
            .field("operation_timeout", &self.operation_timeout)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

impl Neo4jSettings {
    /// The URI schemes the driver speaks.
    pub const SCHEMES: [&'static str; 6] = [
        "bolt://",
        "bolt+s://",
        "bolt+ssc://",
        "neo4j://",
        "neo4j+s://",
        "neo4j+ssc://",
    ];

    pub fn new(
        uri: impl Into<String>,
        username: impl Into<String>,
        password: SecretString,
    ) -> Self {
        Self {
            uri: uri.into(),
            username: username.into(),
            password,
            ..Self::default()
        }
    }
}

impl Section for Neo4jSettings {
    const NAME: &'static str = "database";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("uri", "NEO4J_URI", Kind::Text),
        Setting::new("username", "NEO4J_USERNAME", Kind::Text),
        Setting::secret("password", "NEO4J_PASSWORD", Kind::Text),
        Setting::new("name", "NEO4J_DATABASE", Kind::Text),
        Setting::new("max_connections", "NEO4J_MAX_CONNECTIONS", Kind::Whole),
        Setting::new(
            "connection_timeout_ms",
            "NEO4J_CONNECTION_TIMEOUT_MS",
            Kind::Whole,
        )
        .expecting("a whole number of milliseconds"),
        Setting::new("fetch_size", "NEO4J_FETCH_SIZE", Kind::Whole),
        Setting::new(
            "max_connection_lifetime_seconds",
            "NEO4J_MAX_CONNECTION_LIFETIME_SECONDS",
            Kind::Whole,
        )
        .expecting("a whole number of seconds"),
        Setting::new(
            "operation_timeout_ms",
            "NEO4J_OPERATION_TIMEOUT_MS",
            Kind::Whole,
        )
        .expecting("a whole number of milliseconds"),
        Setting::new("migrate_on_start", "AOP_MIGRATE_ON_START", Kind::Flag),
    ];

    fn check(&self, problems: &mut Problems) {
        if !self.uri.is_empty() && !Self::SCHEMES.iter().any(|s| self.uri.starts_with(s)) {
            problems.push(
                "uri",
                "must start with bolt://, bolt+s://, bolt+ssc://, neo4j://, neo4j+s:// or neo4j+ssc://",
            );
        }
        problems.at_least("max_connections", self.max_connections, 1);
        problems.at_least("fetch_size", self.fetch_size, 1);
        for (key, value) in [
            ("connection_timeout_ms", self.connection_timeout),
            (
                "max_connection_lifetime_seconds",
                self.max_connection_lifetime,
            ),
            ("operation_timeout_ms", self.operation_timeout),
        ] {
            if value.is_zero() {
                problems.push(key, "must be at least 1");
            }
        }
    }
}

/// The URI without its `user:password@` part or query: what may appear in logs and errors.
pub fn redact_uri(uri: &str) -> String {
    aop_config::redact::url(uri)
}

/// Fresh credentials after a login was refused (a rotated secret, say).
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// Returns the user name and password to use from now on.
    async fn refresh(&self) -> Result<(String, SecretString), String>;
}

/// The Neo4j store. Cheap to clone.
#[derive(Clone)]
pub struct Neo4jStore {
    inner: Arc<Inner>,
    /// Stamps bookkeeping nodes (migrations, processed and quarantined events).
    clock: Arc<dyn aop_core::Clock>,
}

struct Inner {
    config: RwLock<Neo4jSettings>,
    graph: RwLock<Graph>,
    target: String,
    credentials: Option<Arc<dyn CredentialSource>>,
}

/// A failure inside a transaction: a Bolt error (maybe worth retrying) or a rule of the use case
/// (never retried).
pub(crate) enum Failure {
    Bolt(neo4rs::Error),
    Store(StoreError),
}

impl From<neo4rs::Error> for Failure {
    fn from(e: neo4rs::Error) -> Self {
        Self::Bolt(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

pub(crate) type Work<'t, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 't>>;

fn connect(config: &Neo4jSettings) -> Result<Graph, StoreError> {
    // TLS (`bolt+s`) needs a process-wide crypto provider; another crate may have set one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let built = ConfigBuilder::default()
        .uri(config.uri.as_str())
        .user(config.username.as_str())
        .password(config.password.expose_secret())
        .db(config.database.as_str())
        .max_connections(config.max_connections)
        .fetch_size(config.fetch_size)
        .connection_timeout(config.connection_timeout)
        .max_lifetime(config.max_connection_lifetime)
        .build()
        .and_then(Graph::connect);
    built.map_err(|e| {
        StoreError::permanent(
            format!("cannot use Neo4j at {}", redact_uri(&config.uri)),
            e,
        )
    })
}

impl Neo4jStore {
    /// Prepares the connection pool. Nothing is dialled yet: the first operation connects, so a
    /// server that is down at start is found by the first request (or by `health`).
    ///
    /// # Errors
    /// `Permanent` when the URI cannot be used (an unknown scheme, say).
    pub fn new(config: Neo4jSettings) -> Result<Self, StoreError> {
        Self::with_credentials(config, None)
    }

    /// As [`Neo4jStore::new`], re-reading the credentials from `source` when a login is refused.
    ///
    /// # Errors
    /// As [`Neo4jStore::new`].
    pub fn with_credentials(
        config: Neo4jSettings,
        credentials: Option<Arc<dyn CredentialSource>>,
    ) -> Result<Self, StoreError> {
        let graph = connect(&config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                target: redact_uri(&config.uri),
                config: RwLock::new(config),
                graph: RwLock::new(graph),
                credentials,
            }),
            clock: Arc::new(aop_core::SystemClock),
        })
    }

    /// Stamps bookkeeping nodes with `clock`'s time instead of the wall clock's.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn aop_core::Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The server's URI without credentials.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    fn graph(&self) -> Graph {
        self.inner
            .graph
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn operation_timeout(&self) -> Duration {
        self.inner
            .config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .operation_timeout
    }

    /// Rebuilds the pool with fresh credentials. Returns whether there were any to fetch.
    async fn refresh_credentials(&self) -> bool {
        let Some(source) = &self.inner.credentials else {
            return false;
        };
        match source.refresh().await {
            Ok((username, password)) => {
                let config = {
                    let mut config = self
                        .inner
                        .config
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    config.username = username;
                    config.password = password;
                    config.clone()
                };
                match connect(&config) {
                    Ok(graph) => {
                        *self
                            .inner
                            .graph
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = graph;
                        tracing::info!(target_uri = %self.inner.target, "Neo4j credentials refreshed");
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot rebuild the Neo4j pool");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot refresh the Neo4j credentials");
                false
            }
        }
    }

    /// Runs `work` in one transaction and commits it; on any failure the transaction is rolled
    /// back. Transient failures run the whole transaction again, with backoff, until the
    /// operation's budget is spent.
    pub(crate) async fn transact<T, F>(&self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'t> Fn(&'t mut Txn) -> Work<'t, T> + Send + Sync,
    {
        match self.transact_marked(what, None, work).await? {
            Outcome::Done(value) => Ok(value),
            Outcome::CommittedBefore => {
                unreachable!("no marker, so no earlier commit is looked for")
            }
        }
    }

    /// [`Neo4jStore::transact`] for a write that puts events in the outbox, `marker` the id of
    /// its first ([`first_id`]). When a commit's
    /// answer is lost (the connection dropped during COMMIT), the write may have landed: if the
    /// transaction run again then conflicts with what is there, its first event in the outbox
    /// says whether it was this write, which then succeeded, instead of reporting a conflict
    /// with itself.
    pub(crate) async fn transact_writing<F>(
        &self,
        what: &'static str,
        marker: Option<&str>,
        work: F,
    ) -> Result<(), StoreError>
    where
        F: for<'t> Fn(&'t mut Txn) -> Work<'t, ()> + Send + Sync,
    {
        self.transact_marked(what, marker, work).await.map(|_| ())
    }

    async fn transact_marked<T, F>(
        &self,
        what: &'static str,
        marker: Option<&str>,
        work: F,
    ) -> Result<Outcome<T>, StoreError>
    where
        T: Send,
        F: for<'t> Fn(&'t mut Txn) -> Work<'t, T> + Send + Sync,
    {
        let budget = self.operation_timeout();
        let deadline = Instant::now() + budget;
        let mut pause = Duration::from_millis(25);
        let mut refreshed = false;
        // Set once a COMMIT went out and its answer did not come back.
        let mut uncertain = false;
        loop {
            let attempt = async {
                let graph = self.graph();
                let mut txn = graph.start_txn().await.map_err(|e| (false, e.into()))?;
                match work(&mut txn).await {
                    Ok(value) => {
                        txn.commit().await.map_err(|e| (true, e.into()))?;
                        Ok(value)
                    }
                    Err(e) => {
                        // A failed rollback leaves the connection to the pool's reset.
                        let _ = txn.rollback().await;
                        Err((false, e))
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let (committing, failure) = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(value)) => return Ok(Outcome::Done(value)),
                Ok(Err((_, Failure::Store(e)))) => {
                    return self.settle_conflict(what, marker, uncertain, e).await;
                }
                Ok(Err((committing, Failure::Bolt(e)))) => (committing, e),
                Err(_) => {
                    return Err(StoreError::Unavailable {
                        message: format!(
                            "{what}: Neo4j at {} did not answer within {} ms",
                            self.inner.target,
                            budget.as_millis()
                        ),
                        source: None,
                    });
                }
            };
            match classify(&failure) {
                Retry::Transient if Instant::now() + pause < deadline => {
                    uncertain |= committing;
                    tracing::warn!(operation = what, error = %failure, pause_ms = pause.as_millis() as u64, commit_uncertain = uncertain, "retrying a transient Neo4j failure");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Retry::Authentication if !refreshed && self.refresh_credentials().await => {
                    refreshed = true;
                }
                _ => {
                    let error = to_store_error(failure, &self.inner.target, what);
                    return self.settle_conflict(what, marker, uncertain, error).await;
                }
            }
        }
    }

    /// A conflict after a commit whose answer was lost is this write's own when its marker
    /// event is in the outbox.
    async fn settle_conflict<T>(
        &self,
        what: &'static str,
        marker: Option<&str>,
        uncertain: bool,
        error: StoreError,
    ) -> Result<Outcome<T>, StoreError> {
        let (true, Some(marker), StoreError::Conflict(_)) = (uncertain, marker, &error) else {
            return Err(error);
        };
        let marker = marker.to_owned();
        let found = Box::pin(self.transact("commit_check", |txn| -> Work<'_, Vec<Row>> {
            let q =
                neo4rs::query("MATCH (e:OutboxEvent {event_id: $event_id}) RETURN count(e) AS n")
                    .param("event_id", marker.as_str());
            Box::pin(rows(txn, q))
        }))
        .await?;
        let landed = found
            .first()
            .and_then(|row| row.get::<i64>("n").ok())
            .is_some_and(|n| n > 0);
        if landed {
            tracing::info!(
                operation = what,
                "a commit whose answer was lost had landed; the write is done"
            );
            Ok(Outcome::CommittedBefore)
        } else {
            Err(error)
        }
    }
}

/// The id of the first of a write's events: what tells whether the write landed.
pub(crate) fn first_id(events: &[aop_core::DomainEvent]) -> Option<String> {
    events.first().map(|e| e.id.clone())
}

/// What a transaction came to.
enum Outcome<T> {
    Done(T),
    /// An earlier attempt committed, though its answer was lost.
    CommittedBefore,
}

/// Runs a query whose rows do not matter.
pub(crate) async fn run(txn: &mut Txn, q: Query) -> Result<(), Failure> {
    txn.run(q).await?;
    Ok(())
}

/// Runs a query and collects its rows.
pub(crate) async fn rows(txn: &mut Txn, q: Query) -> Result<Vec<Row>, Failure> {
    let mut stream = txn.execute(q).await?;
    let mut out = Vec::new();
    while let Some(row) = stream.next(txn.handle()).await? {
        out.push(row);
    }
    Ok(out)
}

/// Reads column `column` of a row.
pub(crate) fn column<T: DeserializeOwned>(
    row: &Row,
    column: &str,
    what: &str,
) -> Result<T, StoreError> {
    row.get::<T>(column)
        .map_err(|e| error::corrupt(what, format!("column {column}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_a_setting_and_the_password_stays_hidden() {
        assert_eq!(
            aop_config::undeclared::<Neo4jSettings>(),
            Vec::<String>::new()
        );
        let settings = Neo4jSettings::new(
            "bolt://user:pw@db:7687",
            "neo4j",
            SecretString::from("hunter2"),
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw@"),
            "{shown}"
        );
    }
}
