//! Store latency on Neo4j (over Bolt) next to the embedded store:
//! - `get_agent` and `list_agents` (a page of 50) latency, p50 and p99, on 200 agents;
//! - the time to write 10,000 interactions one by one (`record_turn`);
//! - fitness events (one rating each) applied one by one (`apply_once`, a transaction each)
//!   and in batches of 500 (`apply_each_once`, the event processor's path), same run.
//!
//! `AOP_BENCH_NEO4J=bolt://127.0.0.1:PORT cargo bench -p aop-runtime --bench stores`
//! (user `AOP_BENCH_NEO4J_USER`, default `root`; password `AOP_BENCH_NEO4J_PASSWORD`, default
//! `aop-test-password`; database `AOP_BENCH_NEO4J_DATABASE`, default `neo4j`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aop_core::feedback::{FitnessUpdate, Metric};
use aop_core::session::{Interaction, InteractionId, InteractionStatus, TokenUsage};
use aop_core::{
    AgentFilter, AgentId, AgentService, AgentStore, CreateAgent, FeedbackStore, PageRequest,
    SessionStore, SystemClock,
};
use aop_store_neo4j::{Neo4jSettings, Neo4jStore, migrations};
use aop_store_sqlite::SqliteStore;
use secrecy::SecretString;

const AGENTS: usize = 200;
const GETS: usize = 2_000;
const LISTS: usize = 500;
const INTERACTIONS: usize = 10_000;
const FITNESS_EVENTS: usize = 2_000;
const FITNESS_BATCH: usize = 500;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1_000.0
}

async fn seed(store: Arc<dyn AgentStore>) -> Vec<AgentId> {
    let svc = AgentService::new(store, Arc::new(SystemClock), "bench-model");
    let mut ids = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let created = svc
            .create(CreateAgent {
                name: format!("bench agent {i}"),
                domain: Some("bench".into()),
                instructions: "answer briefly".into(),
                ..CreateAgent::default()
            })
            .await
            .expect("create");
        ids.push(created.agent.agent_id);
    }
    ids
}

async fn reads(name: &str, store: Arc<dyn AgentStore>) {
    let ids = seed(store.clone()).await;
    let mut samples = Vec::with_capacity(GETS);
    for i in 0..GETS {
        let started = Instant::now();
        store
            .get_agent(&ids[i % ids.len()])
            .await
            .expect("get")
            .expect("found");
        samples.push(started.elapsed());
    }
    println!(
        "{name:<8} get_agent   p50 {:.3} ms  p99 {:.3} ms  ({GETS} calls)",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );
    let filter = AgentFilter {
        domain: Some("bench".into()),
        ..AgentFilter::default()
    };
    let page = PageRequest {
        after: None,
        limit: 50,
    };
    let mut samples = Vec::with_capacity(LISTS);
    for _ in 0..LISTS {
        let started = Instant::now();
        let listed = store.list_agents(&filter, &page).await.expect("list");
        assert!(listed.len() > 50);
        samples.push(started.elapsed());
    }
    println!(
        "{name:<8} list_agents p50 {:.3} ms  p99 {:.3} ms  ({LISTS} pages of 50)",
        percentile(&mut samples, 0.5),
        percentile(&mut samples, 0.99)
    );
}

fn interaction(agent: &AgentId) -> Interaction {
    Interaction {
        invoked_by: None,
        interaction_id: InteractionId::generate(),
        agent_id: agent.clone(),
        version: 1,
        session_id: None,
        parent_interaction_id: None,
        input: "What is the capital of France?".into(),
        output: Some("Paris.".into()),
        model: "bench-model".into(),
        usage: TokenUsage {
            prompt_tokens: 24,
            completion_tokens: 3,
        },
        cost_usd: Some(0.000_01),
        latency_ms: 420,
        tool_calls: Vec::new(),
        status: InteractionStatus::Completed,
        error: None,
        created_at: 1_790_000_000_000,
    }
}

async fn one_by_one(name: &str, store: Arc<dyn SessionStore>, agent: &AgentId) {
    let started = Instant::now();
    for _ in 0..INTERACTIONS {
        store
            .record_turn(&interaction(agent), &[], &[])
            .await
            .expect("record");
    }
    let elapsed = started.elapsed();
    println!(
        "{name:<8} {INTERACTIONS} interactions one by one: {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        INTERACTIONS as f64 / elapsed.as_secs_f64()
    );
}

/// Events per second applying `FITNESS_EVENTS` rating events one by one, then as many new ones
/// in batches.
async fn fitness(name: &str, store: Arc<dyn FeedbackStore>, agent: &AgentId) {
    let events = |tag: &str| -> Vec<(String, Vec<FitnessUpdate>)> {
        let run = uuid::Uuid::now_v7();
        (0..FITNESS_EVENTS)
            .map(|i| {
                (
                    format!("bench-{run}-{tag}-{i}"),
                    vec![FitnessUpdate {
                        agent_id: agent.clone(),
                        version: 1,
                        metric: Metric::rating("helpfulness"),
                        value: (i % 5) as f64 / 4.0,
                    }],
                )
            })
            .collect()
    };
    let single = events("single");
    let started = Instant::now();
    for (id, updates) in &single {
        store.apply_once(id, updates).await.expect("apply");
    }
    let one_by_one = FITNESS_EVENTS as f64 / started.elapsed().as_secs_f64();
    let batched = events("batch");
    let started = Instant::now();
    for chunk in batched.chunks(FITNESS_BATCH) {
        let refs: Vec<(&str, &[FitnessUpdate])> = chunk
            .iter()
            .map(|(id, u)| (id.as_str(), u.as_slice()))
            .collect();
        store.apply_each_once(&refs).await.expect("apply batch");
    }
    let in_batches = FITNESS_EVENTS as f64 / started.elapsed().as_secs_f64();
    println!(
        "{name:<8} {FITNESS_EVENTS} fitness events: one by one {one_by_one:.0}/s, in batches of {FITNESS_BATCH} {in_batches:.0}/s ({:.1}x)",
        in_batches / one_by_one
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = Arc::new(SqliteStore::open_dir(dir.path()).expect("sqlite"));
        reads("embedded", sqlite.clone()).await;
        let agent = seed(sqlite.clone()).await.remove(0);
        // Durable commits (the default) against NORMAL, in the same run.
        one_by_one("embedded", sqlite.clone(), &agent).await;
        sqlite.set_durable(false).expect("synchronous = NORMAL");
        one_by_one("normal", sqlite.clone(), &agent).await;
        sqlite.set_durable(true).expect("synchronous = FULL");
        fitness("embedded", sqlite, &agent).await;

        let Ok(uri) = std::env::var("AOP_BENCH_NEO4J") else {
            println!("neo4j: skipped (set AOP_BENCH_NEO4J=bolt://host:port)");
            return;
        };
        let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
        let mut config = Neo4jSettings::new(
            uri,
            env("AOP_BENCH_NEO4J_USER", "root"),
            SecretString::from(env("AOP_BENCH_NEO4J_PASSWORD", "aop-test-password")),
        );
        config.database = env("AOP_BENCH_NEO4J_DATABASE", "neo4j");
        config.operation_timeout = Duration::from_secs(60);
        let neo4j = Neo4jStore::new(config).expect("neo4j");
        migrations::migrate(&neo4j).await.expect("migrate");
        let neo4j = Arc::new(neo4j);
        reads("neo4j", neo4j.clone()).await;
        let agent = seed(neo4j.clone()).await.remove(0);
        one_by_one("neo4j", neo4j.clone(), &agent).await;
        fitness("neo4j", neo4j, &agent).await;
    });
}
