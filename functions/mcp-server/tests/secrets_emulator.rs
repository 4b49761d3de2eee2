//! The `mcp-server` binary configured with secret ARNs only: it reads the OpenAI key and the Neo4j
//! credentials (and URI) from Secrets Manager (moto's server mode), serves tools on Neo4j
//! (ArcadeDB over Bolt), picks up a rotated OpenAI key after the endpoint refuses the old one,
//! and never prints a secret value. Needs `AOP_TEST_MOTO` and `AOP_TEST_NEO4J`.

mod api;

use aop_test_support::{Service, service};
use api::{API_HOST, Api, body_json};
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use lambda_emulator::LambdaEmulator;
use openai_test_server::{Reply, TestLlm};
use serde_json::json;

const REGION: &str = "eu-west-1";

fn secrets_client(moto: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(moto)
        .http_client(aop_aws::https_client())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

async fn create_secret(client: &aws_sdk_secretsmanager::Client, name: &str, value: &str) -> String {
    client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_secret_arns_alone_picks_up_a_rotated_key_and_logs_no_secret() {
    let (Some(moto), Some(neo4j)) = (service(Service::Moto), service(Service::Neo4j)) else {
        return;
    };
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    // A database of its own on the Bolt server.
    let database = format!("secrets_{tag}");
    let port = neo4j.rsplit(':').next().unwrap();
    let created = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/neo4j/arcadedb"
        ))
        .args(["create", port, &database])
        .status()
        .unwrap();
    assert!(created.success());

    let neo4j_password =
        std::env::var("AOP_TEST_NEO4J_PASSWORD").unwrap_or("aop-test-password".into());
    let original_key = format!("sk-original-{tag}");
    let rotated_key = format!("sk-rotated-{tag}");
    let client = secrets_client(&moto);
    let openai_arn = create_secret(
        &client,
        &format!("aop/{tag}/openai"),
        &json!({"api_key": original_key}).to_string(),
    )
    .await;
    let neo4j_arn = create_secret(
        &client,
        &format!("aop/{tag}/neo4j"),
        &json!({"username": "root", "password": neo4j_password, "uri": neo4j}).to_string(),
    )
    .await;

    let llm = TestLlm::start().await;
    let lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_mcp-server"),
        &[
            ("OPENAI_SECRET_ARN", openai_arn.clone()),
            ("NEO4J_SECRET_ARN", neo4j_arn.clone()),
            ("NEO4J_DATABASE", database),
            ("AOP_MIGRATE_ON_START", "true".into()),
            ("OPENAI_BASE_URL", llm.base_url()),
            ("OPENAI_MODEL", "test-model".into()),
            ("AWS_ENDPOINT_URL", moto.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AOP_ALLOWED_HOSTS", API_HOST.into()),
            ("LOG_LEVEL", "debug".into()),
        ],
    )
    .await;
    let mut api = Api::new(lambda);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "secrets", "version": "1"}}});
    let response = api.request("POST", "/mcp", &[], Some(init)).await;
    assert_eq!(response["statusCode"], 200, "{response}");

    let created = api
        .rpc(
            "tools/call",
            json!({"name": "create_agent", "arguments": {"name": "secretive", "instructions": "be brief"}}),
        )
        .await;
    assert_ne!(created["result"]["isError"], true, "{created}");
    let agent_id = created["result"]["structuredContent"]["agent"]["agent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let run = |input: &str| json!({"name": "run_agent", "arguments": {"agent_id": agent_id, "input": input}});

    llm.push([Reply::text("first answer")]);
    let first = api.rpc("tools/call", run("hello")).await;
    assert_ne!(first["result"]["isError"], true, "{first}");
    let requests = llm.requests();
    assert_eq!(
        requests.last().unwrap().authorization.as_deref(),
        Some(format!("Bearer {original_key}").as_str()),
        "the key came from the secret"
    );

    // Rotation: the secret gets a new key and the endpoint refuses the old one.
    client
        .put_secret_value()
        .secret_id(&openai_arn)
        .secret_string(json!({"api_key": rotated_key}).to_string())
        .send()
        .await
        .unwrap();
    // Refreshes of one secret are at most one per 5 s; the last read was at start.
    tokio::time::sleep(std::time::Duration::from_millis(5_500)).await;
    llm.push([
        Reply::error(401, "Incorrect API key provided"),
        Reply::text("second answer"),
    ]);
    let second = api.rpc("tools/call", run("hello again")).await;
    assert_ne!(second["result"]["isError"], true, "{second}");
    let requests = llm.requests();
    let n = requests.len();
    assert_eq!(
        requests[n - 2].authorization.as_deref(),
        Some(format!("Bearer {original_key}").as_str())
    );
    assert_eq!(
        requests[n - 1].authorization.as_deref(),
        Some(format!("Bearer {rotated_key}").as_str()),
        "the rotated key was fetched after the refusal"
    );
    let text = body_json(&json!({"body": second.to_string()})).to_string();
    assert!(text.contains("second answer"), "{text}");

    let logs = api.lambda.output();
    assert!(logs.contains("secrets read from Secrets Manager"), "{logs}");
    for secret in [&original_key, &rotated_key, &neo4j_password] {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret value reached the logs"
        );
    }
}
