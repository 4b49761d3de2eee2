//! Benchmarks of the release `aop` binary, as a user runs it: time from process start to the
//! first successful MCP response, idle memory, and `tools/call get_agent` throughput and
//! latency, next to a bare rmcp server with one trivial tool (`examples/bare-mcp.rs`, the same
//! rmcp, the same HTTP stack and runtime) measured the same way in the same run: each server
//! pinned to core 0 (`taskset`), the load from the other core, server CPU per call from
//! `/proc/PID/stat`. Prints numbers and ratios; asserts nothing about them.
//!
//! Run with `scripts/bench` (builds the release binaries first), or
//! `AOP_BIN=target/release/aop AOP_BARE_BIN=target/release/examples/bare-mcp cargo bench -p aop-local --bench mcp`.

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
/// Calls one after another, for the latency tail.
const SEQUENTIAL: usize = 5_000;
/// Rounds of the comparison; each server's best round is reported.
const ROUNDS: usize = 3;
const API_KEY: &str = "bench-key-0123456789abcdef";

type Http = Client<HttpConnector, Full<Bytes>>;

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("AOP_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    PathBuf::from(target).join("release/aop")
}

fn bare_binary() -> PathBuf {
    if let Ok(path) = std::env::var("AOP_BARE_BIN") {
        return PathBuf::from(path);
    }
    binary()
        .parent()
        .map(|dir| dir.join("examples/bare-mcp"))
        .expect("the binary's directory")
}

/// `taskset -c CORE` when it exists and there are cores to spare.
fn pinned(core: usize, program: &std::path::Path) -> Command {
    let spare = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
    if spare && Command::new("taskset").arg("-V").output().is_ok() {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(core.to_string()).arg(program);
        cmd
    } else {
        Command::new(program)
    }
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
    _dir: TempDir,
}

/// A data directory removed when dropped. Written here rather than taken from `tempfile`: that
/// crate, as a dev-dependency, turns on `bitflags/std` and so rebuilds SQLite, reqwest and the
/// platform's own crates for the benchmark, which would then measure another `aop` than the
/// one `cargo build --release` makes (and that the link order in `aop.order` was taken from).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("aop-bench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(stateless: bool) -> Server {
    let dir = TempDir::new();
    let port = free_port();
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env("LOG_LEVEL", "warn")
        .env_remove("AOP_API_KEYS")
        // The benchmark is one caller sending as fast as it can: no rate limit.
        .env("AOP_RATE_LIMIT_PER_MINUTE", "0")
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

fn rpc(port: u16, key: Option<&str>, body: &Value) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::post(format!("http://127.0.0.1:{port}/mcp"))
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn call(http: &Http, port: u16, body: &Value) -> Option<Value> {
    call_as(http, port, None, body).await
}

async fn call_as(http: &Http, port: u16, key: Option<&str>, body: &Value) -> Option<Value> {
    let response = http.request(rpc(port, key, body)).await.ok()?;
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

/// The bare rmcp server on a free port, started by `command` (its binary, perhaps behind
/// `taskset`).
fn bare_server(mut command: Command) -> Server {
    let port = free_port();
    let child = command
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (cargo build --release -p aop-local --example bare-mcp)",
                bare_binary().display()
            )
        });
    Server {
        child,
        port,
        _dir: TempDir::new(),
    }
}

/// The bare rmcp server as the start-up reference, placed like the platform's starts.
fn spawn_bare() -> Server {
    bare_server(Command::new(bare_binary()))
}

/// Milliseconds from spawning the process `start` spawns to its first successful MCP response.
async fn time_to_first_response(http: &Http, start: fn() -> Server) -> f64 {
    let started = Instant::now();
    let server = start();
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

        // Alternating with the bare rmcp server's starts, so both meet the machine in the same
        // state (its start does little work, so it shows the floor, not the machine's speed).
        let (mut starts, mut bare_starts) = (Vec::new(), Vec::new());
        for _ in 0..STARTS {
            starts.push(time_to_first_response(&http, || spawn(true)).await);
            bare_starts.push(time_to_first_response(&http, spawn_bare).await);
        }
        starts.sort_by(f64::total_cmp);
        bare_starts.sort_by(f64::total_cmp);
        println!(
            "start to first MCP response: median {:.1} ms, min {:.1} ms, max {:.1} ms ({STARTS} starts); \
             bare rmcp tool, same run: median {:.1} ms, min {:.1} ms",
            percentile(&starts, 0.5),
            starts[0],
            starts[STARTS - 1],
            percentile(&bare_starts, 0.5),
            bare_starts[0],
        );

        let server = spawn(true);
        while call(&http, server.port, &initialize()).await.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "idle memory (RSS) after start: {:.1} MiB",
            rss_kib(server.child.id()) as f64 / 1024.0
        );
        drop(server);

        compare(&http).await;
    });
}

/// A server under measurement and the call it answers.
struct Target {
    name: &'static str,
    server: Server,
    key: Option<&'static str>,
    body: Value,
    idle_rss_mib: f64,
}

/// Starts the bare rmcp server and the platform (API key, metrics, logging at the default
/// level, stateless JSON, the embedded store), each pinned to core 0, and waits until both
/// answer; the platform gets one agent to read.
async fn targets(http: &Http) -> [Target; 2] {
    let bare = bare_server(pinned(0, &bare_binary()));

    let dir = TempDir::new();
    let port = free_port();
    let child = pinned(0, &binary())
        .arg("serve")
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--stateless")
        .arg("--json-response")
        .env("LOG_LEVEL", "info")
        .env("AOP_API_KEYS", format!("bench={API_KEY}"))
        .env("AOP_RATE_LIMIT_PER_MINUTE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aop");
    let platform = Server {
        child,
        port,
        _dir: dir,
    };

    let key = Some(API_KEY);
    let echo = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "echo", "arguments": {"text": "benchmark"}}});
    let create = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "create_agent",
        "arguments": {"name": "bench", "instructions": "You answer benchmark calls."}}});
    let started = Instant::now();
    let created = loop {
        let bare_up = call(http, bare.port, &echo).await.is_some();
        if let Some(created) = call_as(http, platform.port, key, &create).await
            && bare_up
        {
            break created;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the servers did not answer within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let agent_id = created["result"]["structuredContent"]["agent"]["agent_id"]
        .as_str()
        .expect("agent id")
        .to_owned();
    let get_agent = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "get_agent", "arguments": {"agent_id": agent_id}}});
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = |s: &Server| rss_kib(s.child.id()) as f64 / 1024.0;
    [
        Target {
            name: "bare rmcp tool (echo)",
            idle_rss_mib: idle(&bare),
            server: bare,
            key: None,
            body: echo,
        },
        Target {
            name: "aop get_agent",
            idle_rss_mib: idle(&platform),
            server: platform,
            key,
            body: get_agent,
        },
    ]
}

/// CPU time (user and system) the process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis start at the third; utime and stime are
    // the 14th and 15th, in clock ticks (USER_HZ, 100 on Linux).
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    match (fields.get(11), fields.get(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / 100.0,
        _ => 0.0,
    }
}

/// `total` calls from `concurrency` clients; the sorted latencies in ms and the wall time.
async fn run_load(
    http: &Http,
    target: &Target,
    concurrency: usize,
    total: usize,
) -> (Vec<f64>, f64) {
    let per_task = total / concurrency;
    let body = Arc::new(target.body.clone());
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let http = http.clone();
            let body = body.clone();
            let port = target.server.port;
            let key = target.key;
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    let reply = call_as(&http, port, key, &body).await.expect("a reply");
                    assert!(reply["result"]["isError"] == false, "{reply}");
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        latencies.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (latencies, elapsed)
}

#[derive(Default, Clone, Copy)]
struct Measured {
    rps: f64,
    cpu_us: f64,
    p99_c16: f64,
    p50_c1: f64,
    p99_c1: f64,
    max_c1: f64,
}

async fn compare(http: &Http) {
    let targets = targets(http).await;
    for target in &targets {
        for _ in 0..1_000 {
            call_as(http, target.server.port, target.key, &target.body)
                .await
                .expect("warm-up call");
        }
    }
    let mut best = [Measured::default(); 2];
    for _ in 0..ROUNDS {
        for (target, best) in targets.iter().zip(best.iter_mut()) {
            let pid = target.server.child.id();
            let cpu_before = cpu_seconds(pid);
            let (latencies, elapsed) = run_load(http, target, CONCURRENCY, REQUESTS).await;
            let cpu = cpu_seconds(pid) - cpu_before;
            let rps = latencies.len() as f64 / elapsed;
            if rps > best.rps {
                best.rps = rps;
                best.cpu_us = cpu / latencies.len() as f64 * 1e6;
                best.p99_c16 = percentile(&latencies, 0.99);
            }
        }
    }
    for (target, best) in targets.iter().zip(best.iter_mut()) {
        let (latencies, _) = run_load(http, target, 1, SEQUENTIAL).await;
        best.p50_c1 = percentile(&latencies, 0.5);
        best.p99_c1 = percentile(&latencies, 0.99);
        best.max_c1 = latencies[latencies.len() - 1];
    }
    println!();
    println!(
        "same run, each server on core 0, stateless JSON tools/call; best of {ROUNDS} rounds of {REQUESTS} calls at concurrency {CONCURRENCY}, then {SEQUENTIAL} calls one at a time"
    );
    println!(
        "| server | req/s c{CONCURRENCY} | server CPU per call | p99 c{CONCURRENCY} | p50 c1 | p99 c1 | max c1 | idle RSS | RSS after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (target, m) in targets.iter().zip(best.iter()) {
        println!(
            "| {} | {:.0} | {:.1} µs | {:.2} ms | {:.3} ms | {:.3} ms | {:.2} ms | {:.1} MiB | {:.1} MiB |",
            target.name,
            m.rps,
            m.cpu_us,
            m.p99_c16,
            m.p50_c1,
            m.p99_c1,
            m.max_c1,
            target.idle_rss_mib,
            rss_kib(target.server.child.id()) as f64 / 1024.0
        );
    }
    println!(
        "aop get_agent / bare rmcp tool: throughput {:.0}%, CPU per call {:.2}x",
        best[1].rps / best[0].rps * 100.0,
        best[1].cpu_us / best[0].cpu_us
    );
}
