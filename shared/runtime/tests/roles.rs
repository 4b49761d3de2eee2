//! Each role reads the secrets it uses and no other: with every secret ARN configured and the
//! secret of a dependency the role does not use missing from Secrets Manager (moto), the role
//! still settles; a role that does use it fails naming it. Needs `AOP_TEST_MOTO`.

use std::collections::BTreeMap;

use aop_aws::SecretsClient;
use aop_runtime::secrets::resolve_from;
use aop_runtime::{Config, Overrides, Role};
use aop_test_support::{Service, service};
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use secrecy::ExposeSecret;

fn sdk(moto: &str) -> aws_sdk_secretsmanager::Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(moto)
        .http_client(aop_aws::https_client())
        .build();
    aws_sdk_secretsmanager::Client::from_conf(config)
}

async fn create(client: &aws_sdk_secretsmanager::Client, name: &str, value: &str) -> String {
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

/// The configuration every function gets: all three secret ARNs, Kafka over SASL/SCRAM.
fn config(openai: &str, neo4j: &str, kafka: &str) -> Config {
    let env: BTreeMap<String, String> = [
        ("OPENAI_SECRET_ARN", openai),
        ("NEO4J_SECRET_ARN", neo4j),
        ("KAFKA_SECRET_ARN", kafka),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
        ("KAFKA_BOOTSTRAP_SERVERS", "b-1.example:9096"),
        ("NEO4J_URI", "bolt://db.example:7687"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Config::from_sources(None, &env, &Overrides::default()).unwrap()
}

#[tokio::test]
async fn every_role_reads_only_the_secrets_it_uses() {
    let Some(moto) = service(Service::Moto) else {
        return;
    };
    let sdk = sdk(&moto);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let openai = create(
        &sdk,
        &format!("aop/{tag}/openai"),
        r#"{"api_key": "sk-role-test"}"#,
    )
    .await;
    let neo4j = create(
        &sdk,
        &format!("aop/{tag}/neo4j"),
        r#"{"username": "graph", "password": "neo4j-pw"}"#,
    )
    .await;
    let kafka = create(
        &sdk,
        &format!("AmazonMSK_{tag}"),
        r#"{"username": "producer", "password": "kafka-pw"}"#,
    )
    .await;
    // The ARN of a secret that does not exist: reading it fails.
    let missing = openai.replace(&format!("aop/{tag}/openai"), &format!("aop/{tag}/missing"));
    let client = SecretsClient::new(sdk.clone());

    // The MCP server calls the model and the store, never Kafka.
    let mut c = config(&openai, &neo4j, &missing);
    resolve_from(&mut c, Role::McpServer, client.clone())
        .await
        .expect("the MCP server does not read the Kafka secret");
    assert_eq!(
        c.openai.api_key.as_ref().unwrap().expose_secret(),
        "sk-role-test"
    );
    assert_eq!(c.neo4j.as_ref().unwrap().username, "graph");
    assert!(c.kafka.sasl_username.is_empty());

    // The event processor and the relay use the store and Kafka, never the model.
    for role in [Role::EventProcessor, Role::OutboxRelay] {
        let mut c = config(&missing, &neo4j, &kafka);
        resolve_from(&mut c, role, client.clone())
            .await
            .unwrap_or_else(|e| panic!("{role:?} does not read the OpenAI secret: {e}"));
        assert_eq!(c.kafka.sasl_username, "producer", "{role:?}");
        assert_eq!(
            c.kafka.sasl_password.expose_secret(),
            "kafka-pw",
            "{role:?}"
        );
        assert_eq!(c.neo4j.as_ref().unwrap().username, "graph", "{role:?}");
        assert!(c.openai.api_key.is_none(), "{role:?}");
    }

    // The evolution worker calls the model and dead-letters to Kafka: it reads all three.
    let mut c = config(&openai, &neo4j, &kafka);
    resolve_from(&mut c, Role::EvolutionWorker, client.clone())
        .await
        .expect("the evolution worker reads its three secrets");
    assert_eq!(
        c.openai.api_key.as_ref().unwrap().expose_secret(),
        "sk-role-test"
    );
    assert_eq!(c.kafka.sasl_username, "producer");
    assert_eq!(c.kafka.sasl_password.expose_secret(), "kafka-pw");
    assert_eq!(c.neo4j.as_ref().unwrap().username, "graph");

    // A role that uses a secret fails when it is missing, naming it.
    for (role, c) in [
        (Role::McpServer, config(&missing, &neo4j, &kafka)),
        (Role::EventProcessor, config(&openai, &neo4j, &missing)),
        (Role::EvolutionWorker, config(&missing, &neo4j, &kafka)),
        (Role::EvolutionWorker, config(&openai, &neo4j, &missing)),
        (Role::Local, config(&openai, &neo4j, &missing)),
    ] {
        let mut c = c;
        let err = resolve_from(&mut c, role, client.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{role:?} uses the missing secret"));
        assert!(err.to_string().contains("missing"), "{role:?}: {err}");
    }
}
