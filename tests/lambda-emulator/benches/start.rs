//! Cold start of each function binary as Lambda sees it: from spawning the process to the answer
//! of its first event through the Runtime API emulator (init, configuration, store, first
//! invocation). Configuration comes from the environment, as with secrets already cached.
//!
//! `cargo bench -p lambda-emulator --bench start` after `cargo build --release -p mcp-server -p
//! event-processor -p outbox-relay`; `AOP_FUNCTIONS_DIR` points elsewhere (an absolute path; a
//! `CARGO_TARGET_DIR`'s `release`, as `scripts/bench` sets it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lambda_emulator::LambdaEmulator;
use serde_json::{Value, json};

const RUNS: usize = 10;

fn api_gateway_health() -> Value {
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/health", "rawQueryString": "",
        "headers": {"host": "abc123.execute-api.eu-west-1.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-west-1.amazonaws.com", "domainPrefix": "abc123",
            "http": {"method": "GET", "path": "/health", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "bench"},
            "requestId": "bench", "routeKey": "$default", "stage": "$default",
            "time": "27/Nov/2026:09:00:00 +0000", "timeEpoch": 1_795_770_000_000_i64
        },
        "isBase64Encoded": false
    })
}

fn msk_empty_batch() -> Value {
    json!({"eventSource": "aws:kafka",
           "eventSourceArn": "arn:aws:kafka:eu-west-1:123456789012:cluster/aop/abcd",
           "bootstrapServers": "127.0.0.1:1", "records": {}})
}

fn scheduled() -> Value {
    json!({"version": "0", "id": "bench", "detail-type": "Scheduled Event", "source": "aws.events",
           "account": "123456789012", "time": "2026-11-27T09:00:00Z", "region": "eu-west-1",
           "resources": [], "detail": {}})
}

async fn cold_start(binary: &Path, event: &Value) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let mut lambda = LambdaEmulator::start(
        binary.to_str().expect("utf-8 path"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            (
                "AOP_ALLOWED_HOSTS",
                "abc123.execute-api.eu-west-1.amazonaws.com".into(),
            ),
            // Producers are created at start but connect lazily; nothing is published here.
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1".into()),
        ],
    )
    .await;
    let answer = lambda.invoke(event.clone()).await;
    let elapsed = started.elapsed();
    assert!(answer.is_ok(), "{answer:?}");
    elapsed
}

fn main() {
    let dir = std::env::var_os("AOP_FUNCTIONS_DIR").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release")),
        PathBuf::from,
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for (name, event) in [
            ("mcp-server", api_gateway_health()),
            ("event-processor", msk_empty_batch()),
            ("outbox-relay", scheduled()),
        ] {
            let binary = dir.join(name);
            assert!(binary.exists(), "no {} (build the release binaries)", binary.display());
            let mut samples = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                samples.push(cold_start(&binary, &event).await);
            }
            samples.sort();
            println!(
                "cold start to first answer {name:<16} median {:.1} ms, max {:.1} ms over {RUNS} starts",
                samples[RUNS / 2].as_secs_f64() * 1e3,
                samples[RUNS - 1].as_secs_f64() * 1e3
            );
        }
    });
}
