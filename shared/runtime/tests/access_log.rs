//! What the MCP server logs per request: at the default level one access line (request id,
//! route, status, duration, the tool and its outcome), nothing else; at `debug` the details.

use std::sync::{Arc, Mutex};

use aop_runtime::roles::mcp::McpRole;
use aop_runtime::{Config, Overrides, telemetry};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Lines {
    fn take(&self) -> Vec<Value> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A stateless (2026-07-28) `tools/call`.
fn call(tool: &str, arguments: Value) -> Request<Body> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": tool, "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    Request::post("/mcp")
        .header("host", "127.0.0.1:8000")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// The platform's MCP Router on the embedded store in a new directory (kept while the router
/// is used), JSON responses, plus `env`.
async fn platform(env: &[(&str, &str)]) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("AOP_DATA_DIR", dir.path().to_str().unwrap()),
        ("AOP_JSON_RESPONSE", "true"),
    ]
    .iter()
    .chain(env)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = Config::from_sources(None, &env, &Overrides::default()).unwrap();
    let role = McpRole::build(&config, None).unwrap();
    role.stores.prepare(&config).await.unwrap();
    (
        role.router(config.server.http_options(CancellationToken::new())),
        dir,
    )
}

/// Serves six requests (two tool calls that write and read, a refused call, a health check, a
/// call of a tool with a 10,000-character name that no tool has, a request whose `Mcp-Method`
/// header is not a method) with logging at `level`, and returns the log lines of each request.
async fn lines_per_request(level: &str) -> Vec<Vec<Value>> {
    let (router, _dir) = platform(&[("AOP_STATELESS", "true")]).await;

    let lines = Lines::default();
    let _guard =
        tracing::subscriber::set_default(telemetry::subscriber(level, lines.clone()).unwrap());
    let mut logged = Vec::new();

    let created = router
        .clone()
        .oneshot(call(
            "create_agent",
            json!({"name": "Support", "instructions": "Be kind."}),
        ))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    let body = created.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let id = body["result"]["structuredContent"]["agent"]["agent_id"].clone();
    assert!(id.is_string(), "{body}");
    logged.push(lines.take());

    for request in [
        call("get_agent", json!({"agent_id": id})),
        call("get_agent", json!({"agent_id": "agt_missing"})),
        Request::get("/health")
            .header("host", "127.0.0.1:8000")
            .body(Body::empty())
            .unwrap(),
        call(&"x".repeat(10_000), json!({})),
        {
            let mut garbage = call("get_agent", json!({"agent_id": id}));
            garbage.headers_mut().insert(
                "mcp-method",
                "tools/call; rm -rf ".repeat(50).parse().unwrap(),
            );
            garbage
        },
    ] {
        let response = router.clone().oneshot(request).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
        logged.push(lines.take());
    }
    logged
}

#[tokio::test(flavor = "current_thread")]
async fn at_the_default_level_each_request_writes_one_access_line() {
    let logged = lines_per_request("info").await;
    for lines in &logged {
        assert_eq!(lines.len(), 1, "{lines:#?}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["message"], "request", "{line}");
        assert!(
            line["request_id"].as_str().is_some_and(|id| id.len() >= 8),
            "{line}"
        );
        assert!(
            line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{line}"
        );
    }
    let [created, found, missing, health, unknown, garbage] =
        [0, 1, 2, 3, 4, 5].map(|i| &logged[i][0]);
    assert_eq!(created["tool"], "create_agent");
    assert_eq!(created["outcome"], "ok");
    assert_eq!(created["status"], 200);
    assert_eq!(created["route"], "/mcp");
    assert_eq!(created["rpc"], "tools/call");
    assert_eq!(found["tool"], "get_agent");
    assert_eq!(missing["tool"], "get_agent");
    assert_eq!(missing["outcome"], "tool_error");
    assert_eq!(health["route"], "/health");
    assert_eq!(health["method"], "GET");
    assert!(health.get("tool").is_none(), "{health}");
    // What a caller sends is not written into the log as it came.
    assert_eq!(unknown["tool"], "unknown", "{unknown}");
    assert!(unknown.to_string().len() < 1_000, "{unknown}");
    assert_eq!(garbage["rpc"], "other", "{garbage}");
}

#[tokio::test(flavor = "current_thread")]
async fn at_debug_the_details_are_there_too() {
    let logged = lines_per_request("debug").await;
    let messages: Vec<&str> = logged[0]
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(messages.contains(&"agent created"), "{messages:?}");
    assert_eq!(messages.last(), Some(&"request"), "{messages:?}");
    // The SDK's own lines for every MCP request come back at `debug`.
    for lines in &logged[..3] {
        assert!(
            lines
                .iter()
                .any(|l| l["module"].as_str().is_some_and(|m| m.starts_with("rmcp"))),
            "{lines:#?}"
        );
    }
}

/// A tool's own log lines carry the id of the request that called it: at `debug` (rmcp's spans
/// on, between the request's span and the tool) and with only the platform's code at `debug`
/// (rmcp's spans off, the tool running straight inside the request's span).
#[tokio::test(flavor = "current_thread")]
async fn a_tools_own_lines_carry_its_requests_id() {
    for level in ["debug", "info,aop_core=debug"] {
        let logged = lines_per_request(level).await;
        let created = &logged[0];
        let access = created.last().unwrap();
        assert_eq!(access["message"], "request", "{level}: {created:#?}");
        let id = access["request_id"].as_str().unwrap();
        let tool_line = created
            .iter()
            .find(|l| l["message"] == "agent created")
            .unwrap_or_else(|| panic!("{level}: {created:#?}"));
        assert_eq!(tool_line["request_id"], id, "{level}: {tool_line}");
        // And no other request's id: each request's lines carry its own.
        let found = &logged[1];
        let other = found.last().unwrap()["request_id"].as_str().unwrap();
        assert_ne!(other, id, "{level}");
    }
}

/// In a session the tool runs in the session's task, which was started under the request that
/// opened the session: its lines still carry the id of the request that called it.
#[tokio::test(flavor = "current_thread")]
async fn in_a_session_a_tools_lines_carry_the_calling_requests_id() {
    let (router, _dir) = platform(&[]).await;
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(
        telemetry::subscriber("info,aop_core=debug", lines.clone()).unwrap(),
    );
    let post = |body: Value, session: Option<&str>| {
        let mut request = Request::post("/mcp")
            .header("host", "127.0.0.1:8000")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.body(Body::from(body.to_string())).unwrap()
    };

    let opened = router
        .clone()
        .oneshot(post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                              "clientInfo": {"name": "test", "version": "1"}}}),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    let session = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = opened.into_body().collect().await.unwrap();
    let initialized = router
        .clone()
        .oneshot(post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some(&session),
        ))
        .await
        .unwrap();
    let _ = initialized.into_body().collect().await.unwrap();
    let opening: Vec<Value> = lines.take();
    let called = router
        .clone()
        .oneshot(post(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "create_agent",
                "arguments": {"name": "Support", "instructions": "Be kind."}}}),
            Some(&session),
        ))
        .await
        .unwrap();
    assert_eq!(called.status(), StatusCode::OK);
    let _ = called.into_body().collect().await.unwrap();
    let logged = lines.take();

    let access = logged
        .iter()
        .find(|l| l["message"] == "request")
        .unwrap_or_else(|| panic!("{logged:#?}"));
    let id = access["request_id"].as_str().unwrap();
    let tool_line = logged
        .iter()
        .find(|l| l["message"] == "agent created")
        .unwrap_or_else(|| panic!("{logged:#?}"));
    assert_eq!(tool_line["request_id"], id, "{tool_line}");
    assert!(
        opening.iter().all(|l| l["request_id"] != id),
        "{opening:#?}"
    );
}
