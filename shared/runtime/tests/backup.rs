//! `aop backup` / `aop restore` underneath: archives of a store filled the way the platform
//! fills it, restored into new stores and backed up again, record for record the same; a backup
//! taken while writes go on is a consistent snapshot; damaged, truncated and foreign archives are
//! refused before anything is loaded, and a store with data is never restored into. With
//! `AOP_TEST_NEO4J` and `AOP_TEST_NEO4J_SPARE_DATABASE` (a database the test may empty), the
//! round trip embedded -> Neo4j -> embedded, and an interrupted restore into Neo4j that a second
//! run finishes.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aop_core::backup::{BackupSource, ExportPage, Kind, QuarantinedRecord, Record, RestoreTarget};
use aop_core::contract::Fixture;
use aop_core::{AgentService, CreateAgent, StoreError, SystemClock};
use aop_runtime::backup::{self, BackupError, Header, Quiet};
use aop_store_sqlite::SqliteStore;
use async_trait::async_trait;
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

fn header() -> Header {
    Header {
        format: backup::FORMAT.into(),
        version: backup::FORMAT_VERSION,
        created_at: 1_790_000_000_000,
        source: "test".into(),
        aop: "test".into(),
    }
}

async fn archive_of(source: &dyn BackupSource) -> Vec<u8> {
    let mut out = Vec::new();
    backup::write_backup(source, &mut out, &header(), &Quiet)
        .await
        .expect("backup");
    out
}

fn lines(archive: &[u8]) -> Vec<String> {
    let mut text = String::new();
    MultiGzDecoder::new(archive)
        .read_to_string(&mut text)
        .expect("gzip");
    text.lines().map(str::to_owned).collect()
}

/// The record lines of an archive: what must be the same whatever store it came from.
fn records(archive: &[u8]) -> Vec<String> {
    let all = lines(archive);
    all[1..all.len() - 1].to_vec()
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

fn fixture(store: &SqliteStore) -> Fixture {
    Fixture::new(Arc::new(store.clone()), ())
}

async fn populated() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    aop_core::contract::backup::populate(&fixture(&store))
        .await
        .expect("populate");
    (dir, store)
}

/// Every record of a store, kind by kind, as a backup reads them.
async fn all_records(source: &dyn BackupSource) -> Vec<Record> {
    let mut all = Vec::new();
    for kind in Kind::ALL {
        all.extend(source.export(kind, None, 10_000).await.unwrap().records);
    }
    all
}

/// A new agent named `name`.
fn agent(name: String) -> CreateAgent {
    CreateAgent {
        name,
        instructions: "be brief".into(),
        ..CreateAgent::default()
    }
}

/// Restores `archive` into a new embedded store the way `aop restore` does.
async fn restore_embedded(archive: &[u8]) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(aop_store_sqlite::DB_FILE);
    let verified = backup::verify(archive).expect("verify");
    backup::restore_embedded(&path, archive, &verified, &Quiet)
        .await
        .expect("restore");
    let store = SqliteStore::open(&path).unwrap();
    (dir, store)
}

/// A source that serves a fixed list of records, a page at a time.
struct Listed(Vec<Record>);

#[async_trait]
impl BackupSource for Listed {
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        Ok(Vec::new())
    }

    async fn export(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ExportPage, StoreError> {
        let start: usize = after.map_or(0, |a| a.parse().unwrap());
        let of_kind: Vec<Record> = self
            .0
            .iter()
            .filter(|r| r.kind() == kind)
            .cloned()
            .collect();
        let end = (start + limit as usize).min(of_kind.len());
        Ok(ExportPage {
            records: of_kind[start..end].to_vec(),
            next: (end < of_kind.len()).then(|| end.to_string()),
        })
    }
}

fn counts(archive: &[u8]) -> std::collections::BTreeMap<Kind, u64> {
    backup::verify(archive).unwrap().summary.counts
}

#[tokio::test]
async fn an_embedded_store_restores_into_a_new_one_record_for_record() {
    let (_dir, store) = populated().await;
    let first = archive_of(&store.snapshot().unwrap()).await;
    let held = counts(&first);
    for kind in Kind::ALL {
        if kind != Kind::Quarantined {
            assert!(
                held.get(&kind).copied().unwrap_or(0) > 0,
                "no {kind} in {held:?}"
            );
        }
    }

    let (_restored_dir, restored) = restore_embedded(&first).await;
    let second = archive_of(&restored.snapshot().unwrap()).await;
    assert_eq!(records(&first), records(&second));

    // The restored store serves what was stored, through the ports the platform uses.
    use aop_core::{AgentFilter, AgentStore, Outbox, PageRequest, StatusFilter};
    let agents = restored
        .list_agents(
            &AgentFilter {
                status: StatusFilter::Any,
                ..AgentFilter::default()
            },
            &PageRequest {
                after: None,
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(agents.len(), 2);
    let writer = agents.iter().find(|a| a.name == "backup-writer").unwrap();
    assert_eq!(writer.latest_version, 2);
    assert_eq!(
        writer.alias("prod").unwrap().routes.len(),
        2,
        "the canary's split"
    );
    assert!(
        restored
            .get_version(&writer.agent_id, 2)
            .await
            .unwrap()
            .is_some()
    );
    let pending = restored.pending(100).await.unwrap();
    assert_eq!(pending.len() as u64, held[&Kind::Outbox]);
}

#[tokio::test]
async fn a_store_with_data_is_not_restored_into_and_is_named() {
    let (_dir, store) = populated().await;
    let archive = archive_of(&store.snapshot().unwrap()).await;
    let verified = backup::verify(&archive[..]).unwrap();
    let err = backup::restore(&archive[..], &verified, &store, &Quiet)
        .await
        .unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("2 agents"), "{message}");
    assert!(message.contains("3 agent versions"), "{message}");
    // Nothing was added: the store holds what it held.
    let again = archive_of(&store.snapshot().unwrap()).await;
    assert_eq!(records(&archive), records(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_writes_go_on_is_one_moment_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    store.set_durable(false).unwrap();
    let service = AgentService::new(Arc::new(store.clone()), Arc::new(SystemClock), "m");
    let create = |n: usize| agent(format!("agent {n}"));
    // Several pages of every kind the writer touches.
    for n in 0..1_200 {
        service.create(create(n)).await.unwrap();
    }
    let written = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (service, written, stop) = (service.clone(), written.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 10_000;
            while !stop.load(Ordering::Relaxed) {
                service.create(create(n)).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    while written.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = written.load(Ordering::Relaxed);
    let archive = archive_of(&store.snapshot().unwrap()).await;
    let during = written.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(during > 0, "the writer made nothing while the backup ran");

    // Versions come first and the outbox last: without one snapshot, the agents and events
    // written in between would not match the versions.
    let held = counts(&archive);
    let agents = held[&Kind::Agent];
    assert_eq!(held[&Kind::Version], agents, "one version per agent");
    let created_events = records(&archive)
        .iter()
        .filter(|l| l.contains(r#""event_type":"agent.created""#))
        .count() as u64;
    assert_eq!(created_events, agents, "one agent.created event per agent");
    assert!(agents >= 1_220, "{agents}");
    let (_restored_dir, restored) = restore_embedded(&archive).await;
    assert_eq!(
        counts(&archive_of(&restored.snapshot().unwrap()).await),
        held
    );
}

/// A source that cannot read one snapshot, written to once while it is read: when the
/// interactions are first read, `late` joins the records (as a write landing in the middle of a
/// backup would).
struct WrittenDuring {
    records: std::sync::Mutex<Vec<Record>>,
    late: std::sync::Mutex<Option<Record>>,
}

impl WrittenDuring {
    /// The populated store's records but its first session, which arrives when the
    /// interactions are first read.
    async fn new() -> Self {
        let (_dir, store) = populated().await;
        let mut all = all_records(&store.snapshot().unwrap()).await;
        let first_session = all.iter().position(|r| r.kind() == Kind::Session).unwrap();
        let late = all.remove(first_session);
        Self {
            records: std::sync::Mutex::new(all),
            late: std::sync::Mutex::new(Some(late)),
        }
    }
}

#[async_trait]
impl BackupSource for WrittenDuring {
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
        Ok(Vec::new())
    }

    async fn export(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ExportPage, StoreError> {
        let late = if kind == Kind::Interaction && after.is_none() {
            self.late.lock().unwrap().take()
        } else {
            None
        };
        if let Some(late) = late {
            let mut records = self.records.lock().unwrap();
            let at = records
                .iter()
                .position(|r| r.kind() == late.kind())
                .unwrap_or(records.len());
            records.insert(at, late);
        }
        let records = self.records.lock().unwrap().clone();
        Listed(records).export(kind, after, limit).await
    }
}

#[tokio::test]
async fn a_backup_of_a_store_written_while_it_was_read_gets_no_end_line_or_is_taken_again() {
    // Read twice, the sessions differ: the archive is refused, naming what changed.
    let source = WrittenDuring::new().await;
    let mut out = Vec::new();
    let err = backup::write_backup(&source, &mut out, &header(), &Quiet)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackupError::Changed { kinds, attempts: 1 } if kinds == &[Kind::Session]),
        "{err:?}"
    );
    assert!(err.to_string().contains("(sessions)"), "{err}");
    let again = BackupError::Changed {
        kinds: vec![Kind::Agent],
        attempts: 3,
    }
    .to_string();
    assert!(
        again.contains("on each of 3 tries; the last time (agents)"),
        "{again}"
    );
    let refused = backup::verify(&out[..]).unwrap_err().to_string();
    assert!(refused.contains("end line"), "{refused}");

    // To a file, the backup starts over and the second reading agrees with the first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aop.jsonl.gz");
    let source = WrittenDuring::new().await;
    let sessions = source
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.kind() == Kind::Session)
        .count() as u64;
    let summary = backup::backup_to_file(&source, &path, &header(), &Quiet, 2)
        .await
        .expect("the second attempt reads one moment");
    let archive = std::fs::read(&path).unwrap();
    assert_eq!(backup::verify(&archive[..]).unwrap().summary, summary);
    assert_eq!(summary.counts[&Kind::Session], sessions + 1);
    assert!(!backup::partial_path(&path).exists());

    // One attempt only: nothing is left behind, and an existing file is never overwritten.
    let other = dir.path().join("other.jsonl.gz");
    let err = backup::backup_to_file(&WrittenDuring::new().await, &other, &header(), &Quiet, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BackupError::Changed { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(!other.exists() && !backup::partial_path(&other).exists());
    let exists = backup::backup_to_file(&Listed(Vec::new()), &path, &header(), &Quiet, 1)
        .await
        .unwrap_err();
    assert!(
        matches!(&exists, BackupError::Exists(p) if p == &path),
        "{exists:?}"
    );
    assert!(exists.to_string().contains("exists"), "{exists}");
    assert_eq!(std::fs::read(&path).unwrap(), archive);
}

#[tokio::test]
async fn damaged_truncated_and_foreign_archives_are_refused_saying_why() {
    let (_dir, store) = populated().await;
    let archive = archive_of(&store.snapshot().unwrap()).await;
    let text = lines(&archive).join("\n") + "\n";
    let refused = |bytes: &[u8]| backup::verify(bytes).unwrap_err().to_string();

    let cut = refused(&archive[..archive.len() / 2]);
    assert!(cut.contains("damaged or truncated"), "{cut}");

    let without_end = text[..text.rfind("{\"end\"").unwrap()].to_owned();
    let message = refused(&gzip(&without_end));
    assert!(
        message.contains("truncated") && message.contains("without its end line"),
        "{message}"
    );

    let changed = text.replacen("backup-writer", "backup-wr1ter", 1);
    let message = refused(&gzip(&changed));
    assert!(message.contains("checksum"), "{message}");

    let newer = text.replacen(
        &format!("\"version\":{}", backup::FORMAT_VERSION),
        "\"version\":99",
        1,
    );
    let message = refused(&gzip(&newer));
    assert!(message.contains("format version 99"), "{message}");

    let message = refused(b"{\"not\":\"gzip\"}\n");
    assert!(message.contains("damaged or truncated"), "{message}");
    let message = refused(&gzip("{\"hello\":1}\n"));
    assert!(message.contains("not an aop-backup archive"), "{message}");

    // An archive replaced between the check and the load is not loaded past the change, and
    // an embedded restore then leaves nothing behind.
    let verified = backup::verify(&archive[..]).unwrap();
    let (_other_dir, other) = populated().await;
    let replaced = archive_of(&other.snapshot().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(aop_store_sqlite::DB_FILE);
    let staged = SqliteStore::stage_restore(&path).unwrap();
    let message = backup::restore(&replaced[..], &verified, staged.store(), &Quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("changed while it was restored"),
        "{message}"
    );
    drop(staged);
    assert!(!path.exists(), "no database was put in place");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the staged file is removed: {leftovers:?}"
    );

    // A record this build cannot read names its line.
    let mut broken: Vec<String> = lines(&archive);
    broken.insert(2, r#"{"kind":"agent","data":{"agent_id":"x"}}"#.into());
    let message = refused(&gzip(&(broken.join("\n") + "\n")));
    assert!(message.contains("line 3"), "{message}");
}

mod neo4j {
    use super::*;
    use aop_store_neo4j::{Neo4jSettings, Neo4jStore, migrations};
    use aop_test_support::{Service, service};
    use secrecy::SecretString;

    /// The tests share the spare database: one at a time.
    static SPARE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A database of its own that the test empties (held until the guard drops), or `None`
    /// (saying why) to skip.
    async fn spare() -> Option<(tokio::sync::MutexGuard<'static, ()>, Neo4jStore)> {
        let uri = service(Service::Neo4j)?;
        let Ok(database) = std::env::var("AOP_TEST_NEO4J_SPARE_DATABASE") else {
            assert!(
                std::env::var_os("AOP_REQUIRE_SERVICES").is_none(),
                "AOP_TEST_NEO4J_SPARE_DATABASE is not set, but AOP_REQUIRE_SERVICES requires \
                 the tests that need it"
            );
            eprintln!(
                "SKIPPED (service not configured): set AOP_TEST_NEO4J_SPARE_DATABASE to a \
                 database of the Bolt server this test may empty \
                 (infra/neo4j/arcadedb create PORT aoprestore)"
            );
            return None;
        };
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let mut config = Neo4jSettings::new(
            uri,
            env("AOP_TEST_NEO4J_USER", "root"),
            SecretString::from(env("AOP_TEST_NEO4J_PASSWORD", "aop-test-password")),
        );
        config.database = database;
        let guard = SPARE.lock().await;
        let store = Neo4jStore::new(config).unwrap();
        store.erase_everything().await.unwrap();
        migrations::migrate(&store).await.unwrap();
        Some((guard, store))
    }

    /// Fails the `fail_at`-th import, as a restore killed half-way would stop.
    struct Interrupted<'a> {
        inner: &'a Neo4jStore,
        calls: AtomicUsize,
        fail_at: usize,
    }

    #[async_trait]
    impl RestoreTarget for Interrupted<'_> {
        async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
            RestoreTarget::census(self.inner).await
        }
        async fn restored_so_far(&self, archive: &str) -> Result<Option<u64>, StoreError> {
            self.inner.restored_so_far(archive).await
        }
        async fn import(
            &self,
            archive: &str,
            done: u64,
            records: &[Record],
        ) -> Result<(), StoreError> {
            if self.calls.fetch_add(1, Ordering::Relaxed) + 1 == self.fail_at {
                return Err(StoreError::Permanent {
                    message: "the operator pressed ctrl-c".into(),
                    source: None,
                });
            }
            self.inner.import(archive, done, records).await
        }
        async fn finish_restore(&self, archive: &str) -> Result<(), StoreError> {
            self.inner.finish_restore(archive).await
        }
    }

    /// The graph, and one agent created through the platform's service when the sessions are
    /// first read (after the agents and versions were).
    struct AgentCreatedDuring<'a> {
        graph: &'a Neo4jStore,
        service: AgentService,
        created: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl BackupSource for AgentCreatedDuring<'_> {
        async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError> {
            BackupSource::census(self.graph).await
        }
        async fn export(
            &self,
            kind: Kind,
            after: Option<&str>,
            limit: u32,
        ) -> Result<ExportPage, StoreError> {
            if kind == Kind::Session && !self.created.swap(true, Ordering::SeqCst) {
                self.service
                    .create(agent("written during the backup".into()))
                    .await
                    .expect("create an agent");
            }
            self.graph.export(kind, after, limit).await
        }
    }

    #[tokio::test]
    async fn a_graph_written_during_a_backup_is_read_again_until_both_readings_agree() {
        let Some((_one_at_a_time, graph)) = spare().await else {
            return;
        };
        assert!(!graph.reads_one_snapshot());
        let service = AgentService::new(Arc::new(graph.clone()), Arc::new(SystemClock), "m");
        for n in 0..3 {
            service.create(agent(format!("agent {n}"))).await.unwrap();
        }
        let during = AgentCreatedDuring {
            graph: &graph,
            service: service.clone(),
            created: std::sync::atomic::AtomicBool::new(false),
        };
        let mut out = Vec::new();
        let err = backup::write_backup(&during, &mut out, &header(), &Quiet)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackupError::Changed { kinds, .. } if kinds == &[Kind::Version, Kind::Agent]),
            "{err:?}"
        );

        // Taken again, the archive is one moment: every agent with its version and its event.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("graph.jsonl.gz");
        let during = AgentCreatedDuring {
            graph: &graph,
            service,
            created: std::sync::atomic::AtomicBool::new(false),
        };
        let summary = backup::backup_to_file(&during, &path, &header(), &Quiet, 2)
            .await
            .expect("the second attempt");
        assert_eq!(summary.counts[&Kind::Agent], 5);
        assert_eq!(summary.counts[&Kind::Version], 5);
        let archive = std::fs::read(&path).unwrap();
        let events = records(&archive)
            .iter()
            .filter(|l| l.contains(r#""event_type":"agent.created""#))
            .count();
        assert_eq!(events, 5, "one agent.created event per agent");
    }

    #[tokio::test]
    async fn embedded_to_neo4j_to_embedded_gives_the_same_records() {
        let Some((_one_at_a_time, graph)) = spare().await else {
            return;
        };
        let (_dir, store) = populated().await;
        // Every kind, a quarantined event too (the platform sets one aside only when it
        // cannot read it, which a populated store has no reason to do).
        let mut all = all_records(&store.snapshot().unwrap()).await;
        all.push(Record::Quarantined(QuarantinedRecord {
            event_id: "0190f000-0000-7000-8000-000000000001".into(),
            event_type: "agent.renamed".into(),
            subject: "agt_unknown".into(),
            data: "{\"name\": \"x\"".into(),
            error: "unknown event type".into(),
            quarantined_at: 1_790_000_000_000,
        }));
        let first = archive_of(&Listed(all)).await;
        let verified = backup::verify(&first[..]).unwrap();

        // Interrupted after the third batch: what is in stays, the graph refuses to serve.
        let interrupted = Interrupted {
            inner: &graph,
            calls: AtomicUsize::new(0),
            fail_at: 4,
        };
        let err = backup::restore(&first[..], &verified, &interrupted, &Quiet)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ctrl-c"), "{err}");
        let refused = migrations::check(&graph).await.unwrap_err().to_string();
        assert!(refused.contains("unfinished restore"), "{refused}");
        // A different archive is not mixed in.
        let other = archive_of(&Listed(Vec::new())).await;
        let other_verified = backup::verify(&other[..]).unwrap();
        let mixed = backup::restore(&other[..], &other_verified, &graph, &Quiet)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            mixed.contains("unfinished restore of another archive"),
            "{mixed}"
        );

        // Run again: it carries on and finishes.
        backup::restore(&first[..], &verified, &graph, &Quiet)
            .await
            .unwrap();
        migrations::check(&graph).await.unwrap();
        let second = archive_of(&graph).await;
        assert_eq!(records(&first), records(&second));

        let (_dir, back) = restore_embedded(&second).await;
        let third = archive_of(&back.snapshot().unwrap()).await;
        assert_eq!(records(&first), records(&third));

        // The graph serves what was restored, lineage and aliases included.
        use aop_core::{AgentStore, SessionStore};
        let writer = records(&second)
            .iter()
            .find_map(|l| match serde_json::from_str::<Record>(l).unwrap() {
                Record::Agent(a) if a.name == "backup-writer" => Some(a),
                _ => None,
            })
            .unwrap();
        let served = graph.get_agent(&writer.agent_id).await.unwrap().unwrap();
        assert_eq!(served, writer);
        let v2 = graph
            .get_version(&writer.agent_id, 2)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v2.parents.len(), 1, "v2 evolved from v1");
        let turns = graph
            .list_interactions(
                &writer.agent_id,
                &aop_core::PageRequest {
                    after: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(turns.len(), 2);
    }
}
