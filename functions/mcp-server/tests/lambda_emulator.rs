//! Runs the real `mcp-server` binary against the Lambda Runtime API emulator and feeds it API
//! Gateway HTTP API (payload 2.0) events, as Lambda would.

mod api;

use api::{API_HOST, Api, body_json};
use lambda_emulator::LambdaEmulator;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_gateway_events_round_trip_through_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_mcp-server"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("AOP_ALLOWED_HOSTS", API_HOST.to_owned()),
            ("AOP_ALLOWED_ORIGINS", "https://app.example.com".to_owned()),
        ],
    )
    .await;
    let mut api = Api::new(lambda);

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "emulator", "version": "1"}}});
    let response = api.request("POST", "/mcp", &[], Some(init)).await;
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

    let tools = api.rpc("tools/list", json!({})).await;
    let names: Vec<_> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"create_agent".to_owned()), "{names:?}");

    let created = api
        .rpc(
            "tools/call",
            json!({"name": "create_agent", "arguments": {"name": "lambda agent", "instructions": "hi"}}),
        )
        .await;
    let id = created["result"]["structuredContent"]["agent"]["agent_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = api
        .rpc(
            "tools/call",
            json!({"name": "get_agent", "arguments": {"agent_id": id}}),
        )
        .await;
    assert_eq!(
        read["result"]["structuredContent"]["agent"]["name"],
        "lambda agent"
    );

    let get = api.request("GET", "/mcp", &[], None).await;
    assert_eq!(get["statusCode"], 405, "{get}");

    let foreign = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}});
    let response = api
        .request(
            "POST",
            "/mcp",
            &[
                ("origin", "https://evil.example"),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            Some(foreign),
        )
        .await;
    assert_eq!(response["statusCode"], 403, "{response}");

    let health = api.request("GET", "/health", &[], None).await;
    assert_eq!(health["statusCode"], 200, "{health}");
    assert_eq!(body_json(&health)["store"]["up"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_oauth_or_an_authorizer_nothing_is_served_anonymously() {
    let dir = tempfile::tempdir().unwrap();
    let lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_mcp-server"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("AOP_ALLOWED_HOSTS", API_HOST.to_owned()),
        ],
    )
    .await;
    let mut api = Api::new(lambda);
    api.subject = None;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let refused = api
        .request(
            "POST",
            "/mcp",
            &[("mcp-protocol-version", "2025-11-25")],
            Some(list.clone()),
        )
        .await;
    assert_eq!(refused["statusCode"], 401, "{refused}");
    assert_eq!(body_json(&refused)["error"], "unauthenticated", "{refused}");
    let health = api.request("GET", "/health", &[], None).await;
    assert_eq!(health["statusCode"], 200, "{health}");
    // The same request through a JWT authorizer is served.
    api.subject = Some("emulated-user".to_owned());
    let served = api
        .request(
            "POST",
            "/mcp",
            &[("mcp-protocol-version", "2025-11-25")],
            Some(list),
        )
        .await;
    assert_eq!(served["statusCode"], 200, "{served}");
}
