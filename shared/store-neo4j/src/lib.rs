//! The Neo4j store: the graph model of the design behind the core's store ports, over Bolt with
//! `neo4rs`.
//!
//! Every use case runs in one explicit transaction. `neo4rs` does not retry explicit
//! transactions (and its retry of auto-commit queries can last 60 s, longer than an API Gateway
//! request), so this crate retries transient failures itself, with backoff, inside a budget per
//! operation. A refused login re-reads the credentials once (they may have been rotated).

mod agents;
mod error;
mod feedback;
pub mod migrations;
mod outbox;
mod params;
mod sessions;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aop_core::StoreError;
use async_trait::async_trait;
use neo4rs::{ConfigBuilder, Graph, Query, Row, Txn};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::error::{Retry, classify, to_store_error};

pub use migrations::SCHEMA_VERSION;

/// How to reach Neo4j. `Debug` never shows the password.
#[derive(Clone)]
pub struct Neo4jConfig {
    /// `bolt://`, `bolt+s://`, `bolt+ssc://`, `neo4j://`, `neo4j+s://` or `neo4j+ssc://`.
    pub uri: String,
    pub username: String,
    pub password: SecretString,
    /// One database per pool: some servers keep a pooled connection on the first database it
    /// used.
    pub database: String,
    pub max_connections: usize,
    pub connection_timeout: Duration,
    /// Rows fetched per round trip.
    pub fetch_size: usize,
    /// Connections older than this are closed; keep it under the server's idle reset (Aura
    /// closes idle connections after about 15 minutes).
    pub max_connection_lifetime: Duration,
    /// Budget of one store operation, retries included.
    pub operation_timeout: Duration,
}

impl std::fmt::Debug for Neo4jConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Neo4jConfig")
            .field("uri", &redact_uri(&self.uri))
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("database", &self.database)
            .field("max_connections", &self.max_connections)
            .field("connection_timeout", &self.connection_timeout)
            .field("fetch_size", &self.fetch_size)
            .field("max_connection_lifetime", &self.max_connection_lifetime)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

impl Neo4jConfig {
    /// The defaults of the seed: 10 connections, 5 s to connect.
    pub fn new(
        uri: impl Into<String>,
        username: impl Into<String>,
        password: SecretString,
    ) -> Self {
        Self {
            uri: uri.into(),
            username: username.into(),
            password,
            database: "neo4j".into(),
            max_connections: 10,
            connection_timeout: Duration::from_millis(5_000),
            fetch_size: 500,
            max_connection_lifetime: Duration::from_secs(600),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// The URI with any `user:password@` part removed: what may appear in logs and errors.
pub fn redact_uri(uri: &str) -> String {
    match uri.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    }
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
}

struct Inner {
    config: RwLock<Neo4jConfig>,
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

fn connect(config: &Neo4jConfig) -> Result<Graph, StoreError> {
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
    pub fn new(config: Neo4jConfig) -> Result<Self, StoreError> {
        Self::with_credentials(config, None)
    }

    /// As [`Neo4jStore::new`], re-reading the credentials from `source` when a login is refused.
    ///
    /// # Errors
    /// As [`Neo4jStore::new`].
    pub fn with_credentials(
        config: Neo4jConfig,
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
        })
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
        let budget = self.operation_timeout();
        let deadline = Instant::now() + budget;
        let mut pause = Duration::from_millis(25);
        let mut refreshed = false;
        loop {
            let attempt = async {
                let graph = self.graph();
                let mut txn = graph.start_txn().await?;
                match work(&mut txn).await {
                    Ok(value) => {
                        txn.commit().await?;
                        Ok(value)
                    }
                    Err(e) => {
                        // A failed rollback leaves the connection to the pool's reset.
                        let _ = txn.rollback().await;
                        Err(e)
                    }
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(Failure::Store(e))) => return Err(e),
                Ok(Err(Failure::Bolt(e))) => e,
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
                    tracing::warn!(operation = what, error = %failure, pause_ms = pause.as_millis() as u64, "retrying a transient Neo4j failure");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Retry::Authentication if !refreshed && self.refresh_credentials().await => {
                    refreshed = true;
                }
                _ => return Err(to_store_error(failure, &self.inner.target, what)),
            }
        }
    }
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
