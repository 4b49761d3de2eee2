//! `SecretsClient` and `SecretCache` against moto's Secrets Manager, plus the deadline and
//! access-denied paths against local sockets moto cannot imitate.

use std::time::{Duration, Instant};

use aop_aws::secrets::keys;
use aop_aws::{SecretCache, SecretsClient, SecretsError};
use axum::http::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;

use crate::support::{CallCounter, LogCapture, is_child, moto, run_in_child, secrets_sdk, unique};

const TTL: Duration = Duration::from_secs(300);

/// Creates a secret in moto and returns its ARN and version id.
async fn create(endpoint: &str, value: &str) -> (String, String) {
    let out = secrets_sdk(endpoint, None)
        .create_secret()
        .name(unique("aop/test"))
        .secret_string(value)
        .send()
        .await
        .expect("moto creates the secret");
    (
        out.arn().expect("arn").to_owned(),
        out.version_id().expect("version").to_owned(),
    )
}

/// Stores a new current version, as a rotation does.
async fn rotate(endpoint: &str, arn: &str, value: &str) -> String {
    secrets_sdk(endpoint, None)
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .expect("moto stores the new version")
        .version_id()
        .expect("version")
        .to_owned()
}

fn cache(endpoint: &str, calls: &CallCounter) -> SecretCache {
    SecretCache::new(SecretsClient::new(secrets_sdk(endpoint, Some(calls))), TTL)
}

fn neo4j_json(password: &str) -> String {
    serde_json::json!({"username": "neo4j", "password": password, "uri": "bolt://db:7687"})
        .to_string()
}

#[tokio::test]
async fn fetches_a_json_secret_and_reads_its_fields() {
    let Some(endpoint) = moto() else { return };
    let password = unique("pw");
    let (arn, version) = create(&endpoint, &neo4j_json(&password)).await;
    let cache = cache(&endpoint, &CallCounter::default());

    let secret = cache.get(&arn).await.unwrap();
    assert_eq!(secret.arn(), arn);
    assert_eq!(secret.version_id(), Some(version.as_str()));
    assert_eq!(
        secret.field(keys::USERNAME).unwrap().expose_secret(),
        "neo4j"
    );
    assert_eq!(
        secret.field(keys::PASSWORD).unwrap().expose_secret(),
        password
    );
    let uri = secret.optional_field(keys::URI).unwrap().unwrap();
    assert_eq!(uri.expose_secret(), "bolt://db:7687");
    assert!(secret.optional_field("database").unwrap().is_none());
    let via_cache = cache.field(&arn, keys::PASSWORD).await.unwrap();
    assert_eq!(via_cache.expose_secret(), password);
}

#[tokio::test]
async fn a_plain_string_secret_is_an_api_key() {
    let Some(endpoint) = moto() else { return };
    let api_key = unique("sk");
    let (arn, _) = create(&endpoint, &api_key).await;
    let secret = cache(&endpoint, &CallCounter::default())
        .get(&arn)
        .await
        .unwrap();
    assert_eq!(
        secret.field(keys::API_KEY).unwrap().expose_secret(),
        api_key
    );
    let err = secret.field(keys::PASSWORD).unwrap_err().to_string();
    assert!(err.contains("\"password\"") && err.contains(&arn), "{err}");
}

#[tokio::test]
async fn missing_key_names_the_key_and_arn_but_not_the_value() {
    let Some(endpoint) = moto() else { return };
    let api_key = unique("sk");
    let (arn, _) = create(
        &endpoint,
        &serde_json::json!({"api_key": api_key}).to_string(),
    )
    .await;
    let secret = cache(&endpoint, &CallCounter::default())
        .get(&arn)
        .await
        .unwrap();

    let err = secret.field(keys::PASSWORD).unwrap_err();
    assert!(matches!(&err, SecretsError::MissingKey { key, .. } if key == "password"));
    let shown = format!("{err} | {err:?} | {secret:?}");
    assert!(
        shown.contains("\"password\"") && shown.contains(&arn),
        "{shown}"
    );
    assert!(!shown.contains(&api_key), "value leaked: {shown}");
}

#[tokio::test]
async fn an_unknown_arn_is_not_found() {
    let Some(endpoint) = moto() else { return };
    let arn = format!(
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:{}",
        unique("aop/missing")
    );
    let calls = CallCounter::default();
    let cache = cache(&endpoint, &calls);
    let err = cache.get(&arn).await.unwrap_err();
    assert!(matches!(err, SecretsError::NotFound { .. }), "{err:?}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&arn) && message.contains("not found"),
        "{message}"
    );
    // Asking again straight away gets the same answer without another call.
    assert!(matches!(
        cache.get(&arn).await,
        Err(SecretsError::NotFound { .. })
    ));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn the_cache_does_not_call_the_api_again_within_the_ttl() {
    let Some(endpoint) = moto() else { return };
    let (first, second) = (unique("pw"), unique("pw"));
    let (arn, version) = create(&endpoint, &neo4j_json(&first)).await;
    let calls = CallCounter::default();
    let cache = cache(&endpoint, &calls);

    for _ in 0..3 {
        let secret = cache.get(&arn).await.unwrap();
        assert_eq!(secret.field(keys::PASSWORD).unwrap().expose_secret(), first);
    }
    assert_eq!(calls.get(), 1);

    rotate(&endpoint, &arn, &neo4j_json(&second)).await;
    let secret = cache.get(&arn).await.unwrap();
    assert_eq!(secret.field(keys::PASSWORD).unwrap().expose_secret(), first);
    assert_eq!(secret.version_id(), Some(version.as_str()));
    // Within the minimum refresh interval, even a forced refresh keeps the cached value.
    let secret = cache.refresh(&arn).await.unwrap();
    assert_eq!(secret.field(keys::PASSWORD).unwrap().expose_secret(), first);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn concurrent_gets_share_one_call() {
    let Some(endpoint) = moto() else { return };
    let (arn, _) = create(&endpoint, &neo4j_json(&unique("pw"))).await;
    let calls = CallCounter::default();
    let cache = cache(&endpoint, &calls);
    let (a, b, c, d) = tokio::join!(
        cache.get(&arn),
        cache.get(&arn),
        cache.get(&arn),
        cache.get(&arn)
    );
    for got in [a, b, c, d] {
        got.unwrap();
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn refresh_picks_up_a_rotated_value() {
    let Some(endpoint) = moto() else { return };
    let (first, second) = (unique("pw"), unique("pw"));
    let (arn, old_version) = create(&endpoint, &neo4j_json(&first)).await;
    let calls = CallCounter::default();
    // No floor between refreshes here: the floor is tested with a paused clock in the unit
    // tests, and this test must not sleep through it.
    let cache = cache(&endpoint, &calls).with_min_refresh_interval(Duration::ZERO);

    cache.get(&arn).await.unwrap();
    let new_version = rotate(&endpoint, &arn, &neo4j_json(&second)).await;
    let secret = cache.refresh(&arn).await.unwrap();
    assert_eq!(
        secret.field(keys::PASSWORD).unwrap().expose_secret(),
        second
    );
    assert_eq!(secret.version_id(), Some(new_version.as_str()));
    assert_ne!(new_version, old_version);
    assert_eq!(calls.get(), 2);
    // The refreshed value is what the cache serves from now on.
    let secret = cache.get(&arn).await.unwrap();
    assert_eq!(
        secret.field(keys::PASSWORD).unwrap().expose_secret(),
        second
    );
    assert_eq!(calls.get(), 2);
}

/// Every level of every crate (the SDK's own trace output included) is captured while the
/// platform reads, misses, fails and refreshes secrets; no value may appear in it.
#[tokio::test]
async fn no_secret_value_reaches_the_logs() {
    let Some(endpoint) = moto() else { return };
    let (first, second, api_key) = (unique("pw"), unique("pw"), unique("sk"));
    let (arn, _) = create(&endpoint, &neo4j_json(&first)).await;
    let (plain_arn, _) = create(&endpoint, &api_key).await;
    let missing = format!("{arn}-gone");
    let logs = LogCapture::default();
    let cache = cache(&endpoint, &CallCounter::default()).with_min_refresh_interval(Duration::ZERO);

    {
        let _guard = logs.install();
        let secret = cache.get(&arn).await.unwrap();
        secret.field(keys::PASSWORD).unwrap();
        tracing::error!(error = %secret.field("token").unwrap_err(), ?secret, "as a caller would");
        let plain = cache.get(&plain_arn).await.unwrap();
        tracing::error!(error = %plain.field(keys::USERNAME).unwrap_err(), ?plain, "as a caller would");
        assert!(cache.get(&missing).await.is_err());
    }
    rotate(&endpoint, &arn, &neo4j_json(&second)).await;
    {
        let _guard = logs.install();
        let secret = cache.refresh(&arn).await.unwrap();
        assert_eq!(
            secret.field(keys::PASSWORD).unwrap().expose_secret(),
            second
        );
    }

    let text = logs.text();
    assert!(
        text.contains("fetched secret") && text.contains("re-reading secret"),
        "{text}"
    );
    assert!(
        text.contains("GetSecretValue"),
        "the SDK's own logs were not captured: {text}"
    );
    for value in [&first, &second, &api_key] {
        assert!(
            !text.contains(value.as_str()),
            "a secret value was logged:\n{text}"
        );
    }
}

/// A server that accepts connections and never answers: only the deadline ends the call.
#[tokio::test]
async fn a_silent_endpoint_fails_within_the_deadline_as_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let client = SecretsClient::new(secrets_sdk(&endpoint, None));
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aop/slow";

    let started = Instant::now();
    let err = client.fetch(arn).await.unwrap_err();
    let took = started.elapsed();
    held.abort();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(arn), "{err}");
    assert!(
        took < aop_aws::CALL_DEADLINE + Duration::from_secs(2),
        "took {took:?}"
    );
}

/// moto does not enforce IAM by default, so the denial comes from a local server that answers
/// `GetSecretValue` the way Secrets Manager does (awsJson1.1, `__type` names the error).
#[tokio::test]
async fn access_denied_is_reported_as_permanent_with_the_arn() {
    async fn deny(headers: HeaderMap) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        assert_eq!(
            headers.get("x-amz-target").and_then(|v| v.to_str().ok()),
            Some("secretsmanager.GetSecretValue")
        );
        let body = serde_json::json!({
            "__type": "AccessDeniedException",
            "Message": "User is not authorized to perform: secretsmanager:GetSecretValue"
        });
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            body.to_string(),
        )
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server =
        tokio::spawn(
            async move { axum::serve(listener, axum::Router::new().fallback(deny)).await },
        );
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:aop/locked";

    let err = SecretsClient::new(secrets_sdk(&endpoint, None))
        .fetch(arn)
        .await
        .unwrap_err();
    server.abort();
    assert!(
        matches!(&err, SecretsError::AccessDenied { code, .. } if code == "AccessDeniedException"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains(arn), "{err}");
}

/// `from_env` reads the region, the Secrets Manager endpoint and the credentials from the
/// standard variables; the service-specific endpoint wins over `AWS_ENDPOINT_URL`.
#[tokio::test]
async fn from_env_honours_the_standard_variables() {
    const TEST: &str = "secrets::from_env_honours_the_standard_variables";
    if is_child(TEST) {
        let arn = std::env::var("AOP_AWS_TEST_ARN").unwrap();
        let client = SecretsClient::from_env().await.unwrap();
        let secret = client.fetch(&arn).await.unwrap();
        let expected = std::env::var("AOP_AWS_TEST_EXPECTED").unwrap();
        assert_eq!(
            secret.field(keys::API_KEY).unwrap().expose_secret(),
            expected
        );
        return;
    }
    let Some(endpoint) = moto() else { return };
    let api_key = unique("sk");
    let (arn, _) = create(&endpoint, &api_key).await;
    run_in_child(
        TEST,
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            // Nothing listens on port 9: the call only succeeds if the specific one is used.
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", &endpoint),
            ("AOP_AWS_TEST_ARN", &arn),
            ("AOP_AWS_TEST_EXPECTED", &api_key),
        ],
    );
}

/// Without a region every call would fail later with a vaguer message; start-up stops instead.
#[tokio::test]
async fn from_env_without_a_region_is_a_configuration_error() {
    const TEST: &str = "secrets::from_env_without_a_region_is_a_configuration_error";
    if is_child(TEST) {
        let err = SecretsClient::from_env().await.unwrap_err();
        assert!(matches!(err, aop_aws::AwsConfigError::MissingRegion));
        assert!(err.to_string().contains("AWS_REGION"), "{err}");
        return;
    }
    run_in_child(TEST, &[]);
}
