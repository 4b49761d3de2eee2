//! AWS integration: Secrets Manager (cached), MSK bootstrap broker discovery and MSK IAM
//! authentication tokens.
//!
//! Both clients are built from [`load_sdk_config`] (or wrap an SDK client built elsewhere) and
//! every call they make has a deadline ([`CALL_DEADLINE`], [`ATTEMPT_DEADLINE`] per attempt) and
//! the SDK's standard retries, so a slow or unreachable AWS endpoint fails start-up in seconds
//! with an error naming what was asked for.

#[cfg(feature = "msk")]
pub mod msk;
#[cfg(feature = "msk")]
pub mod msk_iam;
mod sdk;
pub mod secrets;
mod settings;

#[cfg(feature = "msk")]
pub use msk::{MskAuth, MskBootstrap, MskClient, MskError, bootstrap_brokers};
#[cfg(feature = "msk")]
pub use msk_iam::{MskIamError, MskIamTokens, MskToken};
pub use sdk::{ATTEMPT_DEADLINE, AwsConfigError, CALL_DEADLINE, https_client, load_sdk_config};
pub use secrets::{Secret, SecretCache, SecretsClient, SecretsError};
pub use settings::SecretsSettings;
