//! Secrets from AWS Secrets Manager, by ARN, before anything connects: the OpenAI key, the Neo4j
//! credentials (and URI), the Kafka SASL/SCRAM credentials. Values go straight into the
//! configuration's `SecretString`s and are never logged. A refused login fetches the secret
//! again (it may have been rotated): the Neo4j store through [`Neo4jSecret`], the model through
//! [`RotatingModel`].

use std::sync::Arc;

use aop_aws::secrets::keys;
use aop_aws::{SecretCache, SecretsClient, SecretsError};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::error::StartupError;
use crate::role::Role;

/// The secrets cache of this process, when any secret ARN is configured.
#[derive(Clone)]
pub struct Secrets {
    pub cache: Arc<SecretCache>,
}

fn secret_error(e: SecretsError) -> StartupError {
    StartupError::Secret(e)
}

/// The secret ARNs `role` reads: the store's always, the model's and Kafka's only where the
/// role uses them.
pub fn used_by(config: &Config, role: Role) -> Vec<&str> {
    let s = &config.secrets;
    [
        s.neo4j_arn.as_deref(),
        s.openai_arn.as_deref().filter(|_| role.uses_llm()),
        s.kafka_arn.as_deref().filter(|_| role.uses_kafka()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Reads the configured secrets `role` uses into `config`, and no other. Returns the cache,
/// for refreshes later; `None` when the role reads no secret.
///
/// # Errors
/// `Secret` naming the ARN (and the key) that could not be read; `Unsupported` naming
/// `KAFKA_SECURITY_PROTOCOL` when a Kafka secret is given for a protocol without credentials.
pub async fn resolve(config: &mut Config, role: Role) -> Result<Option<Secrets>, StartupError> {
    if used_by(config, role).is_empty() {
        return Ok(None);
    }
    let client = SecretsClient::from_env()
        .await
        .map_err(|e| StartupError::Aws(e.to_string()))?;
    resolve_from(config, role, client).await.map(Some)
}

/// As [`resolve`], reading through `client`.
///
/// # Errors
/// As [`resolve`].
pub async fn resolve_from(
    config: &mut Config,
    role: Role,
    client: SecretsClient,
) -> Result<Secrets, StartupError> {
    let cache = Arc::new(SecretCache::new(client, config.secrets.ttl));
    if let Some(arn) = config
        .secrets
        .openai_arn
        .as_ref()
        .filter(|_| role.uses_llm())
    {
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
        if let Some(neo4j) = config.neo4j.as_mut() {
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
    if let Some(arn) = config
        .secrets
        .kafka_arn
        .as_ref()
        .filter(|_| role.uses_kafka())
    {
        if !config.kafka.uses_sasl() {
            return Err(StartupError::Unsupported {
                setting: "kafka.security_protocol (KAFKA_SECURITY_PROTOCOL)",
                reason: "KAFKA_SECRET_ARN holds SASL/SCRAM credentials: set it to sasl_ssl with a \
                         SCRAM mechanism (MSK IAM needs no secret: leave KAFKA_SECRET_ARN unset)"
                    .into(),
            });
        }
        let secret = cache.get(arn).await.map_err(secret_error)?;
        config.kafka.sasl_username = secret
            .field(keys::USERNAME)
            .map_err(secret_error)?
            .expose_secret()
            .to_owned();
        config.kafka.sasl_password = secret.field(keys::PASSWORD).map_err(secret_error)?;
    }
    tracing::info!(
        role = role.name(),
        openai = config.secrets.openai_arn.is_some() && role.uses_llm(),
        neo4j = config.secrets.neo4j_arn.is_some(),
        kafka = config.secrets.kafka_arn.is_some() && role.uses_kafka(),
        "secrets read from Secrets Manager"
    );
    Ok(Secrets { cache })
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

#[cfg(feature = "llm")]
pub use rotating::RotatingModel;

#[cfg(feature = "llm")]
mod rotating {
    use std::sync::{Arc, RwLock};
    use std::time::Instant;

    use aop_aws::SecretCache;
    use aop_aws::secrets::keys;
    use aop_core::llm::{ChatModel, ChatRequest, ChatResponse, LlmError};
    use aop_llm::OpenAiChatModel;
    use async_trait::async_trait;
    use secrecy::{ExposeSecret, SecretString};

    use super::Secrets;
    use crate::config::Config;
    use crate::error::StartupError;

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
            let model = crate::adapters::openai_model(config)?
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
            match crate::adapters::openai_model(&config) {
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
}
