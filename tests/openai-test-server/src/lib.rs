//! An OpenAI-compatible Chat Completions server for tests. It speaks the real wire format
//! (completions with usage, tool calls, error bodies, 429 with `Retry-After`, slow answers), so
//! the code under test is the real `async-openai` client over HTTP. Each test scripts the replies
//! it needs; with nothing scripted it asks the test's responder (a function of the request), and
//! without one it echoes the last user message at once.
//!
//! Tests in Rust use [`TestLlm`]; other processes use the binary and its control endpoints:
//! `POST /__script` (a JSON array of [`Reply`]), `GET /__requests`, `POST /__reset`. Requests for
//! the model [`REFUSING_MODEL`] always get a 400.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A model name the server refuses (HTTP 400) whatever is scripted.
pub const REFUSING_MODEL: &str = "always-refuses";

/// One scripted answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// An assistant message.
    Text {
        content: String,
        #[serde(default = "default_prompt_tokens")]
        prompt_tokens: u64,
        #[serde(default = "default_completion_tokens")]
        completion_tokens: u64,
    },
    /// Function calls: `(name, arguments JSON text)`.
    ToolCalls {
        calls: Vec<(String, String)>,
        #[serde(default = "default_prompt_tokens")]
        prompt_tokens: u64,
        #[serde(default = "default_completion_tokens")]
        completion_tokens: u64,
    },
    /// An error response with the provider's error body.
    Error {
        status: u16,
        message: String,
        #[serde(default)]
        code: Option<String>,
        /// Seconds, sent as `Retry-After`.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Waits, then answers with the next reply in line (or the echo).
    Delay { millis: u64 },
}

fn default_prompt_tokens() -> u64 {
    20
}

fn default_completion_tokens() -> u64 {
    10
}

impl Reply {
    pub fn text(content: &str) -> Self {
        Self::Text {
            content: content.to_owned(),
            prompt_tokens: default_prompt_tokens(),
            completion_tokens: default_completion_tokens(),
        }
    }

    pub fn tool_call(name: &str, arguments: Value) -> Self {
        Self::ToolCalls {
            calls: vec![(name.to_owned(), arguments.to_string())],
            prompt_tokens: default_prompt_tokens(),
            completion_tokens: default_completion_tokens(),
        }
    }

    pub fn error(status: u16, message: &str) -> Self {
        Self::Error {
            status,
            message: message.to_owned(),
            code: None,
            retry_after: None,
        }
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self::Error {
            status: 429,
            message: "Rate limit reached for requests".to_owned(),
            code: Some("rate_limit_exceeded".to_owned()),
            retry_after: Some(retry_after),
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// Answers a request from its body when nothing is scripted; `None` falls back to the echo.
pub type Responder = Arc<dyn Fn(&Value) -> Option<Reply> + Send + Sync>;

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    counter: Mutex<u64>,
    responder: Mutex<Option<Responder>>,
}

/// A running test server.
#[derive(Clone)]
pub struct TestLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TestLlm {
    /// Starts on a free loopback port, in the current tokio runtime.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        Self::serve(listener)
    }

    /// Serves on `listener`.
    ///
    /// # Panics
    /// When the listener has no local address.
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    /// The base URL to configure as `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues replies; they are used in order, one per request.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script).extend(replies);
    }

    /// Answers every request nothing is scripted for with `f` (a model whose answer depends on
    /// what it is asked, for concurrent callers).
    pub fn respond_with(&self, f: impl Fn(&Value) -> Option<Reply> + Send + Sync + 'static) {
        *lock(&self.shared.responder) = Some(Arc::new(f));
    }

    /// Every chat completion request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/__script", post(script))
        .route("/__requests", get(requests))
        .route("/__reset", post(reset))
        .with_state(shared)
}

async fn script(State(s): State<Arc<Shared>>, Json(replies): Json<Vec<Reply>>) -> StatusCode {
    lock(&s.script).extend(replies);
    StatusCode::NO_CONTENT
}

async fn requests(State(s): State<Arc<Shared>>) -> Json<Vec<Recorded>> {
    Json(lock(&s.requests).clone())
}

async fn reset(State(s): State<Arc<Shared>>) -> StatusCode {
    lock(&s.script).clear();
    lock(&s.requests).clear();
    StatusCode::NO_CONTENT
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "tests"}]}),
    )
}

async fn chat(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    lock(&s.requests).push(Recorded {
        path: "/v1/chat/completions".into(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    let n = {
        let mut c = lock(&s.counter);
        *c += 1;
        *c
    };
    let model = body["model"].as_str().unwrap_or("test-model").to_owned();
    // A model by this name refuses every request, whatever is scripted: a version of an agent
    // that always fails its turns.
    if model == REFUSING_MODEL {
        return error(
            400,
            "this model refuses every request",
            Some("model_refuses"),
            None,
        );
    }
    let mut reply = lock(&s.script).pop_front();
    while let Some(Reply::Delay { millis }) = reply {
        tokio::time::sleep(Duration::from_millis(millis)).await;
        reply = lock(&s.script).pop_front();
    }
    if reply.is_none() {
        let responder = lock(&s.responder).clone();
        reply = responder.and_then(|f| f(&body));
    }
    match reply {
        None => completion(n, &model, Some(&echo(&body)), &[], 20, 10),
        Some(Reply::Text {
            content,
            prompt_tokens,
            completion_tokens,
        }) => completion(
            n,
            &model,
            Some(&content),
            &[],
            prompt_tokens,
            completion_tokens,
        ),
        Some(Reply::ToolCalls {
            calls,
            prompt_tokens,
            completion_tokens,
        }) => completion(n, &model, None, &calls, prompt_tokens, completion_tokens),
        Some(Reply::Error {
            status,
            message,
            code,
            retry_after,
        }) => error(status, &message, code.as_deref(), retry_after),
        // Only a responder can still give a delay here: wait, then echo.
        Some(Reply::Delay { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            completion(n, &model, Some(&echo(&body)), &[], 20, 10)
        }
    }
}

fn echo(body: &Value) -> String {
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    format!("echo: {last_user}")
}

fn completion(
    n: u64,
    model: &str,
    content: Option<&str>,
    calls: &[(String, String)],
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Response {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({"id": format!("call_{n}_{i}"), "type": "function",
                   "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let finish = if calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    Json(json!({
        "id": format!("chatcmpl-test-{n}"),
        "object": "chat.completion",
        "created": 1_795_759_200u64,
        "model": model,
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}
    }))
    .into_response()
}

fn error(status: u16, message: &str, code: Option<&str>, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 => "invalid_request_error",
        429 => "requests",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after
        && let Ok(value) = secs.to_string().parse()
    {
        response.headers_mut().insert("retry-after", value);
    }
    response
}
