//! `aop doctor` against real dependencies: each check reports the state it finds, and a failing
//! one names the dependency and the fix. The Neo4j and Kafka cases need `AOP_TEST_NEO4J` and
//! `AOP_TEST_KAFKA`.

use aop_test_support::{Service, service};
use std::collections::BTreeMap;

use aop_runtime::doctor::{Check, Status, run};
use aop_runtime::{Config, Overrides};

fn config(pairs: &[(&str, String)]) -> Config {
    let env: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Config::from_sources(None, &env, &Overrides::default()).unwrap()
}

fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn embedded_store_and_llm_up_kafka_not_configured() {
    let llm = openai_test_server::TestLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let checks = run(&config(&[
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_MODEL", "test-model".into()),
    ]))
    .await;
    let store = check(&checks, "store");
    assert_eq!(store.status, Status::Ok, "{}", store.render());
    assert!(store.detail.starts_with("sqlite at "), "{}", store.render());
    let llm_check = check(&checks, "llm");
    assert_eq!(llm_check.status, Status::Ok, "{}", llm_check.render());
    assert!(llm_check.detail.contains("test-model"));
    assert_eq!(check(&checks, "kafka").status, Status::Skipped);
}

#[tokio::test]
async fn a_model_the_endpoint_does_not_offer_and_an_endpoint_that_is_down_are_named() {
    let llm = openai_test_server::TestLlm::start().await;
    let dir = tempfile::tempdir().unwrap();
    let checks = run(&config(&[
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_MODEL", "gpt-nonexistent".into()),
    ]))
    .await;
    let c = check(&checks, "llm");
    assert_eq!(c.status, Status::Failed);
    assert!(c.detail.contains("gpt-nonexistent"), "{}", c.render());
    assert!(
        c.fix.as_deref().unwrap().contains("OPENAI_MODEL"),
        "{}",
        c.render()
    );

    let down = format!("http://127.0.0.1:{}/v1", unused_port());
    let checks = run(&config(&[
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("OPENAI_BASE_URL", down.clone()),
        ("OPENAI_API_KEY", "sk-doctor-secret".into()),
    ]))
    .await;
    let c = check(&checks, "llm");
    assert_eq!(c.status, Status::Failed);
    assert!(c.detail.contains(&down), "{}", c.render());
    assert!(c.fix.as_deref().unwrap().contains("OPENAI_BASE_URL"));
    assert!(!c.render().contains("sk-doctor-secret"));
}

#[tokio::test]
async fn neo4j_up_behind_and_down() {
    let Some(uri) = service(Service::Neo4j) else {
        return;
    };
    let password = std::env::var("AOP_TEST_NEO4J_PASSWORD").unwrap_or("aop-test-password".into());
    let neo4j = |uri: String, database: &str| {
        config(&[
            ("NEO4J_URI", uri),
            ("NEO4J_USERNAME", "root".into()),
            ("NEO4J_PASSWORD", password.clone()),
            ("NEO4J_DATABASE", database.into()),
        ])
    };
    // A database of its own, empty: behind by every migration until `aop migrate` runs.
    let database = format!("doctor_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let port = uri.rsplit(':').next().unwrap();
    let created = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/neo4j/arcadedb"
        ))
        .args(["create", port, &database])
        .status()
        .unwrap();
    assert!(created.success());
    let behind = run(&neo4j(uri.clone(), &database)).await;
    let c = check(&behind, "store");
    assert_eq!(c.status, Status::Failed, "{}", c.render());
    assert!(
        c.fix.as_deref().unwrap().contains("aop migrate"),
        "{}",
        c.render()
    );

    let config = neo4j(uri.clone(), &database);
    let store = aop_runtime::adapters::neo4j_store(config.neo4j.as_ref().unwrap(), None).unwrap();
    aop_store_neo4j::migrations::migrate(&store).await.unwrap();
    let up = run(&config).await;
    let c = check(&up, "store");
    assert_eq!(c.status, Status::Ok, "{}", c.render());
    assert!(c.detail.contains(&uri) && c.detail.contains("schema version"));

    let down = format!("bolt://127.0.0.1:{}", unused_port());
    let checks = run(&neo4j(down.clone(), &database)).await;
    let c = check(&checks, "store");
    assert_eq!(c.status, Status::Failed);
    assert!(
        c.detail.contains("Neo4j") && c.detail.contains(&down),
        "{}",
        c.render()
    );
    assert!(c.fix.as_deref().unwrap().contains("NEO4J_URI"));
    assert!(!c.render().contains(&password));
}

#[tokio::test]
async fn kafka_topics_missing_then_applied_and_brokers_down() {
    let Some(servers) = service(Service::Kafka) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("doc{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let kafka = |servers: String| {
        config(&[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", servers),
            ("KAFKA_TOPIC_AGENT_EVENTS", format!("{prefix}.agent_events")),
            (
                "KAFKA_TOPIC_FEEDBACK_EVENTS",
                format!("{prefix}.feedback_events"),
            ),
            (
                "KAFKA_TOPIC_EVOLUTION_EVENTS",
                format!("{prefix}.evolution_events"),
            ),
        ])
    };
    let config = kafka(servers.clone());
    let checks = run(&config).await;
    let c = check(&checks, "kafka");
    assert_eq!(c.status, Status::Failed, "{}", c.render());
    assert!(
        c.detail.contains(&format!("{prefix}.agent_events.dlq")),
        "{}",
        c.render()
    );
    assert_eq!(c.fix.as_deref(), Some("run `aop topics apply`"));

    let settings = aop_runtime::adapters::kafka_client(&config).unwrap();
    aop_events::kafka::apply_topics(&settings, &config.kafka.topic_specs())
        .await
        .unwrap();
    let checks = run(&config).await;
    let c = check(&checks, "kafka");
    assert_eq!(c.status, Status::Ok, "{}", c.render());

    let down = format!("127.0.0.1:{}", unused_port());
    let checks = run(&kafka(down.clone())).await;
    let c = check(&checks, "kafka");
    assert_eq!(c.status, Status::Failed);
    assert!(c.detail.contains(&down), "{}", c.render());
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("KAFKA_BOOTSTRAP_SERVERS")
    );
}

#[tokio::test]
async fn msk_iam_is_reported_with_its_credentials_or_their_absence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!("127.0.0.1:{}", unused_port());
    let mut config = config(&[
        ("AOP_DATA_DIR", dir.path().display().to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.clone()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".into()),
        ("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM".into()),
    ]);
    assert!(config.kafka.uses_iam() && !config.kafka.uses_sasl());
    let checks = run(&config).await;
    let c = check(&checks, "kafka");
    assert_eq!(c.status, Status::Failed, "{}", c.render());
    assert!(
        c.detail.contains("no AWS credentials could be read"),
        "{}",
        c.render()
    );
    assert!(
        c.fix.as_deref().unwrap().contains("AWS_REGION"),
        "{}",
        c.render()
    );

    let credentials =
        aop_aws::msk_iam::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    config.kafka.iam_tokens = Some(std::sync::Arc::new(aop_runtime::adapters::MskIam(
        std::sync::Arc::new(aop_aws::MskIamTokens::with_credentials(
            "eu-west-1".into(),
            credentials,
        )),
    )));
    let checks = run(&config).await;
    let c = check(&checks, "kafka");
    // Signed, but nothing listens there.
    assert_eq!(c.status, Status::Failed, "{}", c.render());
    assert!(
        c.detail.contains(&format!(
            "brokers at {broker} did not answer (MSK IAM, token signed)"
        )),
        "{}",
        c.render()
    );
    assert!(!c.render().contains("secret"), "{}", c.render());
}

#[tokio::test]
async fn spend_caps_are_reported_and_an_unpriced_model_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = ("AOP_DATA_DIR", dir.path().display().to_string());
    let checks = run(&config(std::slice::from_ref(&data))).await;
    assert_eq!(check(&checks, "spend").status, Status::Skipped);

    let checks = run(&config(&[
        data.clone(),
        ("AOP_DAILY_COST_CAP_USD", "5".into()),
        ("OPENAI_MODEL", "gpt-4o-mini".into()),
    ]))
    .await;
    let c = check(&checks, "spend");
    assert_eq!(c.status, Status::Ok, "{}", c.render());
    assert!(
        c.detail.contains(
            "each agent USD 5.00/day, each caller USD 5.00/day; model gpt-4o-mini is priced"
        ),
        "{}",
        c.render()
    );

    let checks = run(&config(&[
        data,
        ("AOP_DAILY_COST_CAP_USD", "5".into()),
        ("OPENAI_MODEL", "local-model".into()),
    ]))
    .await;
    let c = check(&checks, "spend");
    assert_eq!(c.status, Status::Failed, "{}", c.render());
    assert!(
        c.detail.contains("local-model has no price"),
        "{}",
        c.render()
    );
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("AOP_MODEL_PRICES=local-model="),
        "{}",
        c.render()
    );
}
