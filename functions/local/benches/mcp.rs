//! Benchmarks of the release `aop` binary, as a user runs it: time from process start to the
//! first successful MCP response, idle memory, and `tools/call get_agent` throughput and
//! latency at a fixed concurrency. Prints numbers; asserts nothing about them.
//!
//! Run with `scripts/bench` (builds the release binaries first), or
//! `AOP_BIN=target/release/aop cargo bench -p aop-local --bench mcp`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const STARTS: usize = 10;
const CONCURRENCY: usize = 16;
const REQUESTS: usize = 20_000;

type Http = Client<HttpConnector, Full<Bytes>>;

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("AOP_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    PathBuf::from(target).join("release/aop")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(stateless: bool) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env("LOG_LEVEL", "warn")
        .env_remove("AOP_API_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if stateless {
        cmd.arg("--stateless").arg("--json-response");
    }
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e} (build with cargo build --release)",
            binary().display()
        )
    });
    Server {
        child,
        port,
        _dir: dir,
    }
}

fn rpc(port: u16, body: &Value) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("http://127.0.0.1:{port}/mcp"))
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn call(http: &Http, port: u16, body: &Value) -> Option<Value> {
    let response = http.request(rpc(port, body)).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}})
}

fn client() -> Http {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http()
}

/// Milliseconds from spawning the process to its first successful MCP response.
async fn time_to_first_response(http: &Http) -> f64 {
    let started = Instant::now();
    let server = spawn(true);
    let body = initialize();
    loop {
        if call(http, server.port, &body).await.is_some() {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        if started.elapsed() > Duration::from_secs(10) {
            panic!("no MCP response within 10 s");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let http = client();
        println!("binary: {}", binary().display());
        if let Ok(meta) = std::fs::metadata(binary()) {
            println!("binary size: {:.1} MiB", meta.len() as f64 / 1_048_576.0);
        }

        let mut starts = Vec::new();
        for _ in 0..STARTS {
            starts.push(time_to_first_response(&http).await);
        }
        starts.sort_by(f64::total_cmp);
        println!(
            "start to first MCP response: median {:.1} ms, min {:.1} ms, max {:.1} ms ({STARTS} starts)",
            percentile(&starts, 0.5),
            starts[0],
            starts[STARTS - 1]
        );

        let server = spawn(true);
        while call(&http, server.port, &initialize()).await.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!("idle memory (RSS) after start: {:.1} MiB", rss_kib(server.child.id()) as f64 / 1024.0);

        let created = call(
            &http,
            server.port,
            &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "create_agent",
                "arguments": {"name": "bench", "instructions": "You answer benchmark calls."}}}),
        )
        .await
        .expect("create_agent");
        let agent_id = created["result"]["structuredContent"]["agent"]["agent_id"]
            .as_str()
            .expect("agent id")
            .to_owned();
        let body = Arc::new(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "get_agent", "arguments": {"agent_id": agent_id}}}));

        // Warm-up, then the measured run.
        for _ in 0..500 {
            call(&http, server.port, &body).await.expect("warm-up call");
        }
        let started = Instant::now();
        let per_task = REQUESTS / CONCURRENCY;
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let http = http.clone();
                let body = body.clone();
                let port = server.port;
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        let reply = call(&http, port, &body).await.expect("get_agent");
                        assert!(reply["result"]["isError"] == false, "{reply}");
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(REQUESTS);
        for t in tasks {
            latencies.extend(t.await.expect("task"));
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        println!(
            "tools/call get_agent, stateless JSON, concurrency {CONCURRENCY}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({} calls)",
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len()
        );
        println!("memory (RSS) after the run: {:.1} MiB", rss_kib(server.child.id()) as f64 / 1024.0);
    });
}
