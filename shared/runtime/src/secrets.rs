//! Secrets from AWS Secrets Manager, by ARN, before anything connects: the OpenAI key, the Neo4j
//! credentials (and URI), the Kafka SASL/SCRAM credentials. Values go straight into the
//! configuration's `SecretString`s and are never logged. A refused login fetches the secret
//! again (it may have been rotated): the Neo4j store through [`Neo4jSecret`], the model through
//! [`RotatingModel`].

use std::sync::{Arc, RwLock};
use std::time::Instant;

use aop_aws::secrets::keys;
use aop_aws::{SecretCache, SecretsClient, SecretsError};
use aop_core::llm::{ChatModel, ChatRequest, ChatResponse, LlmError};
use aop_llm::OpenAiChatModel;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, KafkaSecurityConfig};
use crate::doctor::Check;
use crate::platform::StartupError;

/// The secrets cache of this process, when any secret ARN is configured.
#[derive(Clone)]
pub struct Secrets {
    pub cache: Arc<SecretCache>,
}

fn secret_error(e: SecretsError) -> StartupError {
    StartupError::Secret(e)
}

/// Reads every configured secret into `config`. Returns the cache, for refreshes later; `None`
/// when no secret ARN is configured.
///
/// # Errors
/// `Secret` naming the ARN (and the key) that could not be read; `Unsupported` naming
/// `KAFKA_SECURITY_PROTOCOL` when a Kafka secret is given for a protocol without credentials.
pub async fn resolve(config: &mut Config) -> Result<Option<Secrets>, StartupError> {
    if !config.secrets.any() {
        return Ok(None);
    }
    let client = SecretsClient::from_env()
        .await
        .map_err(|e| StartupError::Aws(e.to_string()))?;
    let cache = Arc::new(SecretCache::new(client, config.secrets.ttl));
    if let Some(arn) = &config.secrets.openai_arn {
        config.openai.api_key = Some(
            cache
                .field(arn, keys::API_KEY)
                .await
                .map_err(secret_error)?,
        );
    }
    if let Some(arn) = &config.secrets.neo4j_arn {
        let secret = cache.get(arn).await.map_err(secret_error)?;
        let uri = secret.optional_field(keys::URI).map_err(secret_error)?;
        if let Some(neo4j) = config.database.neo4j.as_mut() {
            neo4j.username = secret
                .field(keys::USERNAME)
                .map_err(secret_error)?
                .expose_secret()
                .to_owned();
            neo4j.password = secret.field(keys::PASSWORD).map_err(secret_error)?;
            // NEO4J_URI, when set, wins: the secret's URI is the default.
            if neo4j.uri.is_empty()
                && let Some(uri) = uri
            {
                neo4j.uri = uri.expose_secret().to_owned();
            }
        }
    }
    if let Some(arn) = &config.secrets.kafka_arn {
        let secret = cache.get(arn).await.map_err(secret_error)?;
        match &mut config.kafka.security {
            KafkaSecurityConfig::SaslScram {
                username, password, ..
            } => {
                *username = secret
                    .field(keys::USERNAME)
                    .map_err(secret_error)?
                    .expose_secret()
                    .to_owned();
                *password = secret.field(keys::PASSWORD).map_err(secret_error)?;
            }
            _ => {
                return Err(StartupError::Unsupported {
                    setting: "kafka.security_protocol (KAFKA_SECURITY_PROTOCOL)",
                    reason: "KAFKA_SECRET_ARN holds SASL/SCRAM credentials: set it to sasl_ssl"
                        .into(),
                });
            }
        }
    }
    tracing::info!(
        openai = config.secrets.openai_arn.is_some(),
        neo4j = config.secrets.neo4j_arn.is_some(),
        kafka = config.secrets.kafka_arn.is_some(),
        "secrets read from Secrets Manager"
    );
    Ok(Some(Secrets { cache }))
}

/// The Neo4j credentials, fetched again from their secret after a refused login.
pub struct Neo4jSecret {
    pub cache: Arc<SecretCache>,
    pub arn: String,
}

#[async_trait]
impl aop_store_neo4j::CredentialSource for Neo4jSecret {
    async fn refresh(&self) -> Result<(String, SecretString), String> {
        let secret = self
            .cache
            .refresh(&self.arn)
            .await
            .map_err(|e| e.to_string())?;
        let username = secret.field(keys::USERNAME).map_err(|e| e.to_string())?;
        let password = secret.field(keys::PASSWORD).map_err(|e| e.to_string())?;
        Ok((username.expose_secret().to_owned(), password))
    }
}

/// A model whose API key lives in a secret: when the endpoint refuses the key (HTTP 401), the
/// secret is read again and, if it changed, the call is made once more with the new key.
pub struct RotatingModel {
    current: RwLock<(Arc<OpenAiChatModel>, SecretString)>,
    cache: Arc<SecretCache>,
    arn: String,
    config: Config,
}

impl RotatingModel {
    /// # Errors
    /// `Llm` when the HTTP client cannot be built.
    pub fn new(config: &Config, secrets: &Secrets, arn: &str) -> Result<Self, StartupError> {
        let model = crate::platform::openai_model(config)?
            .ok_or_else(|| StartupError::Aws("the OpenAI secret gave no key".into()))?;
        let key = config
            .openai
            .api_key
            .clone()
            .unwrap_or_else(|| SecretString::from(""));
        Ok(Self {
            current: RwLock::new((Arc::new(model), key)),
            cache: secrets.cache.clone(),
            arn: arn.to_owned(),
            config: config.clone(),
        })
    }

    fn model(&self) -> Arc<OpenAiChatModel> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Swaps in a client with the secret's current key; `false` when the key did not change.
    async fn rotate(&self) -> bool {
        let key = match self.cache.refresh(&self.arn).await {
            Ok(secret) => match secret.field(keys::API_KEY) {
                Ok(key) => key,
                Err(e) => {
                    tracing::error!(error = %e, "the OpenAI secret has no usable key");
                    return false;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the OpenAI secret again");
                return false;
            }
        };
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.1.expose_secret() == key.expose_secret() {
            return false;
        }
        let mut config = self.config.clone();
        config.openai.api_key = Some(key.clone());
        match crate::platform::openai_model(&config) {
            Ok(Some(model)) => {
                *current = (Arc::new(model), key);
                tracing::info!("OpenAI key rotated");
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

#[async_trait]
impl ChatModel for RotatingModel {
    async fn complete(
        &self,
        request: ChatRequest,
        deadline: Instant,
    ) -> Result<ChatResponse, LlmError> {
        match self.model().complete(request.clone(), deadline).await {
            Err(LlmError::Rejected { status: 401, .. }) if self.rotate().await => {
                self.model().complete(request, deadline).await
            }
            other => other,
        }
    }
}

/// One doctor line per configured secret: readable, and holding the keys it must hold.
pub async fn doctor(config: &Config) -> Vec<Check> {
    let wanted: Vec<(&str, &str, &[&str])> = [
        (
            config.secrets.openai_arn.as_deref(),
            "OPENAI_SECRET_ARN",
            &[keys::API_KEY][..],
        ),
        (
            config.secrets.neo4j_arn.as_deref(),
            "NEO4J_SECRET_ARN",
            &[keys::USERNAME, keys::PASSWORD][..],
        ),
        (
            config.secrets.kafka_arn.as_deref(),
            "KAFKA_SECRET_ARN",
            &[keys::USERNAME, keys::PASSWORD][..],
        ),
    ]
    .into_iter()
    .filter_map(|(arn, var, keys)| arn.map(|a| (a, var, keys)))
    .collect();
    if wanted.is_empty() {
        return vec![Check::skipped("secrets", "no secret ARNs configured")];
    }
    let client = match SecretsClient::from_env().await {
        Ok(client) => client,
        Err(e) => {
            return vec![Check::failed(
                "secrets",
                e.to_string(),
                "set AWS_REGION (and credentials) for Secrets Manager",
            )];
        }
    };
    let mut checks = Vec::new();
    for (arn, var, required) in wanted {
        let outcome = match client.fetch(arn).await {
            Ok(secret) => required
                .iter()
                .try_for_each(|k| secret.field(k).map(drop))
                .map(|()| format!("{var}: {arn} holds {}", required.join(", "))),
            Err(e) => Err(e),
        };
        checks.push(match outcome {
            Ok(detail) => Check::ok("secrets", detail),
            Err(e @ SecretsError::MissingKey { .. }) | Err(e @ SecretsError::Malformed { .. }) => {
                Check::failed(
                    "secrets",
                    format!("{var}: {e}"),
                    format!("store a JSON object with the keys {} in it", required.join(", ")),
                )
            }
            Err(e @ SecretsError::AccessDenied { .. }) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                "allow secretsmanager:GetSecretValue on it for this role (and kms:Decrypt on its key)",
            ),
            Err(e @ SecretsError::NotFound { .. }) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                format!("create the secret, or fix {var} (region and account are part of the ARN)"),
            ),
            Err(e) => Check::failed(
                "secrets",
                format!("{var}: {e}"),
                "check AWS_REGION, the credentials and that this host reaches Secrets Manager (a VPC endpoint, say)",
            ),
        });
    }
    checks
}
