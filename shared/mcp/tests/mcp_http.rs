//! The MCP endpoint through its real Router (in process, no socket): tools, resources, errors,
//! authentication, Origin/Host checks, request ids, health and metrics.

use std::sync::Arc;

use aop_core::deployment::CanaryPolicy;
use aop_core::llm::UnconfiguredModel;
use aop_core::pricing::PriceTable;
use aop_core::services::conversation::TurnLimits;
use aop_core::services::proposals::ReviewRules;
use aop_core::{
    AgentService, ConversationService, DeploymentService, EvolutionRules, EvolutionService,
    FeedbackService, ProposalService, SystemClock,
};
use aop_mcp::{AgentServer, HttpOptions, Metrics, Services, ToolCatalog, Toolset};
use aop_store_sqlite::SqliteStore;
use axum::body::Body;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::prop_assert;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: axum::Router,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl TestApp {
    fn new(configure: impl FnOnce(&mut HttpOptions)) -> Self {
        Self::offering(&[], false, configure)
    }

    /// A server offering only `toolsets` (every tool when empty), listing output schemas when
    /// `output_schemas` is set.
    fn offering(
        toolsets: &[Toolset],
        output_schemas: bool,
        configure: impl FnOnce(&mut HttpOptions),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_dir(dir.path()).unwrap());
        let agents = AgentService::new(store.clone(), Arc::new(SystemClock), "test-model");
        let metrics = Arc::new(Metrics::new());
        let conversations = ConversationService::new(
            store.clone(),
            store.clone(),
            Arc::new(UnconfiguredModel),
            Arc::new(SystemClock),
            PriceTable::default(),
            TurnLimits::default(),
            metrics.clone(),
        );
        let mut options = HttpOptions {
            stateless: true,
            json_response: true,
            ..HttpOptions::default()
        };
        configure(&mut options);
        let feedback = FeedbackService::new(
            store.clone(),
            store.clone(),
            store.clone(),
            Arc::new(SystemClock),
        );
        let deployments = DeploymentService::new(
            store.clone(),
            store.clone(),
            Arc::new(SystemClock),
            CanaryPolicy::default(),
        );
        let proposals = ProposalService::new(
            agents.clone(),
            deployments.clone(),
            store.clone(),
            Arc::new(SystemClock),
            ReviewRules::default(),
        );
        let evolutions = EvolutionService::new(
            agents.clone(),
            deployments.clone(),
            proposals.clone(),
            store.clone(),
            Arc::new(UnconfiguredModel),
            PriceTable::default(),
            Arc::new(SystemClock),
            EvolutionRules::default(),
        );
        let services = Services {
            agents,
            conversations,
            feedback,
            deployments,
            proposals,
            evolutions,
        };
        let m = metrics.clone();
        let tools = ToolCatalog::new(toolsets, output_schemas);
        let server = AgentServer::new(services, m, tools);
        let router = aop_mcp::router(move || server.clone(), options, metrics, store);
        Self { router, _dir: dir }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A stateless 2026-07-28 request.
    fn rpc(method: &str) -> http::request::Builder {
        Request::post("/mcp")
            .header("host", "127.0.0.1:8000")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
    }

    fn body(method: &str, mut params: Value) -> Body {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        Body::from(
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
        )
    }

    async fn call(&self, method: &str, params: Value) -> Reply {
        let mut builder = Self::rpc(method);
        if let Some(name) = params.get("name").and_then(Value::as_str)
            && method == "tools/call"
        {
            builder = builder.header("mcp-name", name);
        }
        if let Some(uri) = params.get("uri").and_then(Value::as_str) {
            builder = builder.header("mcp-name", uri);
        }
        self.send(builder.body(Self::body(method, params)).unwrap())
            .await
    }

    /// Calls a tool and returns its result object.
    async fn tool(&self, name: &str, arguments: Value) -> Value {
        let reply = self
            .call("tools/call", json!({"name": name, "arguments": arguments}))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body["result"].clone()
    }

    async fn ok(&self, name: &str, arguments: Value) -> Value {
        let result = self.tool(name, arguments).await;
        assert_eq!(result["isError"], false, "{result}");
        result["structuredContent"].clone()
    }

    async fn tool_error(&self, name: &str, arguments: Value) -> String {
        let result = self.tool(name, arguments).await;
        assert_eq!(result["isError"], true, "{result}");
        result["content"][0]["text"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn every_tool_is_listed_with_input_and_output_schemas() {
    let app = TestApp::offering(&[], true, |_| {});
    let reply = app.call("tools/list", json!({})).await;
    let tools = reply.body["result"]["tools"].as_array().unwrap().clone();
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "add_eval_cases",
            "archive_agent",
            "cancel_evolution",
            "create_agent",
            "deploy_version",
            "end_session",
            "get_agent",
            "get_canary",
            "get_evolution_status",
            "get_feedback_metrics",
            "get_messages",
            "initialize_evolution",
            "list_agent_versions",
            "list_agents",
            "list_candidates",
            "list_deployments",
            "list_eval_cases",
            "list_evolutions",
            "list_interactions",
            "list_proposals",
            "promote_canary",
            "propose_version",
            "remove_eval_case",
            "review_proposal",
            "rollback_agent",
            "run_agent",
            "select_evolution_candidate",
            "send_message",
            "start_canary",
            "start_session",
            "submit_feedback",
            "update_agent"
        ]
    );
    for tool in &tools {
        assert!(
            tool["description"].as_str().is_some_and(|d| d.len() > 20),
            "{tool}"
        );
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["outputSchema"]["type"], "object", "{tool}");
    }
    let create = tools.iter().find(|t| t["name"] == "create_agent").unwrap();
    let required = create["inputSchema"]["required"].as_array().unwrap();
    assert!(required.contains(&json!("name")) && required.contains(&json!("instructions")));

    // By default the listing leaves the output schemas out; results stay structured.
    let app = TestApp::new(|_| {});
    let (tools, _) = listing(&app).await;
    assert_eq!(tools.len(), names.len());
    assert!(tools.iter().all(|t| t.get("outputSchema").is_none()));
    let created = app
        .ok("create_agent", json!({"name": "a", "instructions": "b"}))
        .await;
    assert_eq!(created["version"]["version"], 1);
}

/// The tools that made up the whole surface before deployments and evolutions arrived.
const FIRST_TOOLSETS: [Toolset; 3] = [Toolset::Agents, Toolset::Sessions, Toolset::Feedback];
/// What a client may pay in its model's context for those 14 tools, and so per tool.
const LISTING_BUDGET: usize = 20_000;

async fn listing(app: &TestApp) -> (Vec<Value>, usize) {
    let reply = app.call("tools/list", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let tools = reply.body["result"]["tools"].as_array().unwrap().clone();
    let bytes = serde_json::to_vec(&reply.body["result"]).unwrap().len();
    (tools, bytes)
}

#[tokio::test]
async fn the_tool_listing_fits_a_models_context_budget() {
    let (first, first_bytes) = listing(&TestApp::offering(&FIRST_TOOLSETS, false, |_| {})).await;
    assert_eq!(first.len(), 14);
    assert!(
        first_bytes <= LISTING_BUDGET,
        "14 tools list in {first_bytes} bytes"
    );
    let (all, all_bytes) = listing(&TestApp::new(|_| {})).await;
    assert!(
        all_bytes * first.len() <= LISTING_BUDGET * all.len(),
        "{} tools list in {all_bytes} bytes, over {} per tool",
        all.len(),
        LISTING_BUDGET / first.len()
    );
}

/// Every `$ref` in `value` points into the same schema's `$defs`.
fn assert_refs_resolve(tool: &str, root: &Value, value: &Value) {
    match value {
        Value::Object(object) => {
            if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                let target = reference
                    .strip_prefix("#")
                    .and_then(|pointer| root.pointer(pointer));
                assert!(target.is_some(), "{tool}: `$ref` {reference} leads nowhere");
            }
            object
                .values()
                .for_each(|v| assert_refs_resolve(tool, root, v));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| assert_refs_resolve(tool, root, v)),
        _ => {}
    }
}

#[tokio::test]
async fn every_schema_is_standard_json_schema_a_strict_validator_accepts() {
    let (tools, _) = listing(&TestApp::offering(&[], true, |_| {})).await;
    for tool in &tools {
        let name = tool["name"].as_str().unwrap();
        for key in ["inputSchema", "outputSchema"] {
            let schema = &tool[key];
            jsonschema::meta::validate(schema)
                .unwrap_or_else(|e| panic!("{name} {key} is not JSON Schema: {e}"));
            // Unknown `format` values are errors here, as in AJV's strict mode.
            jsonschema::options()
                .should_validate_formats(true)
                .should_ignore_unknown_formats(false)
                .build(schema)
                .unwrap_or_else(|e| panic!("{name} {key} is refused: {e}"));
            assert_refs_resolve(name, schema, schema);
        }
    }
}

#[tokio::test]
async fn results_match_the_output_schemas_the_listing_gives() {
    let app = TestApp::offering(&[], true, |_| {});
    let (tools, _) = listing(&app).await;
    let schema = |name: &str| {
        let tool = tools.iter().find(|t| t["name"] == name).unwrap();
        jsonschema::validator_for(&tool["outputSchema"]).unwrap()
    };
    let created = app
        .ok(
            "create_agent",
            json!({"name": "Support", "instructions": "Be kind.", "domain": "support",
                   "capabilities": [{"name": "refund", "description": "refunds"}]}),
        )
        .await;
    let id = created["agent"]["agent_id"].clone();
    let listed = app.ok("list_agents", json!({"limit": 5})).await;
    let versions = app.ok("list_agent_versions", json!({"agent_id": id})).await;
    for (name, result) in [
        ("create_agent", &created),
        ("list_agents", &listed),
        ("list_agent_versions", &versions),
    ] {
        let errors: Vec<String> = schema(name)
            .iter_errors(result)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?} in {result}");
    }
}

#[tokio::test]
async fn a_deployment_offers_only_the_toolsets_it_names() {
    let app = TestApp::offering(&[Toolset::Deployments, Toolset::Feedback], false, |_| {});
    let (tools, _) = listing(&app).await;
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "deploy_version",
            "get_canary",
            "get_feedback_metrics",
            "list_deployments",
            "list_proposals",
            "promote_canary",
            "propose_version",
            "review_proposal",
            "rollback_agent",
            "start_canary",
            "submit_feedback"
        ]
    );
    let reply = app
        .call(
            "tools/call",
            json!({"name": "create_agent", "arguments": {"name": "a", "instructions": "b"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{:?}",
        reply.body
    );
}

#[tokio::test]
async fn agents_are_created_versioned_listed_and_archived() {
    let app = TestApp::new(|_| {});
    let created = app
        .ok(
            "create_agent",
            json!({"name": "Support", "domain": "support", "instructions": "Be kind.",
                   "capabilities": [{"name": "refund", "description": "refunds"}]}),
        )
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap().to_owned();
    assert_eq!(created["version"]["version"], 1);
    assert_eq!(created["version"]["model"], "test-model");

    let v2 = app
        .ok(
            "update_agent",
            json!({"agent_id": id, "instructions": "Be kinder."}),
        )
        .await;
    assert_eq!(v2["version"]["version"], 2);
    assert_eq!(v2["version"]["parents"][0]["version"], 1);

    let v1 = app
        .ok("get_agent", json!({"agent_id": id, "version": 1}))
        .await;
    assert_eq!(v1["version"]["instructions"], "Be kind.");
    let latest = app.ok("get_agent", json!({"agent_id": id})).await;
    assert_eq!(latest["version"]["instructions"], "Be kinder.");

    let listed = app
        .ok(
            "list_agents",
            json!({"domain": "support", "capability": "refund"}),
        )
        .await;
    assert_eq!(listed["items"][0]["agent_id"], id.as_str());
    let versions = app.ok("list_agent_versions", json!({"agent_id": id})).await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);

    let archived = app.ok("archive_agent", json!({"agent_id": id})).await;
    assert_eq!(archived["status"], "archived");
    let listed = app.ok("list_agents", json!({"domain": "support"})).await;
    assert!(listed["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn bad_arguments_are_tool_errors_that_name_the_field() {
    let app = TestApp::new(|_| {});
    let text = app
        .tool_error(
            "create_agent",
            json!({"name": "A", "instructions": "x", "parameters": {"temperature": "hot"}}),
        )
        .await;
    assert!(text.contains("parameters.temperature"), "{text}");
    assert!(text.contains("expected f64"), "{text}");

    let text = app.tool_error("create_agent", json!({"name": "A"})).await;
    assert!(text.contains("missing field `instructions`"), "{text}");

    let text = app
        .tool_error(
            "create_agent",
            json!({"name": "A", "instructions": "x", "colour": "red"}),
        )
        .await;
    assert!(text.contains("unknown field `colour`"), "{text}");

    let text = app
        .tool_error(
            "create_agent",
            json!({"name": " ", "instructions": "x", "parameters": {"top_p": 1.5}}),
        )
        .await;
    assert_eq!(
        text,
        "invalid input: name: must not be empty; parameters.top_p: must be between 0 and 1 (got 1.5)"
    );

    let text = app
        .tool_error("get_agent", json!({"agent_id": "no spaces allowed"}))
        .await;
    assert!(text.contains("agent_id"), "{text}");

    let text = app.tool_error("list_agents", json!({"limit": 500})).await;
    assert!(text.contains("limit: must be at most 200"), "{text}");
}

#[tokio::test]
async fn unknown_ids_are_named() {
    let app = TestApp::new(|_| {});
    let text = app
        .tool_error("get_agent", json!({"agent_id": "agt_nope"}))
        .await;
    assert_eq!(text, "agent 'agt_nope' not found");
    let created = app
        .ok("create_agent", json!({"name": "A", "instructions": "x"}))
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap();
    let text = app
        .tool_error("get_agent", json!({"agent_id": id, "version": 7}))
        .await;
    assert_eq!(text, format!("agent version '{id} v7' not found"));

    let reply = app
        .call("resources/read", json!({"uri": "agent://agt_nope/lineage"}))
        .await;
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("agt_nope"), "{message}");
}

#[tokio::test]
async fn resources_serve_agents_versions_and_lineage() {
    let app = TestApp::new(|_| {});
    let templates = app.call("resources/templates/list", json!({})).await;
    let uris: Vec<&str> = templates.body["result"]["resourceTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["uriTemplate"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        [
            "agent://{agent_id}",
            "agent://{agent_id}/versions/{version}",
            "agent://{agent_id}/lineage",
            "agent://{agent_id}/deployments",
            "canary://{canary_id}",
            "evolution://{evolution_id}",
            "evolution://{evolution_id}/lineage",
            "evolution://{evolution_id}/performance_history",
            "evolution://{evolution_id}/chart",
            "canary://{canary_id}/chart"
        ]
    );

    let created = app
        .ok("create_agent", json!({"name": "A", "instructions": "one"}))
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap().to_owned();
    app.ok(
        "update_agent",
        json!({"agent_id": id, "instructions": "two"}),
    )
    .await;

    let read = |uri: String| {
        let app = &app;
        async move {
            let reply = app.call("resources/read", json!({"uri": uri})).await;
            let contents = &reply.body["result"]["contents"][0];
            assert_eq!(contents["mimeType"], "application/json", "{}", reply.body);
            serde_json::from_str::<Value>(contents["text"].as_str().unwrap()).unwrap()
        }
    };
    let lineage = read(format!("agent://{id}/lineage")).await;
    let both = app
        .call(
            "resources/read",
            json!({"uri": format!("agent://{id}/lineage")}),
        )
        .await;
    let drawn = &both.body["result"]["contents"][1];
    assert_eq!(drawn["mimeType"], "text/vnd.mermaid", "{}", both.body);
    assert!(
        drawn["text"].as_str().unwrap().contains("v1 --> v2"),
        "{}",
        both.body
    );
    assert_eq!(lineage["versions"].as_array().unwrap().len(), 2);
    assert_eq!(lineage["edges"][0]["child"]["version"], 2);
    assert_eq!(lineage["edges"][0]["parent"]["version"], 1);
    let v1 = read(format!("agent://{id}/versions/1")).await;
    assert_eq!(v1["instructions"], "one");
    let agent = read(format!("agent://{id}")).await;
    assert_eq!(agent["version"]["instructions"], "two");

    let listed = app.call("resources/list", json!({})).await;
    assert_eq!(
        listed.body["result"]["resources"][0]["uri"],
        format!("agent://{id}")
    );
}

#[tokio::test]
async fn api_keys_gate_mcp_but_not_health() {
    let app = TestApp::new(|o| o.api_keys = vec![SecretString::from("sk-test-key".to_owned())]);
    let list = || {
        TestApp::rpc("tools/list")
            .body(TestApp::body("tools/list", json!({})))
            .unwrap()
    };
    let missing = app.send(list()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"aop\"");

    let mut wrong = list();
    wrong
        .headers_mut()
        .insert("authorization", "Bearer sk-wrong".parse().unwrap());
    let wrong = app.send(wrong).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert!(!wrong.body.to_string().contains("sk-test-key"));

    let mut right = list();
    right
        .headers_mut()
        .insert("authorization", "Bearer sk-test-key".parse().unwrap());
    let right = app.send(right).await;
    assert_eq!(right.status, StatusCode::OK, "{:?}", right.body);
    assert!(right.body["result"]["tools"].is_array());

    let metrics = app
        .send(
            Request::get("/metrics")
                .header("host", "127.0.0.1:8000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        metrics.status,
        StatusCode::UNAUTHORIZED,
        "metrics name agents and spend"
    );
    let metrics = app
        .send(
            Request::get("/metrics")
                .header("host", "127.0.0.1:8000")
                .header("authorization", "Bearer sk-test-key")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(metrics.status, StatusCode::OK);

    let health = app
        .send(
            Request::get("/health")
                .header("host", "127.0.0.1:8000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["store"]["kind"], "sqlite");
    assert_eq!(health.body["store"]["up"], true);
    assert_eq!(
        health.body["store"].as_object().unwrap().len(),
        2,
        "health says what kind of store and whether it is up, not where it is: {}",
        health.body
    );
    assert!(
        !health
            .body
            .to_string()
            .contains(&*std::env::temp_dir().to_string_lossy())
    );

    let mut twice = list();
    twice
        .headers_mut()
        .append("authorization", "Bearer sk-wrong".parse().unwrap());
    twice
        .headers_mut()
        .append("authorization", "Bearer sk-test-key".parse().unwrap());
    let twice = app.send(twice).await;
    assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{:?}", twice.body);
    assert!(
        twice.body["message"]
            .as_str()
            .unwrap()
            .contains("one Authorization header")
    );
}

#[tokio::test]
async fn foreign_origins_and_hosts_are_refused() {
    let app = TestApp::new(|o| o.allowed_origins = vec!["https://app.example.com".into()]);
    let with = |name: &str, value: &str| {
        let mut r = TestApp::rpc("tools/list")
            .body(TestApp::body("tools/list", json!({})))
            .unwrap();
        r.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        r
    };
    assert_eq!(
        app.send(with("origin", "https://evil.example"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.send(with("origin", "https://app.example.com"))
            .await
            .status,
        StatusCode::OK
    );
    let rebinding = app.send(with("host", "attacker.example")).await;
    assert!(
        rebinding.status.is_client_error(),
        "a foreign Host must be refused, got {}",
        rebinding.status
    );
}

#[tokio::test]
async fn health_and_metrics_refuse_other_sites_as_mcp_does() {
    // No keys: a page on another site that rebinds its name to this server must read nothing.
    let app = TestApp::new(|o| o.allowed_origins = vec!["https://app.example.com".into()]);
    // (Host, Origin, whether the site is allowed): both answers are pinned, so the test fails
    // if either side stops checking, not only if they disagree.
    let cases = [
        ("127.0.0.1:8000", None, true),
        ("localhost", None, true),
        ("attacker.example", None, false),
        ("attacker.example:8000", None, false),
        ("127.0.0.1:8000", Some("https://app.example.com"), true),
        ("127.0.0.1:8000", Some("https://evil.example"), false),
        ("127.0.0.1:8000", Some("http://app.example.com"), false),
        ("127.0.0.1:8000", Some("null"), false),
    ];
    for (host, origin, allowed) in cases {
        let request = |builder: http::request::Builder, body: Body| {
            let mut builder = builder.header("host", host);
            if let Some(origin) = origin {
                builder = builder.header("origin", origin);
            }
            builder.body(body).unwrap()
        };
        let mut mcp = TestApp::rpc("tools/list")
            .body(TestApp::body("tools/list", json!({})))
            .unwrap();
        mcp.headers_mut().insert("host", host.parse().unwrap());
        if let Some(origin) = origin {
            mcp.headers_mut().insert("origin", origin.parse().unwrap());
        }
        let mcp_allowed = app.send(mcp).await.status == StatusCode::OK;
        assert_eq!(
            mcp_allowed, allowed,
            "/mcp with Host {host} and Origin {origin:?}"
        );
        for path in ["/health", "/metrics"] {
            let reply = app.send(request(Request::get(path), Body::empty())).await;
            assert_eq!(
                reply.status == StatusCode::OK,
                mcp_allowed,
                "{path} with Host {host} and Origin {origin:?}: {} (/mcp allowed: {mcp_allowed})",
                reply.status
            );
            if !mcp_allowed {
                assert_eq!(reply.status, StatusCode::FORBIDDEN);
            }
        }
    }
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::new(|_| {});
    let given = app
        .send(
            Request::get("/health")
                .header("host", "127.0.0.1:8000")
                .header("x-request-id", "req-abc_123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(given.headers["x-request-id"], "req-abc_123");
    let generated = app
        .send(
            Request::get("/health")
                .header("host", "127.0.0.1:8000")
                .header("x-request-id", "bad id with spaces")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID replaces an unusable id: {id}");
}

#[tokio::test]
async fn metrics_count_tool_calls_by_tool_and_outcome() {
    let app = TestApp::new(|_| {});
    let created = app
        .ok("create_agent", json!({"name": "A", "instructions": "x"}))
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap();
    app.ok("get_agent", json!({"agent_id": id})).await;
    app.ok("get_agent", json!({"agent_id": id})).await;
    app.tool_error("get_agent", json!({"agent_id": "agt_nope"}))
        .await;
    let reply = app
        .send(
            Request::get("/metrics")
                .header("host", "127.0.0.1:8000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains(r#"aop_mcp_tool_calls_total{tool="get_agent",outcome="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"aop_mcp_tool_calls_total{tool="get_agent",outcome="tool_error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"aop_http_requests_total{route="/mcp",method="POST",status="200"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn discover_and_initialize_eras_share_the_endpoint() {
    let app = TestApp::new(|_| {});
    let discover = app.call("server/discover", json!({})).await;
    let versions = discover.body["result"]["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", discover.body))
        .clone();
    for v in ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"] {
        assert!(
            versions.contains(&json!(v)),
            "{v} missing from {versions:?}"
        );
    }
    let init = Request::post("/mcp")
        .header("host", "localhost:8000")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Body::from(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"}}})
            .to_string(),
        ))
        .unwrap();
    let reply = app.send(init).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(
        reply.body["result"]["serverInfo"]["name"],
        "agent-orchestration-platform"
    );
}

#[tokio::test]
async fn without_an_llm_sessions_work_and_turns_name_the_settings() {
    let app = TestApp::new(|_| {});
    let created = app
        .ok("create_agent", json!({"name": "A", "instructions": "x"}))
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap();
    let session = app.ok("start_session", json!({"agent_id": id})).await;
    assert_eq!(session["version"], 1);
    assert_eq!(session["alias"], "prod");
    let sid = session["session_id"].as_str().unwrap();
    let text = app
        .tool_error(
            "send_message",
            json!({"session_id": sid, "content": "hello"}),
        )
        .await;
    assert!(
        text.contains("OPENAI_API_KEY") && text.contains("OPENAI_BASE_URL"),
        "{text}"
    );
    let text = app
        .tool_error("run_agent", json!({"agent_id": id, "input": "hello"}))
        .await;
    assert!(text.contains("OPENAI_API_KEY"), "{text}");
    let messages = app.ok("get_messages", json!({"session_id": sid})).await;
    assert!(
        messages["items"].as_array().unwrap().is_empty(),
        "nothing half-written"
    );
    let ended = app
        .ok("end_session", json!({"session_id": sid, "summary": "done"}))
        .await;
    assert_eq!(ended["status"], "ended");
    let again = app
        .tool_error("end_session", json!({"session_id": sid}))
        .await;
    assert!(again.contains("already ended"), "{again}");
    let missing = app
        .tool_error("get_messages", json!({"session_id": "ses_missing"}))
        .await;
    assert_eq!(missing, "session 'ses_missing' not found");
}

impl TestApp {
    /// A stateless request from a client that declares the tasks extension.
    async fn call_with_tasks(&self, method: &str, mut params: Value) -> Reply {
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {
                "extensions": {"io.modelcontextprotocol/tasks": {}}
            }
        });
        let mut builder = Self::rpc(method);
        if let Some(name) = params
            .get("name")
            .or_else(|| params.get("taskId"))
            .and_then(Value::as_str)
        {
            builder = builder.header("mcp-name", name);
        }
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        self.send(builder.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

#[tokio::test]
async fn an_evolution_is_an_mcp_task_for_clients_that_take_tasks() {
    let app = TestApp::new(|_| {});
    let created = app
        .ok("create_agent", json!({"name": "A", "instructions": "Add."}))
        .await;
    let id = created["agent"]["agent_id"].as_str().unwrap().to_owned();
    let added = app
        .ok(
            "add_eval_cases",
            json!({"agent_id": id, "cases": [
                {"input": "1+1", "checks": [{"kind": "equals", "value": "2"}]},
                {"input": "2+2", "checks": [{"kind": "regex", "pattern": "^4$"}]},
                {"input": "3+3", "checks": [{"kind": "max_chars", "max": 3}]}
            ]}),
        )
        .await;
    assert_eq!(added["added"], 3);
    let start = json!({"name": "initialize_evolution", "arguments": {
        "agent_id": id, "valset_size": 1, "minibatch_size": 1,
        "budget": {"max_metric_calls": 7}}});

    // A client without the extension gets the run at once, as a tool result.
    let plain = app.call("tools/call", start.clone()).await;
    let run = &plain.body["result"]["structuredContent"];
    assert_eq!(run["status"], "running", "{:?}", plain.body);
    let first = run["evolution_id"].as_str().unwrap().to_owned();
    app.ok("cancel_evolution", json!({"evolution_id": first}))
        .await;

    // One that declares it gets a task handle: the run's id, polled with tasks/get.
    let reply = app.call_with_tasks("tools/call", start).await;
    let result = &reply.body["result"];
    assert_eq!(result["resultType"], "task", "{:?}", reply.body);
    assert_eq!(result["status"], "working");
    assert_eq!(result["pollIntervalMs"], 2000);
    let task_id = result["taskId"].as_str().unwrap().to_owned();
    assert!(task_id.starts_with("evo_"), "{task_id}");
    assert_ne!(task_id, first);
    let got = app
        .call_with_tasks("tasks/get", json!({"taskId": task_id}))
        .await;
    assert_eq!(got.body["result"]["status"], "working", "{:?}", got.body);
    assert!(
        got.body["result"]["statusMessage"]
            .as_str()
            .unwrap()
            .contains("0 of 7 metric calls")
    );
    let status = app
        .ok("get_evolution_status", json!({"evolution_id": task_id}))
        .await;
    assert_eq!(status["status"], "running");

    app.call_with_tasks("tasks/cancel", json!({"taskId": task_id}))
        .await;
    let got = app
        .call_with_tasks("tasks/get", json!({"taskId": task_id}))
        .await;
    assert_eq!(got.body["result"]["status"], "cancelled", "{:?}", got.body);
    let unknown = app
        .call_with_tasks("tasks/get", json!({"taskId": "evo_unknown"}))
        .await;
    let message = unknown.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("unknown task evo_unknown"),
        "{:?}",
        unknown.body
    );
}

/// A body that sends `first` and then either stops (`then_fail: false`, the client goes quiet)
/// or breaks off (`then_fail: true`, the connection closed before the declared length).
fn stalled_body(first: &'static str, then_fail: bool) -> Body {
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(first))])
        .chain(futures_util::stream::once(async move {
            if then_fail {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            } else {
                std::future::pending().await
            }
        }));
    Body::from_stream(chunks)
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_within_the_body_timeout() {
    let app = TestApp::new(|o| o.body_timeout = std::time::Duration::from_millis(200));
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.send(
            TestApp::rpc("tools/list")
                .body(stalled_body(r#"{"jsonrpc":"2.0","id":1,"#, false))
                .unwrap(),
        ),
    )
    .await
    .expect("the server answers instead of waiting for the rest of the body");
    assert_eq!(
        reply.status,
        StatusCode::REQUEST_TIMEOUT,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"], "body_timeout");
}

#[tokio::test]
async fn a_body_cut_short_is_a_client_error_not_a_server_error() {
    let app = TestApp::new(|_| {});
    let reply = app
        .send(
            TestApp::rpc("tools/list")
                .body(stalled_body(r#"{"jsonrpc":"2.0","id":1,"#, true))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.body["error"], "incomplete_body");
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_a_complete_one_is_still_served() {
    let app = TestApp::new(|_| {});
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5 * 1024 * 1024)
    );
    let reply = app
        .send(TestApp::rpc("tools/list").body(Body::from(big)).unwrap())
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["error"], "body_too_large");
    let listed = app.call("tools/list", json!({})).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
}

/// An `initialize` (the 2025-11-25 era) as `key`; the session id it opened, or the refusal.
async fn initialize(app: &TestApp, key: &str) -> Result<String, Reply> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}}
    });
    let reply = app
        .send(
            Request::post("/mcp")
                .header("host", "127.0.0.1:8000")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("authorization", format!("Bearer {key}"))
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    match reply.headers.get("mcp-session-id") {
        Some(id) if reply.status == StatusCode::OK => Ok(id.to_str().unwrap().to_owned()),
        _ => Err(reply),
    }
}

#[tokio::test]
async fn sessions_are_limited_in_all_and_per_caller() {
    let app = TestApp::new(|o| {
        o.stateless = false;
        o.api_keys = vec![
            SecretString::from("alice=sk-alice-key".to_owned()),
            SecretString::from("bob=sk-bob-key".to_owned()),
        ];
        o.sessions.max = 3;
        o.sessions.max_per_principal = 2;
    });
    let first = initialize(&app, "sk-alice-key").await.unwrap();
    initialize(&app, "sk-alice-key").await.unwrap();
    let refused = initialize(&app, "sk-alice-key").await.unwrap_err();
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.body["error"], "too_many_sessions");
    assert!(refused.headers.contains_key("retry-after"));

    initialize(&app, "sk-bob-key").await.unwrap();
    let full = initialize(&app, "sk-bob-key").await.unwrap_err();
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        full.body
    );

    // Closing a session frees its place, for its caller and in all.
    let closed = app
        .send(
            Request::delete("/mcp")
                .header("host", "127.0.0.1:8000")
                .header("authorization", "Bearer sk-alice-key")
                .header("mcp-session-id", &first)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(closed.status.is_success(), "{}", closed.status);
    initialize(&app, "sk-alice-key").await.unwrap();
}

/// An OAuth issuer for the tests: serves its JWK set on loopback and signs tokens with the test
/// keys in `tests/keys` (RS256 as `rsa-1`, ES256 as `ec-1`). `publish` changes the set it serves.
struct Issuer {
    url: String,
    jwks: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

const ISSUER_AUDIENCE: &str = "http://127.0.0.1:8000/mcp";

impl Issuer {
    async fn start() -> Self {
        let jwks = Arc::new(std::sync::Mutex::new(json!({"keys": []})));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (jwks.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    axum::Json(served.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, jwks, fetches }
    }

    fn key(kid: &str) -> (jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm) {
        match kid {
            "rsa-1" => (
                jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-test-only.pem"))
                    .unwrap(),
                jsonwebtoken::Algorithm::RS256,
            ),
            _ => (
                jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("keys/ec-test-only.pem"))
                    .unwrap(),
                jsonwebtoken::Algorithm::ES256,
            ),
        }
    }

    /// Serves the public halves of `kids`.
    fn publish(&self, kids: &[&str]) {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| {
                let (key, alg) = Self::key(kid);
                let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                serde_json::to_value(jwk).unwrap()
            })
            .collect();
        *self.jwks.lock().unwrap() = json!({ "keys": keys });
    }

    /// A token signed with `kid`'s key; `claims` override the defaults (this issuer, this
    /// server's audience, subject `carol`, an hour to live).
    fn token(&self, kid: &str, claims: Value) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut body = json!({
            "iss": self.url, "aud": ISSUER_AUDIENCE, "sub": "carol",
            "iat": now, "exp": now + 3600,
        });
        for (k, v) in claims.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (key, alg) = Self::key(kid);
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &body, &key).unwrap()
    }

    fn options(&self, o: &mut HttpOptions) {
        o.oauth = Some(aop_mcp::oauth::OAuthConfig {
            issuer: self.url.clone(),
            audience: ISSUER_AUDIENCE.to_owned(),
            jwks_url: format!("{}/jwks", self.url),
            min_refetch: std::time::Duration::ZERO,
        });
    }
}

impl TestApp {
    async fn call_as(&self, credential: &str, method: &str, params: Value) -> Reply {
        let mut builder = Self::rpc(method).header("authorization", format!("Bearer {credential}"));
        if let Some(name) = params
            .get("name")
            .or_else(|| params.get("uri"))
            .and_then(Value::as_str)
        {
            builder = builder.header("mcp-name", name);
        }
        self.send(builder.body(Self::body(method, params)).unwrap())
            .await
    }
}

#[tokio::test]
async fn tokens_from_the_issuer_act_as_their_subject_within_their_scopes() {
    let issuer = Issuer::start().await;
    issuer.publish(&["rsa-1"]);
    let app = TestApp::new(|o| issuer.options(o));

    let reader = issuer.token("rsa-1", json!({"scope": "agents:read other:scope"}));
    let listed = app.call_as(&reader, "tools/list", json!({})).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let create = json!({"name": "create_agent",
        "arguments": {"name": "Support", "instructions": "Be brief."}});
    let refused = app.call_as(&reader, "tools/call", create.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "insufficient_scope");
    assert!(
        refused.body["message"]
            .as_str()
            .unwrap()
            .contains("agents:write")
    );
    let challenge = refused.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"agents:write\""), "{challenge}");

    let writer = issuer.token("rsa-1", json!({"scope": "agents:write agents:read"}));
    let created = app.call_as(&writer, "tools/call", create).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let agent = &created.body["result"]["structuredContent"];
    assert_eq!(agent["version"]["created_by"], "carol", "{agent}");
    // A resource read needs agents:read.
    let uri = format!("agent://{}", agent["agent"]["agent_id"].as_str().unwrap());
    let sessions_only = issuer.token("rsa-1", json!({"scope": "sessions"}));
    let read = app
        .call_as(&sessions_only, "resources/read", json!({"uri": uri}))
        .await;
    assert_eq!(read.status, StatusCode::FORBIDDEN, "{:?}", read.body);
    let read = app
        .call_as(&reader, "resources/read", json!({"uri": uri}))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{:?}", read.body);
    // Metrics name every agent and its spend: admin only.
    let metrics = app
        .send(
            Request::get("/metrics")
                .header("host", "127.0.0.1:8000")
                .header("authorization", format!("Bearer {reader}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(metrics.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tokens_that_are_not_for_this_server_now_are_refused_saying_why() {
    let issuer = Issuer::start().await;
    issuer.publish(&["rsa-1", "ec-1"]);
    let app = TestApp::new(|o| issuer.options(o));
    let now = jsonwebtoken::get_current_timestamp();
    let cases = [
        (issuer.token("ec-1", json!({"exp": now - 3600})), "expired"),
        (
            issuer.token("rsa-1", json!({"nbf": now + 3600})),
            "not valid yet",
        ),
        (
            issuer.token("rsa-1", json!({"aud": "https://other.example/mcp"})),
            "another resource",
        ),
        (
            issuer.token("rsa-1", json!({"iss": "https://evil.example"})),
            "another issuer",
        ),
        (issuer.token("rsa-1", json!({"sub": ""})), "no subject"),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, why) in cases {
        let reply = app.call_as(&token, "tools/list", json!({})).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{why}: {:?}",
            reply.body
        );
        assert!(
            reply.body["message"].as_str().unwrap().contains(why),
            "{why}: {:?}",
            reply.body
        );
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    // A token signed with the right kid but another key (an HMAC with the public key as the
    // secret, the classic algorithm confusion) is refused.
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let forged = jsonwebtoken::encode(
        &header,
        &json!({"iss": issuer.url, "aud": ISSUER_AUDIENCE, "sub": "mallory", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"public key text").unwrap(),
    )
    .unwrap();
    let reply = app.call_as(&forged, "tools/list", json!({})).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
}

#[tokio::test]
async fn clients_find_the_issuer_from_a_401_and_rotated_keys_need_no_restart() {
    let issuer = Issuer::start().await;
    issuer.publish(&["rsa-1"]);
    let app = TestApp::new(|o| issuer.options(o));
    let missing = app.call("tools/list", json!({})).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let challenge = missing.headers["www-authenticate"].to_str().unwrap();
    let metadata_url = "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp";
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let metadata = app
        .send(
            Request::get("/.well-known/oauth-protected-resource/mcp")
                .header("host", "127.0.0.1:8000")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.body["resource"], ISSUER_AUDIENCE);
    assert_eq!(
        metadata.body["authorization_servers"][0],
        issuer.url.as_str()
    );
    assert!(
        metadata.body["scopes_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("agents:write"))
    );

    let admin = issuer.token("rsa-1", json!({"scope": "admin"}));
    assert_eq!(
        app.call_as(&admin, "tools/list", json!({})).await.status,
        StatusCode::OK
    );
    // The issuer starts signing with a new key: its first token makes the server fetch again.
    issuer.publish(&["rsa-1", "ec-1"]);
    let rotated = issuer.token("ec-1", json!({"scope": "admin"}));
    assert_eq!(
        app.call_as(&rotated, "tools/list", json!({})).await.status,
        StatusCode::OK
    );
    // Known keys are not fetched for every request.
    let before = issuer.fetches.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            app.call_as(&admin, "tools/list", json!({})).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        issuer.fetches.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
}

#[tokio::test]
async fn api_keys_carry_the_scopes_configured_for_their_names() {
    let app = TestApp::new(|o| {
        o.api_keys = vec![
            SecretString::from("ro=sk-read-only".to_owned()),
            SecretString::from("ops=sk-operations".to_owned()),
        ];
        o.key_scopes = aop_mcp::scopes::parse_key_scopes(&["ro=agents:read".into()]).unwrap();
    });
    let create = json!({"name": "create_agent",
        "arguments": {"name": "Support", "instructions": "Be brief."}});
    let refused = app
        .call_as("sk-read-only", "tools/call", create.clone())
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    let created = app.call_as("sk-operations", "tools/call", create).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(
        created.body["result"]["structuredContent"]["version"]["created_by"],
        "ops"
    );
    // The submitter is the caller, whatever the arguments say about their end user.
    let agent_id = created.body["result"]["structuredContent"]["agent"]["agent_id"].clone();
    let rated = app
        .call_as(
            "sk-operations",
            "tools/call",
            json!({"name": "submit_feedback", "arguments": {
                "agent_id": agent_id, "ratings": {"helpfulness": 4}, "user_id": "end-user-7"}}),
        )
        .await;
    let feedback = &rated.body["result"]["structuredContent"];
    assert_eq!(feedback["submitted_by"], "ops", "{:?}", rated.body);
    assert_eq!(feedback["user_id"], "end-user-7");
    let forged = app
        .call_as(
            "sk-operations",
            "tools/call",
            json!({"name": "submit_feedback", "arguments": {
                "agent_id": agent_id, "ratings": {"helpfulness": 4}, "submitted_by": "ro"}}),
        )
        .await;
    assert_eq!(forged.body["result"]["isError"], true, "{:?}", forged.body);
}

#[tokio::test]
async fn each_caller_has_its_own_rate_and_is_told_when_to_come_back() {
    let app = TestApp::new(|o| {
        o.api_keys = vec![
            SecretString::from("busy=sk-busy-key".to_owned()),
            SecretString::from("calm=sk-calm-key".to_owned()),
        ];
        o.rate_limit = aop_mcp::RateLimit {
            per_minute: 60,
            burst: 3,
        };
    });
    for _ in 0..3 {
        let reply = app.call_as("sk-busy-key", "tools/list", json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    let limited = app.call_as("sk-busy-key", "tools/list", json!({})).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    assert_eq!(limited.body["error"], "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another caller is not slowed down by the first.
    let calm = app.call_as("sk-calm-key", "tools/list", json!({})).await;
    assert_eq!(calm.status, StatusCode::OK, "{:?}", calm.body);
}

/// Fuzz: any request body, in either era, gets an answer that is not a server error (a JSON-RPC
/// error or a 4xx) and never takes the server down. Inputs: `tests/corpus/mcp-request` and its
/// mutations (`AOP_FUZZ_CASES`).
#[test]
fn any_request_body_gets_an_answer_never_a_server_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(async {
        TestApp::new(|o| {
            o.rate_limit = aop_mcp::RateLimit {
                per_minute: 0,
                burst: 1,
            }
        })
    });
    let mut runner = proptest::test_runner::TestRunner::new(aop_test_support::fuzz::config());
    let inputs = aop_test_support::fuzz::inputs(aop_test_support::fuzz::corpus("mcp-request"));
    runner
        .run(&inputs, |body| {
            // The headers a client would send for this body, as far as it can be read.
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let field = |path: &[&str]| {
                let mut v = parsed.as_ref()?;
                for key in path {
                    v = v.get(*key)?;
                }
                v.as_str().map(str::to_owned)
            };
            let mut request = Request::post("/mcp")
                .header("host", "127.0.0.1:8000")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream");
            if let Some(version) =
                field(&["params", "_meta", "io.modelcontextprotocol/protocolVersion"])
            {
                request = request.header("mcp-protocol-version", version);
                if let Some(method) = field(&["method"]) {
                    request = request.header("mcp-method", method);
                }
                if let Some(name) = field(&["params", "name"]).or_else(|| field(&["params", "uri"]))
                {
                    request = request.header("mcp-name", name);
                }
            }
            let Ok(request) = request.body(Body::from(body.clone())) else {
                // A method or name no header can carry: a client could not send it either.
                return Ok(());
            };
            let reply = runtime.block_on(app.send(request));
            prop_assert!(
                reply.status.as_u16() < 500,
                "{} for {:?}: {:?}",
                reply.status,
                String::from_utf8_lossy(&body),
                reply.body
            );
            Ok(())
        })
        .unwrap();
    // Still serving after all of that.
    let listed = runtime.block_on(app.call("tools/list", json!({})));
    assert_eq!(listed.status, StatusCode::OK);
}
