//! Runs the real `mcp-server` binary against a small Lambda Runtime API emulator and feeds it
//! API Gateway HTTP API (payload 2.0) events, as Lambda would.

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

const API: &str = "/2018-06-01/runtime";
const FIXTURE: &str = include_str!("fixtures/apigw_http_v2_request.json");
const API_HOST: &str = "abc123.execute-api.eu-west-1.amazonaws.com";

#[derive(Clone)]
struct Emulator {
    queue: Arc<Mutex<VecDeque<(String, Value)>>>,
    ready: Arc<Notify>,
    results: mpsc::UnboundedSender<(String, Result<Value, Value>)>,
}

async fn next(State(e): State<Emulator>) -> Response {
    loop {
        let item = e.queue.lock().unwrap().pop_front();
        if let Some((id, event)) = item {
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 30_000;
            headers.insert(
                "lambda-runtime-deadline-ms",
                deadline.to_string().parse().unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:mcp-server"
                    .parse()
                    .unwrap(),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                "Root=1-67891233-abcdef012345678912345678".parse().unwrap(),
            );
            return (headers, axum::Json(event)).into_response();
        }
        e.ready.notified().await;
    }
}

async fn respond(State(e): State<Emulator>, Path(id): Path<String>, body: String) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let _ = e.results.send((id, Ok(value)));
    StatusCode::ACCEPTED
}

async fn fail(State(e): State<Emulator>, Path(id): Path<String>, body: String) -> StatusCode {
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let _ = e.results.send((id, Err(value)));
    StatusCode::ACCEPTED
}

async fn init_error(State(e): State<Emulator>, body: String) -> StatusCode {
    let _ = e.results.send(("init".into(), Err(Value::String(body))));
    StatusCode::ACCEPTED
}

struct Harness {
    emulator: Emulator,
    results: mpsc::UnboundedReceiver<(String, Result<Value, Value>)>,
    child: Child,
    counter: usize,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Harness {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let emulator = Emulator {
            queue: Arc::default(),
            ready: Arc::new(Notify::new()),
            results: tx,
        };
        let app = Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(respond))
            .route(&format!("{API}/invocation/{{id}}/error"), post(fail))
            .route(&format!("{API}/init/error"), post(init_error))
            .with_state(emulator.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mcp-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "mcp-server")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/mcp-server")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "2026/11/27/[$LATEST]0123")
            .env("AWS_REGION", "eu-west-1")
            .env("AOP_DATA_DIR", dir.path())
            .env("AOP_ALLOWED_HOSTS", API_HOST)
            .env("AOP_ALLOWED_ORIGINS", "https://app.example.com")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mcp-server binary");
        Self {
            emulator,
            results: rx,
            child,
            counter: 0,
            _dir: dir,
        }
    }

    /// Invokes the function with an API Gateway event and returns its API Gateway response.
    async fn invoke(
        &mut self,
        method: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Value {
        self.invoke_path(method, "/mcp", headers, body).await
    }

    async fn invoke_path(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Value {
        self.counter += 1;
        let id = format!("req-{}", self.counter);
        let mut event: Value = serde_json::from_str(FIXTURE).unwrap();
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        event["rawPath"] = json!(path);
        event["requestContext"]["requestId"] = json!(id);
        for (k, v) in headers {
            event["headers"][*k] = json!(v);
        }
        event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
        self.emulator
            .queue
            .lock()
            .unwrap()
            .push_back((id.clone(), event));
        self.emulator.ready.notify_waiters();
        self.emulator.ready.notify_one();
        let (got, result) = tokio::time::timeout(Duration::from_secs(20), self.results.recv())
            .await
            .expect("the function answers within 20 s")
            .expect("emulator channel open");
        assert_eq!(got, id, "answers arrive for the invocation sent");
        result.unwrap_or_else(|e| panic!("invocation failed: {e}"))
    }

    async fn rpc(&mut self, method: &str, params: Value) -> Value {
        let body =
            json!({"jsonrpc": "2.0", "id": self.counter + 1, "method": method, "params": params});
        let response = self
            .invoke(
                "POST",
                &[("mcp-protocol-version", "2025-11-25")],
                Some(body),
            )
            .await;
        assert_eq!(response["statusCode"], 200, "{response}");
        body_json(&response)
    }
}

fn body_json(response: &Value) -> Value {
    let raw = response["body"].as_str().unwrap_or_default();
    let text = if response["isBase64Encoded"] == true {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body expected: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gateway_events_round_trip_through_the_real_binary() {
    let mut lambda = Harness::start().await;

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "emulator", "version": "1"}}});
    let response = lambda.invoke("POST", &[], Some(init)).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let content_type = response["headers"]["content-type"]
        .as_str()
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "stateless JSON: {response}"
    );
    assert!(
        response["headers"]["mcp-session-id"].is_null(),
        "no sessions on Lambda"
    );
    let body = body_json(&response);
    assert_eq!(
        body["result"]["serverInfo"]["name"],
        "agent-orchestration-platform"
    );

    let tools = lambda.rpc("tools/list", json!({})).await;
    let names: Vec<_> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"create_agent".to_owned()), "{names:?}");

    let created = lambda
        .rpc(
            "tools/call",
            json!({"name": "create_agent", "arguments": {"name": "lambda agent", "instructions": "hi"}}),
        )
        .await;
    let agent = &created["result"]["structuredContent"]["agent"];
    let id = agent["agent_id"].as_str().unwrap().to_owned();
    let read = lambda
        .rpc(
            "tools/call",
            json!({"name": "get_agent", "arguments": {"agent_id": id}}),
        )
        .await;
    assert_eq!(
        read["result"]["structuredContent"]["agent"]["name"],
        "lambda agent"
    );

    let get = lambda.invoke("GET", &[], None).await;
    assert_eq!(get["statusCode"], 405, "{get}");

    let foreign = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}});
    let response = lambda
        .invoke(
            "POST",
            &[
                ("origin", "https://evil.example"),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            Some(foreign),
        )
        .await;
    assert_eq!(response["statusCode"], 403, "{response}");

    let health = lambda.invoke_path("GET", "/health", &[], None).await;
    assert_eq!(health["statusCode"], 200, "{health}");
    assert_eq!(body_json(&health)["store"]["up"], true);
}
