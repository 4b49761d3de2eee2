//! Why a process could not start. Each variant names the setting or the dependency at fault.

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{setting}: {reason}")]
    Unsupported {
        setting: &'static str,
        reason: String,
    },
    #[cfg(feature = "kafka")]
    #[error("kafka: {0}")]
    Kafka(#[from] aop_events::kafka::KafkaError),
    #[cfg(feature = "llm")]
    #[error("openai: {0}")]
    Llm(#[from] aop_llm::SetupError),
    #[error("secrets: {0}")]
    Secret(#[from] aop_aws::SecretsError),
    #[error("aws: {0}")]
    Aws(String),
    #[error("msk: {0}")]
    Msk(String),
    #[error("cannot use the store at {dir}")]
    Store {
        dir: String,
        #[source]
        source: aop_core::StoreError,
    },
}
