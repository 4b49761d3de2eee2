//! Secrets from AWS Secrets Manager, fetched by ARN and cached.
//!
//! Each platform secret is a `SecretString` holding a JSON object of string values:
//!
//! | secret | keys |
//! | --- | --- |
//! | OpenAI-compatible LLM | `api_key` |
//! | Neo4j | `username`, `password`, optional `uri` (used when `NEO4J_URI` is not set) |
//! | Kafka SASL/SCRAM (MSK) | `username`, `password` (MSK requires the secret name to start with `AmazonMSK_`) |
//!
//! The key names are in [`keys`]. An OpenAI key may also be stored as the plain string itself
//! (what the console's "Plaintext" tab produces); such a secret answers only to `api_key`. A
//! `null` value counts as absent. Binary secrets are refused.
//!
//! Values are [`secrecy::SecretString`]s: they show up in no `Debug` output, no error and no log
//! line of this crate.

mod cache;
mod client;
mod error;
mod secret;

pub use cache::{DEFAULT_MIN_REFRESH_INTERVAL, SecretCache};
pub use client::SecretsClient;
pub use error::SecretsError;
pub use secret::{Secret, keys};
