//! The one Secrets Manager call the platform makes, `GetSecretValue`, with its deadline, retries
//! and errors sorted for the caller.

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::Builder as ConfigBuilder;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::SdkError;
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

use super::{Secret, SecretsError};
use crate::sdk::{self, AwsConfigError, Failure};

/// Reads secrets from AWS Secrets Manager.
///
/// Every call is bounded by [`crate::CALL_DEADLINE`] (with [`crate::ATTEMPT_DEADLINE`] per
/// attempt) and retried by the SDK's standard policy, whatever the wrapped client was built with.
#[derive(Debug, Clone)]
pub struct SecretsClient {
    inner: Client,
}

impl SecretsClient {
    /// A client configured from the environment by [`crate::load_sdk_config`]: region from
    /// `AWS_REGION`, endpoint from `AWS_ENDPOINT_URL_SECRETS_MANAGER` or `AWS_ENDPOINT_URL` when
    /// set (moto, LocalStack), credentials from the usual chain.
    ///
    /// # Errors
    /// [`AwsConfigError::MissingRegion`] when no region is configured.
    pub async fn from_env() -> Result<Self, AwsConfigError> {
        let config = sdk::load_sdk_config().await?;
        Ok(Self::new(Client::new(&config)))
    }

    /// Wraps an SDK client built elsewhere (tests, or a shared `SdkConfig`).
    pub fn new(client: Client) -> Self {
        Self { inner: client }
    }

    /// Fetches and parses one secret, bypassing any cache.
    ///
    /// # Errors
    /// See [`SecretsError`]: not found, access denied, unreachable (transient), rejected, or a
    /// binary / malformed secret. Messages name the ARN, never the value.
    pub async fn fetch(&self, arn: &str) -> Result<Secret, SecretsError> {
        let output = self
            .inner
            .get_secret_value()
            .secret_id(arn)
            .customize()
            .config_override(
                ConfigBuilder::default()
                    .timeout_config(sdk::call_timeouts())
                    .retry_config(sdk::call_retries()),
            )
            .send()
            .await
            .map_err(|err| from_sdk(arn, err))?;
        let version_id = output.version_id().map(str::to_owned);
        tracing::debug!(arn, version_id = version_id.as_deref(), "fetched secret");
        match output.secret_string() {
            Some(text) => Secret::parse(arn, version_id, text),
            None => Err(SecretsError::malformed(
                arn,
                "it holds binary data (SecretBinary); store the JSON as SecretString",
            )),
        }
    }
}

fn from_sdk(arn: &str, err: SdkError<GetSecretValueError, HttpResponse>) -> SecretsError {
    let arn = arn.to_owned();
    match sdk::classify(err) {
        Failure::Transient(source) => SecretsError::Unreachable { arn, source },
        Failure::Unbuildable(source) => SecretsError::Rejected {
            arn,
            reason: "the request could not be built (check the region, endpoint and ARN)".into(),
            source,
        },
        Failure::Service { code, source } => match code.as_str() {
            "ResourceNotFoundException" => SecretsError::NotFound { arn, code, source },
            c if sdk::is_access_code(c) => SecretsError::AccessDenied { arn, code, source },
            _ => SecretsError::Rejected {
                arn,
                reason: format!("Secrets Manager answered {code}"),
                source,
            },
        },
    }
}
