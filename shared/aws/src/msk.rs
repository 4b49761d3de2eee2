//! MSK bootstrap broker discovery: turns a cluster ARN into the `host:port,...` list for the
//! listener that matches how the platform authenticates to Kafka, so deployments configure the
//! cluster ARN instead of copying broker addresses that change when brokers are replaced.

use std::fmt;

use aws_sdk_kafka::Client;
use aws_sdk_kafka::config::Builder as ConfigBuilder;
use aws_sdk_kafka::config::http::HttpResponse;
use aws_sdk_kafka::error::SdkError;
use aws_sdk_kafka::operation::get_bootstrap_brokers::{
    GetBootstrapBrokersError, GetBootstrapBrokersOutput,
};
use tokio::sync::OnceCell;

use crate::sdk::{self, AwsConfigError, Failure, SharedSource};

/// How the platform authenticates to the cluster, which picks the listener (and port) to use.
/// The public-access listeners are not offered: the functions run inside the cluster's VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MskAuth {
    /// IAM access control over TLS (`BootstrapBrokerStringSaslIam`, port 9098).
    Iam,
    /// SASL/SCRAM over TLS (`BootstrapBrokerStringSaslScram`, port 9096).
    SaslScram,
    /// TLS without client authentication, or with mutual TLS (`BootstrapBrokerStringTls`, 9094).
    Tls,
    /// No encryption, no authentication (`BootstrapBrokerString`, port 9092).
    Plaintext,
}

impl MskAuth {
    fn pick(self, out: &GetBootstrapBrokersOutput) -> Option<&str> {
        match self {
            Self::Iam => out.bootstrap_broker_string_sasl_iam(),
            Self::SaslScram => out.bootstrap_broker_string_sasl_scram(),
            Self::Tls => out.bootstrap_broker_string_tls(),
            Self::Plaintext => out.bootstrap_broker_string(),
        }
    }

    fn how_to_enable(self) -> &'static str {
        match self {
            Self::Iam => "enable IAM access control on the cluster",
            Self::SaslScram => "enable SASL/SCRAM on the cluster",
            Self::Tls => "allow TLS client traffic (in-transit encryption TLS or TLS_PLAINTEXT)",
            Self::Plaintext => {
                "allow plaintext client traffic (in-transit encryption PLAINTEXT or TLS_PLAINTEXT)"
            }
        }
    }
}

impl fmt::Display for MskAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Iam => "IAM",
            Self::SaslScram => "SASL/SCRAM",
            Self::Tls => "TLS",
            Self::Plaintext => "plaintext",
        })
    }
}

/// Calls the MSK control-plane API (`kafka.<region>.amazonaws.com`).
///
/// Every call is bounded by [`crate::CALL_DEADLINE`] and retried by the SDK's standard policy.
#[derive(Debug, Clone)]
pub struct MskClient {
    inner: Client,
}

impl MskClient {
    /// A client configured from the environment by [`crate::load_sdk_config`] (endpoint
    /// override: `AWS_ENDPOINT_URL_KAFKA` or `AWS_ENDPOINT_URL`).
    ///
    /// # Errors
    /// [`AwsConfigError::MissingRegion`] when no region is configured.
    pub async fn from_env() -> Result<Self, AwsConfigError> {
        let config = sdk::load_sdk_config().await?;
        Ok(Self::new(Client::new(&config)))
    }

    /// Wraps an SDK client built elsewhere.
    pub fn new(client: Client) -> Self {
        Self { inner: client }
    }
}

/// The bootstrap broker list (`host:port,host:port,...`) of `cluster_arn` for `auth`.
///
/// # Errors
/// [`MskError::NoBrokers`] when the cluster has no listener for `auth`; otherwise not found,
/// access denied, unreachable (transient) or rejected, each naming the cluster ARN.
pub async fn bootstrap_brokers(
    client: &MskClient,
    cluster_arn: &str,
    auth: MskAuth,
) -> Result<String, MskError> {
    let output = client
        .inner
        .get_bootstrap_brokers()
        .cluster_arn(cluster_arn)
        .customize()
        .config_override(
            ConfigBuilder::default()
                .timeout_config(sdk::call_timeouts())
                .retry_config(sdk::call_retries()),
        )
        .send()
        .await
        .map_err(|err| from_sdk(cluster_arn, err))?;
    match auth.pick(&output).map(str::trim) {
        Some(brokers) if !brokers.is_empty() => {
            tracing::info!(cluster_arn, %auth, brokers, "discovered MSK bootstrap brokers");
            Ok(brokers.to_owned())
        }
        _ => Err(MskError::NoBrokers {
            cluster_arn: cluster_arn.to_owned(),
            auth,
        }),
    }
}

/// Discovers a cluster's bootstrap brokers once and keeps them for the life of the process (a
/// Lambda container): brokers change rarely, and a client that loses them re-resolves through
/// the broker list it already has.
///
/// A failed discovery is not kept: the next call tries again.
#[derive(Debug)]
pub struct MskBootstrap {
    client: MskClient,
    cluster_arn: String,
    auth: MskAuth,
    brokers: OnceCell<String>,
}

impl MskBootstrap {
    /// Nothing is called until [`MskBootstrap::brokers`].
    pub fn new(client: MskClient, cluster_arn: impl Into<String>, auth: MskAuth) -> Self {
        Self {
            client,
            cluster_arn: cluster_arn.into(),
            auth,
            brokers: OnceCell::new(),
        }
    }

    /// The broker list, discovered on the first call; concurrent first callers share one call.
    ///
    /// # Errors
    /// As [`bootstrap_brokers`].
    pub async fn brokers(&self) -> Result<&str, MskError> {
        self.brokers
            .get_or_try_init(|| bootstrap_brokers(&self.client, &self.cluster_arn, self.auth))
            .await
            .map(String::as_str)
    }
}

/// Why the bootstrap brokers could not be discovered. Every message names the cluster ARN.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MskError {
    /// The cluster has no listener for the chosen authentication.
    #[error(
        "MSK cluster {cluster_arn} has no {auth} brokers; {} or set KAFKA_SECURITY_PROTOCOL to \
         match the cluster",
        auth.how_to_enable()
    )]
    NoBrokers {
        /// The cluster asked about.
        cluster_arn: String,
        /// The authentication that has no listener.
        auth: MskAuth,
    },
    /// No cluster with this ARN. Permanent: fix the ARN in the configuration.
    #[error("MSK cluster {cluster_arn} was not found ({code})")]
    NotFound {
        /// The cluster asked about.
        cluster_arn: String,
        /// The service's error code.
        code: String,
        /// What the service said.
        #[source]
        source: SharedSource,
    },
    /// The role may not call `kafka:GetBootstrapBrokers` on the cluster. Permanent.
    #[error(
        "access to MSK cluster {cluster_arn} was denied ({code}): the role needs \
         kafka:GetBootstrapBrokers on it"
    )]
    AccessDenied {
        /// The cluster asked about.
        cluster_arn: String,
        /// The service's error code.
        code: String,
        /// What the service said.
        #[source]
        source: SharedSource,
    },
    /// The MSK API did not answer in time, could not be reached, throttled or failed
    /// internally, after the SDK's retries. Transient.
    #[error("the MSK API could not be reached for cluster {cluster_arn}")]
    Unreachable {
        /// The cluster asked about.
        cluster_arn: String,
        /// The timeout, connection or service error.
        #[source]
        source: SharedSource,
    },
    /// The request was refused for another reason (a malformed ARN, a cluster still being
    /// created) or could not be built. Permanent.
    #[error("bootstrap brokers of MSK cluster {cluster_arn} could not be read: {reason}")]
    Rejected {
        /// The cluster asked about.
        cluster_arn: String,
        /// The service's error code, or what was wrong with the request.
        reason: String,
        /// The underlying error.
        #[source]
        source: SharedSource,
    },
}

impl MskError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

fn from_sdk(cluster_arn: &str, err: SdkError<GetBootstrapBrokersError, HttpResponse>) -> MskError {
    let cluster_arn = cluster_arn.to_owned();
    match sdk::classify(err) {
        Failure::Transient(source) => MskError::Unreachable {
            cluster_arn,
            source,
        },
        Failure::Unbuildable(source) => MskError::Rejected {
            cluster_arn,
            reason: "the request could not be built (check the region, endpoint and ARN)".into(),
            source,
        },
        Failure::Service { code, source } => match code.as_str() {
            "NotFoundException" => MskError::NotFound {
                cluster_arn,
                code,
                source,
            },
            c if sdk::is_access_code(c) => MskError::AccessDenied {
                cluster_arn,
                code,
                source,
            },
            _ => MskError::Rejected {
                cluster_arn,
                reason: format!("the MSK API answered {code}"),
                source,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_listener_message_says_what_to_change() {
        let err = MskError::NoBrokers {
            cluster_arn: "arn:aws:kafka:eu-west-1:1:cluster/aop/abc".into(),
            auth: MskAuth::SaslScram,
        };
        assert_eq!(
            err.to_string(),
            "MSK cluster arn:aws:kafka:eu-west-1:1:cluster/aop/abc has no SASL/SCRAM brokers; \
             enable SASL/SCRAM on the cluster or set KAFKA_SECURITY_PROTOCOL to match the cluster"
        );
    }
}
