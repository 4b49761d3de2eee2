//! The `event-processor` binary configured with an MSK cluster ARN instead of bootstrap servers:
//! it looks the brokers up once per container with `GetBootstrapBrokers` and writes a poison
//! record's dead letter to the broker it was given. moto does not implement that one API, so a
//! small stub of it answers in its real REST-JSON shape; the broker is real (`AOP_TEST_KAFKA`).

use aop_test_support::{Service, service};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lambda_emulator::LambdaEmulator;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/msk_batch.json");
const CLUSTER: &str = "arn:aws:kafka:eu-west-1:123456789012:cluster/aop/abcd1234-5678";

fn kafka() -> Option<String> {
    service(Service::Kafka)
}

/// `GET /v1/clusters/{clusterArn}/bootstrap-brokers`, counting the calls.
async fn msk_stub(brokers: String, calls: Arc<AtomicUsize>) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (brokers, calls) = (brokers.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            assert!(
                uri.path().starts_with("/v1/clusters/arn%3Aaws%3Akafka"),
                "{uri}"
            );
            assert!(uri.path().ends_with("/bootstrap-brokers"), "{uri}");
            axum::Json(json!({"bootstrapBrokerString": brokers}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_come_from_the_cluster_arn_once_per_container() {
    let Some(servers) = kafka() else { return };
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = msk_stub(servers.clone(), calls.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let topic = format!(
        "disc{}.feedback_events",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut lambda = LambdaEmulator::start(
        env!("CARGO_BIN_EXE_event-processor"),
        &[
            ("AOP_DATA_DIR", dir.path().display().to_string()),
            ("MSK_CLUSTER_ARN", CLUSTER.to_owned()),
            ("KAFKA_TOPIC_FEEDBACK_EVENTS", topic.clone()),
            ("AWS_ENDPOINT_URL_KAFKA", endpoint),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("LOG_LEVEL", "info".to_owned()),
        ],
    )
    .await;

    // One poison record (not a CloudEvent): it must reach `<topic>.dlq` on the discovered broker.
    let mut batch: Value = serde_json::from_str(FIXTURE).unwrap();
    let mut record = batch["records"]["feedback_events-0"][0].clone();
    record["topic"] = json!(topic);
    record["value"] = json!(STANDARD.encode(b"not a cloud event"));
    batch["records"] = json!({ format!("{topic}-0"): [record] });
    for _ in 0..2 {
        let answer = lambda.invoke(batch.clone()).await.unwrap();
        assert_eq!(answer, json!({"batchItemFailures": []}));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "looked up once per container"
    );

    let dead = aop_test_support::read_topic(&servers, &format!("{topic}.dlq"), 1).await;
    assert_eq!(dead[0].payload.as_deref(), Some(&b"not a cloud event"[..]));
    let logs = lambda
        .output_containing(
            r#""aop_events_dead_lettered_total":1.0"#,
            std::time::Duration::from_secs(10),
        )
        .await;
    assert!(logs.contains("MSK brokers discovered"), "{logs}");
    assert!(
        logs.contains(r#""aop_events_dead_lettered_total":1.0"#),
        "the dead letter is counted for the alarm: {logs}"
    );
}
