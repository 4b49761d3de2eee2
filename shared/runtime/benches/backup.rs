//! `aop backup` / `aop restore` throughput: an archive of 100 agents, 100,000 interactions and
//! 20,000 feedback records (two ratings each) is restored into the embedded store, backed up
//! from it, and (with `AOP_BENCH_NEO4J` and `AOP_BENCH_NEO4J_SPARE_DATABASE`, a database the
//! bench empties) restored into Neo4j and backed up from it. Prints records per second, the
//! archive's size, and the process's resident memory before and after each step.
//!
//! `cargo bench -p aop-runtime --bench backup`

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use aop_core::backup::{BackupSource, ExportPage, Kind, Record, RestoreTarget};
use aop_core::{StoreError, samples};
use aop_runtime::backup::{self, Header, Quiet};
use aop_store_neo4j::{Neo4jSettings, Neo4jStore, migrations};
use aop_store_sqlite::SqliteStore;
use async_trait::async_trait;
use secrecy::SecretString;

const AGENTS: usize = 100;
const INTERACTIONS: usize = 100_000;
const FEEDBACK: usize = 20_000;

/// Counts what is written and keeps nothing.
#[derive(Default)]
struct Counting(u64);

impl Write for &mut Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The synthetic store, kind by kind, made on demand a page at a time.
struct Synthetic {
    agents: Vec<aop_core::AgentId>,
}

impl Synthetic {
    fn record(&self, kind: Kind, i: usize) -> Record {
        let agent = &self.agents[i % AGENTS];
        match kind {
            Kind::Version => Record::Version(samples::version(agent, 1, "answer briefly")),
            Kind::Agent => Record::Agent(samples::agent(agent)),
            Kind::Interaction => {
                let mut turn = samples::interaction(agent, 1);
                turn.interaction_id =
                    aop_core::session::InteractionId::try_from(format!("int_{i:032}")).unwrap();
                Record::Interaction(turn)
            }
            _ => {
                let mut f = samples::feedback(agent, 1, &[("helpfulness", 4.0), ("accuracy", 5.0)]);
                f.feedback_id =
                    aop_core::session::FeedbackId::try_from(format!("fb_{i:032}")).unwrap();
                f.interaction_id = Some(
                    aop_core::session::InteractionId::try_from(format!("int_{i:032}")).unwrap(),
                );
                Record::Feedback(f)
            }
        }
    }

    fn count(kind: Kind) -> usize {
        match kind {
            Kind::Version | Kind::Agent => AGENTS,
            Kind::Interaction => INTERACTIONS,
            Kind::Feedback => FEEDBACK,
            _ => 0,
        }
    }
}

#[async_trait]
impl BackupSource for Synthetic {
    fn reads_one_snapshot(&self) -> bool {
        true
    }

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
        let end = (start + limit as usize).min(Self::count(kind));
        Ok(ExportPage {
            records: (start..end).map(|i| self.record(kind, i)).collect(),
            next: (end < Self::count(kind)).then(|| end.to_string()),
        })
    }
}

fn header() -> Header {
    Header {
        format: backup::FORMAT.into(),
        version: backup::FORMAT_VERSION,
        created_at: 0,
        source: "bench".into(),
        aop: env!("CARGO_PKG_VERSION").into(),
    }
}

async fn restore_into(name: &str, archive: &[u8], target: &dyn RestoreTarget) {
    let verified = backup::verify(archive).expect("verify");
    let before = rss_mib();
    let started = Instant::now();
    let summary = backup::restore(archive, &verified, target, &Quiet)
        .await
        .expect("restore");
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{name:<8} restore {} records: {elapsed:.2} s ({:.0} records/s); RSS {before:.0} -> {:.0} MiB",
        summary.records,
        summary.records as f64 / elapsed,
        rss_mib()
    );
}

async fn backup_from(name: &str, source: &dyn BackupSource) {
    let mut out = Counting::default();
    let before = rss_mib();
    let started = Instant::now();
    let summary = backup::write_backup(source, &mut out, &header(), &Quiet)
        .await
        .expect("backup");
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{name:<8} backup  {} records: {elapsed:.2} s ({:.0} records/s), archive {:.1} MiB; RSS {before:.0} -> {:.0} MiB",
        summary.records,
        summary.records as f64 / elapsed,
        out.0 as f64 / 1_048_576.0,
        rss_mib()
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let synthetic = Synthetic {
            agents: (0..AGENTS)
                .map(|i| aop_core::AgentId::try_from(format!("agt_{i:032}")).unwrap())
                .collect(),
        };
        let mut archive = Vec::new();
        backup::write_backup(&synthetic, &mut archive, &header(), &Quiet)
            .await
            .expect("archive");
        let started = Instant::now();
        backup::verify(&archive[..]).expect("verify");
        println!(
            "archive  {} records in {:.1} MiB; checked whole in {:.2} s",
            AGENTS * 2 + INTERACTIONS + FEEDBACK,
            archive.len() as f64 / 1_048_576.0,
            started.elapsed().as_secs_f64()
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(aop_store_sqlite::DB_FILE);
        let staged = SqliteStore::stage_restore(&path).expect("stage");
        restore_into("embedded", &archive, staged.store()).await;
        staged.commit().expect("commit");
        let sqlite = Arc::new(SqliteStore::open(&path).expect("open"));
        backup_from("embedded", &sqlite.snapshot().expect("snapshot")).await;

        let (Ok(uri), Ok(database)) = (
            std::env::var("AOP_BENCH_NEO4J"),
            std::env::var("AOP_BENCH_NEO4J_SPARE_DATABASE"),
        ) else {
            println!(
                "neo4j: skipped (set AOP_BENCH_NEO4J=bolt://host:port and \
                 AOP_BENCH_NEO4J_SPARE_DATABASE to a database the bench may empty)"
            );
            return;
        };
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
        let mut config = Neo4jSettings::new(
            uri,
            env("AOP_BENCH_NEO4J_USER", "root"),
            SecretString::from(env("AOP_BENCH_NEO4J_PASSWORD", "aop-test-password")),
        );
        config.database = database;
        config.operation_timeout = std::time::Duration::from_secs(120);
        let neo4j = Neo4jStore::new(config).expect("neo4j");
        neo4j.erase_everything().await.expect("erase");
        migrations::migrate(&neo4j).await.expect("migrate");
        restore_into("neo4j", &archive, &neo4j).await;
        backup_from("neo4j", &neo4j).await;
    });
}
