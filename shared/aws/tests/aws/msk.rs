//! MSK bootstrap broker discovery against a stub of the one API it calls.
//!
//! Why a stub and not moto: moto (5.2.1) does not implement `GetBootstrapBrokers`, and the
//! cluster descriptions it returns carry timestamps the Rust SDK cannot parse. The stub speaks
//! that call's real wire format, taken from the SDK's generated code (aws-sdk-kafka,
//! `operation/get_bootstrap_brokers.rs` and `protocol_serde/shape_get_bootstrap_brokers.rs`):
//! REST-JSON, `GET /v1/clusters/{clusterArn}/bootstrap-brokers` with the ARN percent-encoded as
//! one path segment, answering `{"bootstrapBrokerString": ..., "bootstrapBrokerStringTls": ...,
//! "bootstrapBrokerStringSaslScram": ..., "bootstrapBrokerStringSaslIam": ...}` (keys absent
//! when the listener is off) and errors named by the `x-amzn-errortype` header. The code under
//! test is the real SDK client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aop_aws::{MskAuth, MskBootstrap, MskClient, MskError, bootstrap_brokers};
use aws_sdk_kafka::config::{BehaviorVersion, Region};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::support::credentials;

const FULL: &str = "arn:aws:kafka:us-east-1:123456789012:cluster/aop-events/1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d-7";
/// How the SDK must put `FULL` into the path: `:` and `/` percent-encoded.
const FULL_ENCODED: &str = "arn%3Aaws%3Akafka%3Aus-east-1%3A123456789012%3Acluster%2Faop-events%2F1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d-7";
/// A cluster with IAM and TLS listeners only: no SASL/SCRAM, no plaintext.
const IAM_ONLY: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/aop-iam/0f0f0f0f-1111-2222-3333-444444444444-2";
/// A cluster whose API call never finishes.
const SLOW: &str =
    "arn:aws:kafka:us-east-1:123456789012:cluster/aop-slow/99999999-1111-2222-3333-444444444444-1";

const PLAINTEXT: &str = "b-1.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9092,b-2.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9092";
const TLS: &str = "b-1.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9094,b-2.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9094";
const SCRAM: &str = "b-1.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9096,b-2.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9096";
const IAM: &str = "b-1.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9098,b-2.aopevents.abc123.c2.kafka.us-east-1.amazonaws.com:9098";

/// The stub and the raw request paths it has seen.
struct Stub {
    endpoint: String,
    paths: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stub {
    async fn start() -> Self {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&paths));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            endpoint,
            paths,
            server,
        }
    }

    fn client(&self) -> MskClient {
        let config = aws_sdk_kafka::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials())
            .endpoint_url(&self.endpoint)
            .http_client(aop_aws::https_client())
            .build();
        MskClient::new(aws_sdk_kafka::Client::from_conf(config))
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Routes on the raw, still-encoded path, as API Gateway in front of MSK's API does.
async fn answer(State(paths): State<Arc<Mutex<Vec<String>>>>, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    paths.lock().unwrap().push(path.clone());
    let cluster = path
        .strip_prefix("/v1/clusters/")
        .and_then(|rest| rest.strip_suffix("/bootstrap-brokers"))
        .map(decode);
    let body = match cluster.as_deref() {
        Some(FULL) => serde_json::json!({
            "bootstrapBrokerString": PLAINTEXT,
            "bootstrapBrokerStringTls": TLS,
            "bootstrapBrokerStringSaslScram": SCRAM,
            "bootstrapBrokerStringSaslIam": IAM,
        }),
        Some(IAM_ONLY) => serde_json::json!({
            "bootstrapBrokerStringTls": TLS,
            "bootstrapBrokerStringSaslIam": IAM,
        }),
        Some(SLOW) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            serde_json::json!({})
        }
        _ => {
            let body = serde_json::json!({
                "message": "The specified cluster was not found.",
                "invalidParameter": "clusterArn",
            });
            return (
                StatusCode::NOT_FOUND,
                [("x-amzn-errortype", "NotFoundException")],
                axum::Json(body),
            )
                .into_response();
        }
    };
    axum::Json(body).into_response()
}

/// Percent-decoding for the stub's routing; the tests check the encoded form separately.
fn decode(segment: &str) -> String {
    let mut out = Vec::new();
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn each_auth_picks_its_broker_string() {
    let stub = Stub::start().await;
    let client = stub.client();
    for (auth, expected) in [
        (MskAuth::Iam, IAM),
        (MskAuth::SaslScram, SCRAM),
        (MskAuth::Tls, TLS),
        (MskAuth::Plaintext, PLAINTEXT),
    ] {
        let brokers = bootstrap_brokers(&client, FULL, auth).await.unwrap();
        assert_eq!(brokers, expected, "{auth}");
    }
}

#[tokio::test]
async fn the_cluster_arn_is_sent_percent_encoded_in_the_path() {
    let stub = Stub::start().await;
    bootstrap_brokers(&stub.client(), FULL, MskAuth::Tls)
        .await
        .unwrap();
    assert_eq!(
        stub.paths(),
        [format!("/v1/clusters/{FULL_ENCODED}/bootstrap-brokers")]
    );
}

#[tokio::test]
async fn a_missing_listener_is_a_clear_error() {
    let stub = Stub::start().await;
    let client = stub.client();
    let err = bootstrap_brokers(&client, IAM_ONLY, MskAuth::SaslScram)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MskError::NoBrokers {
                auth: MskAuth::SaslScram,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "MSK cluster {IAM_ONLY} has no SASL/SCRAM brokers; enable SASL/SCRAM on the cluster \
             or set KAFKA_SECURITY_PROTOCOL to match the cluster"
        )
    );
    let err = bootstrap_brokers(&client, IAM_ONLY, MskAuth::Plaintext)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no plaintext brokers"), "{err}");
    assert_eq!(
        bootstrap_brokers(&client, IAM_ONLY, MskAuth::Iam)
            .await
            .unwrap(),
        IAM
    );
}

#[tokio::test]
async fn an_unknown_cluster_is_not_found() {
    let stub = Stub::start().await;
    let arn =
        "arn:aws:kafka:us-east-1:123456789012:cluster/nope/00000000-0000-0000-0000-000000000000-1";
    let err = bootstrap_brokers(&stub.client(), arn, MskAuth::Iam)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MskError::NotFound { code, .. } if code == "NotFoundException"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains(arn), "{err}");
}

#[tokio::test]
async fn discovery_is_cached_for_the_process() {
    let stub = Stub::start().await;
    let bootstrap = MskBootstrap::new(stub.client(), FULL, MskAuth::SaslScram);
    let (a, b) = tokio::join!(bootstrap.brokers(), bootstrap.brokers());
    assert_eq!((a.unwrap(), b.unwrap()), (SCRAM, SCRAM));
    assert_eq!(bootstrap.brokers().await.unwrap(), SCRAM);
    assert_eq!(stub.paths().len(), 1);
}

#[tokio::test]
async fn a_failed_discovery_is_not_cached() {
    let stub = Stub::start().await;
    let bootstrap = MskBootstrap::new(stub.client(), IAM_ONLY, MskAuth::SaslScram);
    assert!(bootstrap.brokers().await.is_err());
    assert!(bootstrap.brokers().await.is_err());
    assert_eq!(stub.paths().len(), 2);
}

#[tokio::test]
async fn a_hung_api_call_ends_at_the_deadline_as_unreachable() {
    let stub = Stub::start().await;
    let started = Instant::now();
    let err = bootstrap_brokers(&stub.client(), SLOW, MskAuth::Iam)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(SLOW), "{err}");
    assert!(
        took < aop_aws::CALL_DEADLINE + Duration::from_secs(2),
        "took {took:?}"
    );
}
