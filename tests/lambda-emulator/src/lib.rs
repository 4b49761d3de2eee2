//! A Lambda Runtime API emulator: it starts a real function binary with
//! `AWS_LAMBDA_RUNTIME_API` pointing at itself, hands it events through `/invocation/next`
//! and collects what the function posts back, as the Lambda service does.

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

const API: &str = "/2018-06-01/runtime";

type Outcome = (String, Result<Value, Value>);

#[derive(Clone)]
struct Shared {
    queue: Arc<Mutex<VecDeque<(String, Value)>>>,
    ready: Arc<Notify>,
    results: mpsc::UnboundedSender<Outcome>,
}

async fn next(State(s): State<Shared>) -> Response {
    loop {
        let item = s
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        if let Some((id, event)) = item {
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
                + 30_000;
            let mut headers = HeaderMap::new();
            let mut set = |name: &'static str, value: String| {
                if let Ok(v) = value.parse() {
                    headers.insert(name, v);
                }
            };
            set("lambda-runtime-aws-request-id", id);
            set("lambda-runtime-deadline-ms", deadline.to_string());
            set(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:test".to_owned(),
            );
            set(
                "lambda-runtime-trace-id",
                "Root=1-67891233-abcdef012345678912345678".to_owned(),
            );
            return (headers, axum::Json(event)).into_response();
        }
        s.ready.notified().await;
    }
}

fn parse(body: String) -> Value {
    serde_json::from_str(&body).unwrap_or(Value::String(body))
}

async fn respond(State(s): State<Shared>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = s.results.send((id, Ok(parse(body))));
    StatusCode::ACCEPTED
}

async fn fail(State(s): State<Shared>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = s.results.send((id, Err(parse(body))));
    StatusCode::ACCEPTED
}

async fn init_error(State(s): State<Shared>, body: String) -> StatusCode {
    let _ = s.results.send(("init".into(), Err(parse(body))));
    StatusCode::ACCEPTED
}

/// A function binary running against the emulator.
pub struct LambdaEmulator {
    shared: Shared,
    results: mpsc::UnboundedReceiver<Outcome>,
    child: Child,
    counter: usize,
    output: Arc<std::sync::Mutex<String>>,
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LambdaEmulator {
    /// Starts `binary` with a clean environment plus the Lambda variables and `env`.
    ///
    /// # Panics
    /// When the emulator cannot bind or the binary cannot start.
    pub async fn start(binary: &str, env: &[(&str, String)]) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            queue: Arc::default(),
            ready: Arc::new(Notify::new()),
            results: tx,
        };
        let app = Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(respond))
            .route(&format!("{API}/invocation/{{id}}/error"), post(fail))
            .route(&format!("{API}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the emulator");
        let addr = listener.local_addr().expect("emulator address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "test")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/test")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/27/[$LATEST]0123")
            .env("AWS_REGION", "eu-west-1")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start the function binary");
        // Everything the function prints is kept (tests scan it) and shown with the test.
        let output = Arc::new(std::sync::Mutex::new(String::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for stream in streams {
            let output = output.clone();
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    eprintln!("{line}");
                    let mut all = output
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        Self {
            shared,
            results: rx,
            child,
            counter: 0,
            output,
        }
    }

    /// Everything the function printed so far (its logs), stdout and stderr.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Everything the function printed once it contains `needle`, waiting up to `timeout` for it;
    /// everything printed so far when the time is up. Its output comes through a pipe and a
    /// reader thread, which on a loaded machine can lag behind its answer, so a line printed
    /// before answering (the metrics line) may not be in [`output`](Self::output) yet.
    pub async fn output_containing(&self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let output = self.output();
            if output.contains(needle) || tokio::time::Instant::now() >= deadline {
                return output;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Invokes the function with `event`: `Ok` with its response, or `Err` with the error it
    /// reported (an init error included).
    ///
    /// # Panics
    /// When the function does not answer within 30 s.
    pub async fn invoke(&mut self, event: Value) -> Result<Value, Value> {
        self.counter += 1;
        let id = format!("req-{}", self.counter);
        self.shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push_back((id.clone(), event));
        self.shared.ready.notify_waiters();
        self.shared.ready.notify_one();
        let (got, result) = tokio::time::timeout(Duration::from_secs(30), self.results.recv())
            .await
            .expect("the function answers within 30 s")
            .expect("emulator channel open");
        if got != "init" {
            assert_eq!(got, id, "answers arrive for the invocation sent");
        }
        result
    }

    pub fn request_count(&self) -> usize {
        self.counter
    }
}
