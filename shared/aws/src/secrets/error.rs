//! Why a secret could not be read. Every message names the secret's ARN (and the key, where one
//! is involved) and never its value, so errors can be logged and shown at start-up as they are.

use crate::sdk::SharedSource;

/// A failure to read a secret or one of its keys.
///
/// Cloneable so that callers waiting on the same fetch all receive its outcome.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// No secret with this ARN (or it was deleted). Permanent: fix the ARN in the configuration.
    #[error("secret {arn} was not found ({code})")]
    NotFound {
        /// The secret asked for.
        arn: String,
        /// The service's error code.
        code: String,
        /// What the service said.
        #[source]
        source: SharedSource,
    },
    /// The caller's role may not read the secret or decrypt it with its KMS key, or the
    /// credentials were refused. Permanent until IAM or the credentials change.
    #[error(
        "access to secret {arn} was denied ({code}): the role needs secretsmanager:GetSecretValue \
         on it and kms:Decrypt on its key"
    )]
    AccessDenied {
        /// The secret asked for.
        arn: String,
        /// The service's error code.
        code: String,
        /// What the service said.
        #[source]
        source: SharedSource,
    },
    /// Secrets Manager did not answer in time, could not be reached, throttled or failed
    /// internally, after the SDK's retries. Transient: worth trying again later.
    #[error("Secrets Manager could not be reached for secret {arn}")]
    Unreachable {
        /// The secret asked for.
        arn: String,
        /// The timeout, connection or service error.
        #[source]
        source: SharedSource,
    },
    /// The request was refused for another reason (for example the secret is scheduled for
    /// deletion) or could not be built (no region, a bad endpoint URL). Permanent.
    #[error("secret {arn} could not be read: {reason}")]
    Rejected {
        /// The secret asked for.
        arn: String,
        /// The service's error code, or what was wrong with the request.
        reason: String,
        /// The underlying error.
        #[source]
        source: SharedSource,
    },
    /// The secret exists but its content is not what the platform expects. The problem names
    /// the key involved, never a value.
    #[error("secret {arn} is malformed: {problem}")]
    Malformed {
        /// The secret asked for.
        arn: String,
        /// What is wrong, naming the key where there is one.
        problem: String,
    },
    /// The secret is a JSON object without the key asked for.
    #[error("secret {arn} has no key \"{key}\"")]
    MissingKey {
        /// The secret asked for.
        arn: String,
        /// The key that is missing.
        key: String,
    },
}

impl SecretsError {
    /// Whether trying again later may succeed (Secrets Manager was unreachable or overloaded).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// The ARN of the secret the error is about.
    pub fn arn(&self) -> &str {
        match self {
            Self::NotFound { arn, .. }
            | Self::AccessDenied { arn, .. }
            | Self::Unreachable { arn, .. }
            | Self::Rejected { arn, .. }
            | Self::Malformed { arn, .. }
            | Self::MissingKey { arn, .. } => arn,
        }
    }

    pub(crate) fn malformed(arn: &str, problem: impl Into<String>) -> Self {
        Self::Malformed {
            arn: arn.to_owned(),
            problem: problem.into(),
        }
    }
}
