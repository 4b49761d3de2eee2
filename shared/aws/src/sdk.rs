//! What every AWS call in this crate shares: the HTTPS client, the deadline and retry policy, how
//! the SDK configuration is loaded from the environment, and how SDK errors are sorted into
//! "try again later" versus "a person must fix something".

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_secretsmanager::config::SharedHttpClient;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Upper bound on one logical AWS call, retries and backoff included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Upper bound on one HTTP attempt, so a hung connection leaves time for a retry.
pub const ATTEMPT_DEADLINE: Duration = Duration::from_secs(2);
const CONNECT_DEADLINE: Duration = Duration::from_secs(1);
/// The SDK's standard mode: exponential backoff with jitter on throttling, 5xx and I/O errors.
const MAX_ATTEMPTS: u32 = 3;

/// A source error that can be shared between callers waiting on the same fetch.
pub(crate) type SharedSource = Arc<dyn StdError + Send + Sync>;

/// The HTTPS client every client in this crate uses: rustls with ring and the system's root
/// certificates (plain `http://` works too, for local endpoints).
///
/// The SDK's default client would build aws-lc-sys, a long C build that nothing else in the
/// workspace needs; ring is already compiled for rustls elsewhere.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The deadlines applied to every call, whatever configuration the SDK client was built with.
pub(crate) fn call_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(CALL_DEADLINE)
        .operation_attempt_timeout(ATTEMPT_DEADLINE)
        .connect_timeout(CONNECT_DEADLINE)
        .read_timeout(ATTEMPT_DEADLINE)
        .build()
}

/// The retry policy applied to every call.
pub(crate) fn call_retries() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// Loads the shared SDK configuration the way the AWS CLI does (environment, profile, container
/// or instance role), with this crate's HTTPS client, deadlines and retries.
///
/// Honours `AWS_REGION`, `AWS_ENDPOINT_URL` and the per-service `AWS_ENDPOINT_URL_<SERVICE>`
/// variables (`AWS_ENDPOINT_URL_SECRETS_MANAGER`, `AWS_ENDPOINT_URL_KAFKA`).
///
/// # Errors
/// [`AwsConfigError::MissingRegion`] when no region is configured: every call would fail later
/// with a less helpful message.
pub async fn load_sdk_config() -> Result<SdkConfig, AwsConfigError> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(call_timeouts())
        .retry_config(call_retries())
        .load()
        .await;
    if config.region().is_none() {
        return Err(AwsConfigError::MissingRegion);
    }
    Ok(config)
}

/// The AWS environment is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsConfigError {
    /// No region in `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile.
    #[error("no AWS region configured: set AWS_REGION (Lambda sets it for you)")]
    MissingRegion,
}

/// An SDK failure sorted by how a caller should react.
pub(crate) enum Failure {
    /// Timeouts, connection failures, unreadable responses, throttling and 5xx answers that
    /// outlasted the SDK's retries.
    Transient(SharedSource),
    /// The service answered with an error a retry will not fix.
    Service { code: String, source: SharedSource },
    /// The request could not be built: a configuration problem (region, endpoint, input).
    Unbuildable(SharedSource),
}

pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    let is_service = matches!(err, SdkError::ServiceError(_));
    let unbuildable = matches!(err, SdkError::ConstructionFailure(_));
    // Keep the inner error, not the SdkError: the latter carries the raw HTTP response, whose
    // Debug output could include a response body with secret material in it.
    let source: SharedSource = match err.into_source() {
        Ok(source) => Arc::from(source),
        Err(err) => Arc::new(Opaque(err.to_string())),
    };
    if unbuildable {
        return Failure::Unbuildable(source);
    }
    match (is_service, code) {
        (true, Some(code)) if !is_transient_code(&code) && status.is_none_or(|s| s < 500) => {
            Failure::Service { code, source }
        }
        _ => Failure::Transient(source),
    }
}

fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "RequestTimeout"
            | "RequestTimeoutException"
            | "InternalServiceError"
            | "InternalServerErrorException"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
    )
}

/// Error codes meaning the caller's identity may not do this (IAM, KMS or the credentials).
pub(crate) fn is_access_code(code: &str) -> bool {
    matches!(
        code,
        "AccessDeniedException"
            | "AccessDenied"
            | "ForbiddenException"
            | "UnauthorizedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "InvalidSignatureException"
            | "SignatureDoesNotMatch"
            | "ExpiredTokenException"
            | "MissingAuthenticationTokenException"
            | "DecryptionFailure"
            | "KMSAccessDeniedException"
    )
}

/// Stands in for an error whose source could not be taken apart.
#[derive(Debug)]
struct Opaque(String);

impl std::fmt::Display for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Opaque {}
