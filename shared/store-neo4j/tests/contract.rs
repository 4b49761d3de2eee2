//! The store contract suite against a real Bolt server, plus what only a networked graph store
//! has to show: a failed use case leaves no partial nodes, an outage fails within the budget with
//! an error that names Neo4j and the URI (never the password), and the store recovers without a
//! restart.
//!
//! Needs `AOP_TEST_NEO4J=bolt://127.0.0.1:PORT` (`infra/neo4j/arcadedb start PORT` starts one);
//! `AOP_TEST_NEO4J_USER` (default `root`), `AOP_TEST_NEO4J_PASSWORD` (default
//! `aop-test-password`), `AOP_TEST_NEO4J_DATABASE` (default `neo4j`).

use aop_test_support::{Service, service};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aop_core::contract::Fixture;
use aop_core::{AgentService, AgentStore, CreateAgent, SystemClock};
use aop_store_neo4j::{Neo4jSettings, Neo4jStore, migrations};
use secrecy::SecretString;
use tokio::sync::{Mutex, OwnedMutexGuard};

fn config() -> Option<Neo4jSettings> {
    let uri = service(Service::Neo4j)?;
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let mut config = Neo4jSettings::new(
        uri,
        env("AOP_TEST_NEO4J_USER", "root"),
        SecretString::from(env("AOP_TEST_NEO4J_PASSWORD", "aop-test-password")),
    );
    config.database = env("AOP_TEST_NEO4J_DATABASE", "neo4j");
    Some(config)
}

/// The cases share one database and some count the whole outbox, so they take turns.
fn turn() -> Arc<Mutex<()>> {
    static TURN: OnceLock<Arc<Mutex<()>>> = OnceLock::new();
    TURN.get_or_init(|| Arc::new(Mutex::new(()))).clone()
}

async fn store() -> Option<(Neo4jStore, OwnedMutexGuard<()>)> {
    let config = config()?;
    let guard = turn().lock_owned().await;
    let store = Neo4jStore::new(config).expect("store");
    migrations::migrate(&store).await.expect("migrate");
    Some((store, guard))
}

async fn fixture() -> Option<Fixture> {
    let (store, guard) = store().await?;
    Some(Fixture::new(Arc::new(store), guard))
}

aop_core::store_contract_tests!(fixture());

#[tokio::test]
async fn migrations_are_idempotent_and_recorded() {
    let Some((store, _turn)) = store().await else {
        return;
    };
    assert!(
        migrations::migrate(&store).await.unwrap().is_empty(),
        "a second run applies nothing"
    );
    assert_eq!(
        migrations::applied_version(&store).await.unwrap(),
        migrations::SCHEMA_VERSION
    );
    migrations::check(&store).await.unwrap();
    let health = store.health().await;
    assert!(health.up, "{health:?}");
    assert!(health.detail.contains("schema version"), "{health:?}");
}

#[tokio::test]
async fn a_use_case_that_fails_half_way_leaves_no_partial_nodes() {
    let Some((store, _turn)) = store().await else {
        return;
    };
    let svc = AgentService::new(Arc::new(store.clone()), Arc::new(SystemClock), "m");
    let created = svc
        .create(CreateAgent {
            name: "half-way".into(),
            instructions: "v1".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap();
    // A version whose parent does not exist fails after the version node and its capability
    // were created in the transaction: all of it must roll back.
    let mut agent = created.agent.clone();
    agent.latest_version = 2;
    let mut version = created.version.clone();
    version.version = 2;
    version.parents = vec![aop_core::VersionRef {
        agent_id: agent.agent_id.clone(),
        version: 99,
    }];
    version.capabilities = vec![aop_core::Capability {
        name: "ghost".into(),
        description: String::new(),
        parameters: None,
        effectiveness: None,
        delegate_to: None,
    }];
    let event = aop_core::samples::event(aop_core::EventType::AgentVersionCreated, &agent.agent_id);
    let err = store
        .insert_version(
            &agent,
            &version,
            &agent.aliases,
            std::slice::from_ref(&event),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("parent"), "{err}");
    assert!(
        store
            .get_version(&agent.agent_id, 2)
            .await
            .unwrap()
            .is_none()
    );
    let stored = store.get_agent(&agent.agent_id).await.unwrap().unwrap();
    assert_eq!(stored.latest_version, 1, "the agent node is untouched");
    let pending = aop_core::Outbox::pending(&store, 10_000).await.unwrap();
    assert!(pending.iter().all(|e| e.id != event.id), "no event either");
    // A capability node of the rolled-back version would show up in a capability filter.
    let ghosts = svc
        .list(aop_core::ListAgents {
            capability: Some("ghost".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(ghosts.items.iter().all(|a| a.agent_id != agent.agent_id));
}

#[tokio::test]
async fn an_unreachable_server_fails_within_the_budget_naming_neo4j_and_not_the_password() {
    let Some(mut config) = config() else {
        return;
    };
    // A port nothing listens on: the outage as a client sees it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    config.uri = format!("bolt://127.0.0.1:{port}");
    config.password = SecretString::from("s3cr3t-never-printed".to_owned());
    config.operation_timeout = Duration::from_millis(1_500);
    config.connection_timeout = Duration::from_millis(500);
    let store = Neo4jStore::new(config).unwrap();
    let started = std::time::Instant::now();
    let err = store
        .get_agent(&aop_core::AgentId::parse("agent_id", "agt_x").unwrap())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("Neo4j"), "{text}");
    assert!(text.contains(&format!("bolt://127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

/// The address of the configured Bolt server.
async fn upstream(config: &Neo4jSettings) -> std::net::SocketAddr {
    tokio::net::lookup_host(
        config
            .uri
            .split_once("://")
            .map_or(config.uri.as_str(), |(_, rest)| rest),
    )
    .await
    .unwrap()
    .next()
    .unwrap()
}

/// A TCP relay to the real server that the test can cut and restore: an outage as the store's
/// connections see it (refused connects, dead pooled connections), without stopping the server.
struct Relay {
    port: u16,
    upstream: std::net::SocketAddr,
    tasks: Option<tokio::task::JoinSet<()>>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let mut relay = Self {
            port: 0,
            upstream,
            tasks: None,
        };
        relay.restore().await;
        relay
    }

    /// Listens again, on the same port once one was chosen.
    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind relay");
        self.port = listener.local_addr().unwrap().port();
        let upstream = self.upstream;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and every relayed connection.
    async fn cut(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }
}

#[tokio::test]
async fn an_outage_fails_within_the_budget_and_the_store_recovers_without_a_restart() {
    let Some(mut config) = config() else {
        return;
    };
    let upstream = upstream(&config).await;
    let mut relay = Relay::start(upstream).await;
    config.uri = format!("bolt://127.0.0.1:{}", relay.port);
    config.operation_timeout = Duration::from_millis(2_000);
    config.connection_timeout = Duration::from_millis(500);
    let store = Neo4jStore::new(config).unwrap();
    migrations::migrate(&store).await.unwrap();
    let svc = AgentService::new(Arc::new(store.clone()), Arc::new(SystemClock), "m");
    let created = svc
        .create(CreateAgent {
            name: "through an outage".into(),
            instructions: "v1".into(),
            ..CreateAgent::default()
        })
        .await
        .unwrap();
    let id = created.agent.agent_id;

    relay.cut().await;
    let started = std::time::Instant::now();
    let err = svc.get(&id, None).await.unwrap_err();
    let elapsed = started.elapsed();
    let aop_core::ServiceError::Store(err) = err else {
        panic!("expected a store failure, got {err}");
    };
    assert!(err.is_transient(), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Neo4j"), "{text}");
    assert!(
        text.contains(&format!("bolt://127.0.0.1:{}", relay.port)),
        "{text}"
    );
    assert!(!text.contains("aop-test-password"), "{text}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");

    relay.restore().await;
    let back = svc
        .get(&id, None)
        .await
        .expect("the same store works again");
    assert_eq!(back.agent.agent_id, id);
}

/// Hands out the right password only when asked again, as a rotated secret would.
struct Rotated {
    password: String,
    asked: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl aop_store_neo4j::CredentialSource for Rotated {
    async fn refresh(&self) -> Result<(String, SecretString), String> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(("root".to_owned(), SecretString::from(self.password.clone())))
    }
}

#[tokio::test]
async fn a_refused_login_reads_the_credentials_again_once() {
    let Some(mut config) = config() else {
        return;
    };
    let _turn = turn().lock_owned().await;
    let right = std::env::var("AOP_TEST_NEO4J_PASSWORD").unwrap_or("aop-test-password".into());
    config.password = SecretString::from("the-password-before-rotation".to_owned());
    let source = Arc::new(Rotated {
        password: right,
        asked: std::sync::atomic::AtomicUsize::new(0),
    });
    let store = Neo4jStore::with_credentials(config.clone(), Some(source.clone())).unwrap();
    // The first statement is refused, the credentials are read again, and all that follows
    // works on them.
    migrations::migrate(&store).await.unwrap();
    assert_eq!(
        migrations::applied_version(&store).await.unwrap(),
        migrations::SCHEMA_VERSION
    );
    assert_eq!(source.asked.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Credentials that stay wrong fail after one refresh, naming the refusal, not looping.
    let wrong = Arc::new(Rotated {
        password: "still-wrong-after-rotation".into(),
        asked: std::sync::atomic::AtomicUsize::new(0),
    });
    let store = Neo4jStore::with_credentials(config, Some(wrong.clone())).unwrap();
    let err = migrations::applied_version(&store).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(!err.to_string().contains("still-wrong"), "{err}");
    assert_eq!(wrong.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A TCP relay that, once armed, lets the next Bolt COMMIT reach the server and then cuts the
/// connection before the server's answer comes back: a commit whose outcome the client cannot
/// know.
struct CommitCutter {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::atomic::AtomicUsize>,
}

/// COMMIT in Bolt: a chunk of two bytes, a struct of no fields with signature 0x12.
const COMMIT: [u8; 4] = [0x00, 0x02, 0xB0, 0x12];

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (armed_, cut_) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut client_in, mut client_out) = inbound.into_split();
                let (mut server_in, mut server_out) = outbound.into_split();
                let hold = Arc::new(AtomicBool::new(false));
                let (armed, cut, hold_) = (armed_.clone(), cut_.clone(), hold.clone());
                let upward = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match client_in.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let commit = buf[..n].windows(COMMIT.len()).any(|w| w == COMMIT);
                        if commit && armed.swap(false, Ordering::SeqCst) {
                            // No answer goes back from here on; the COMMIT goes through, and the
                            // connection is closed once the server has answered it.
                            hold_.store(true, Ordering::SeqCst);
                            cut.fetch_add(1, Ordering::SeqCst);
                            let _ = server_out.write_all(&buf[..n]).await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        if server_out.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match server_in.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if hold.load(Ordering::SeqCst)
                            || client_out.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                    // Both directions end together (after the server's answer when one is
                    // held back): the client sees its connection drop.
                    upward.abort();
                });
            }
        });
        Self { port, armed, cut }
    }
}

#[tokio::test]
async fn a_write_whose_commit_answer_is_lost_succeeds_once_instead_of_conflicting_with_itself() {
    let Some(mut config) = config() else {
        return;
    };
    let _turn = turn().lock_owned().await;
    let upstream = upstream(&config).await;
    let cutter = CommitCutter::start(upstream).await;
    config.uri = format!("bolt://127.0.0.1:{}", cutter.port);
    let store = Neo4jStore::new(config).unwrap();
    migrations::migrate(&store).await.unwrap();
    let svc = AgentService::new(Arc::new(store.clone()), Arc::new(SystemClock), "m");

    cutter
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let created = svc
        .create(CreateAgent {
            name: "committed in the dark".into(),
            instructions: "v1".into(),
            ..CreateAgent::default()
        })
        .await
        .expect("the write landed: it is reported done, not as a conflict with itself");
    assert_eq!(
        cutter.cut.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the COMMIT's answer was cut"
    );
    let id = created.agent.agent_id;
    let back = svc.get(&id, None).await.unwrap();
    assert_eq!(back.agent.agent_id, id);
    let events: Vec<_> = aop_core::Outbox::pending(&store, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.subject == id)
        .collect();
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "each event once");
    assert!(!events.is_empty());
}
