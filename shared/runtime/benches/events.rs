//! Event throughput and latency:
//! - events per second through the event processor for one 10,000-record MSK batch of
//!   `feedback.submitted` events on the embedded store (the Lambda code path);
//! - with `AOP_BENCH_KAFKA=host:port`, the time from `submit_feedback` returning to the metric
//!   reflecting it, through the outbox relay, the broker and the consumer group.
//!
//! `cargo bench -p aop-runtime --bench events`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aop_core::services::feedback::{MetricsQuery, SubmitFeedback};
use aop_core::{CreateAgent, EventType, HandlerSet};
use aop_events::CloudEvent;
use aop_events::kafka::{ClientSettings, KafkaDeadLetters};
use aop_events::msk::process_batch;
use aop_runtime::{Config, Overrides, Platform};
use aws_lambda_events::event::kafka::KafkaEvent;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio_util::sync::CancellationToken;

const RECORDS: usize = 10_000;
const LATENCY_SAMPLES: usize = 50;

fn platform(extra: &[(&str, String)], dir: &std::path::Path) -> (Config, Platform) {
    let mut env: BTreeMap<String, String> =
        [("AOP_DATA_DIR".to_owned(), dir.display().to_string())]
            .into_iter()
            .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    let config = Config::from_sources(None, &env, &Overrides::default()).expect("config");
    let platform = Platform::build(&config).expect("platform");
    (config, platform)
}

fn feedback(agent: &aop_core::AgentId, value: f64) -> SubmitFeedback {
    SubmitFeedback {
        caller: None,
        agent_id: agent.clone(),
        session_id: None,
        interaction_id: None,
        ratings: [("helpfulness".to_owned(), value)].into_iter().collect(),
        scale: None,
        comments: None,
        categories: Vec::new(),
        user_id: None,
    }
}

async fn batch_throughput() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, p) = platform(&[], dir.path());
    let agent = p
        .mcp
        .agents
        .create(CreateAgent {
            name: "bench".into(),
            instructions: "x".into(),
            ..CreateAgent::default()
        })
        .await
        .expect("agent")
        .agent
        .agent_id;
    for i in 0..RECORDS {
        p.mcp
            .feedback
            .submit(feedback(&agent, (i % 5 + 1) as f64))
            .await
            .expect("feedback");
    }
    let events: Vec<_> = p
        .mcp
        .stores
        .outbox
        .pending(u32::try_from(RECORDS * 2).unwrap_or(u32::MAX))
        .await
        .expect("outbox")
        .into_iter()
        .filter(|e| e.event_type() == EventType::FeedbackSubmitted)
        .collect();
    let mut partitions: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let partition = i % 4;
        partitions
            .entry(format!("feedback_events-{partition}"))
            .or_default()
            .push(serde_json::json!({
                "topic": "feedback_events", "partition": partition, "offset": i,
                "timestamp": 0, "timestampType": "CREATE_TIME",
                "key": STANDARD.encode(agent.as_str()),
                "value": STANDARD.encode(CloudEvent::from_domain(e, None).unwrap().to_bytes()),
                "headers": []
            }));
    }
    let batch: KafkaEvent =
        serde_json::from_value(serde_json::json!({"records": partitions})).expect("batch");
    let dead = KafkaDeadLetters::new(&ClientSettings::new("127.0.0.1:1")).expect("dlq");
    let started = Instant::now();
    let response = process_batch(&batch, &HandlerSet::new(p.handlers.clone()), &dead).await;
    let elapsed = started.elapsed();
    assert!(response.batch_item_failures.is_empty());
    println!(
        "event processor, one MSK batch of {} feedback.submitted records on the embedded store: {:.0} events/s ({:.2} s)",
        events.len(),
        events.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

async fn kafka_latency(servers: String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = format!("bench{}", std::process::id());
    let (config, p) = platform(
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", servers),
            ("KAFKA_TOPIC_AGENT_EVENTS", format!("{prefix}.agent_events")),
            (
                "KAFKA_TOPIC_FEEDBACK_EVENTS",
                format!("{prefix}.feedback_events"),
            ),
            (
                "KAFKA_TOPIC_EVOLUTION_EVENTS",
                format!("{prefix}.evolution_events"),
            ),
        ],
        dir.path(),
    );
    let settings = aop_runtime::adapters::kafka_client(&config).expect("kafka settings");
    let topics = config.kafka.topics.clone();
    let specs = config.kafka.topic_specs();
    aop_events::kafka::apply_topics(&settings, &specs)
        .await
        .expect("topics");
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(p.kafka_relay(&config).expect("relay").run(shutdown.clone()));
    let dead = KafkaDeadLetters::new(&settings).expect("dlq");
    let processor = HandlerSet::new(p.handlers.clone());
    let stop = shutdown.clone();
    let consumer = tokio::spawn(async move {
        let subscribed = [
            topics.agent_events.as_str(),
            topics.feedback_events.as_str(),
        ];
        aop_events::consumer::run(&settings, "bench", &subscribed, &processor, &dead, stop)
            .await
            .expect("consumer");
    });
    let agent = p
        .mcp
        .agents
        .create(CreateAgent {
            name: "bench".into(),
            instructions: "x".into(),
            ..CreateAgent::default()
        })
        .await
        .expect("agent")
        .agent
        .agent_id;
    let count = || async {
        p.mcp
            .feedback
            .metrics(MetricsQuery {
                agent_id: agent.clone(),
                version: None,
                metric: Some("helpfulness".into()),
                from: None,
                to: None,
            })
            .await
            .expect("metrics")
            .metrics
            .first()
            .map_or(0, |m| m.count)
    };
    let mut samples = Vec::new();
    for i in 0..=LATENCY_SAMPLES {
        p.mcp
            .feedback
            .submit(feedback(&agent, 3.0))
            .await
            .expect("feedback");
        let started = Instant::now();
        while count().await < (i + 1) as u64 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "metric never updated"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if i > 0 {
            // The first sample includes the consumer group join.
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "submit_feedback to updated metric through Kafka (relay, broker, consumer group): p50 {:.1} ms, p99 {:.1} ms ({} samples)",
        pick(0.5),
        pick(0.99),
        samples.len()
    );
    shutdown.cancel();
    let _ = relay.await;
    let _ = consumer.await;
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        batch_throughput().await;
        match std::env::var("AOP_BENCH_KAFKA") {
            Ok(servers) if !servers.is_empty() => kafka_latency(servers).await,
            _ => println!("(set AOP_BENCH_KAFKA=host:port to measure latency through a broker)"),
        }
    });
}
