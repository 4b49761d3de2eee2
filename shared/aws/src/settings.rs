//! The `secrets` settings: the Secrets Manager secrets the platform reads, by ARN.

use std::time::Duration;

use aop_config::{Kind, Problems, Section, Setting};
use serde::{Deserialize, Serialize};

/// Secrets by ARN, each a JSON object; a secret's values win over the matching settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsSettings {
    /// `{"api_key": ...}`
    pub openai_arn: Option<String>,
    /// `{"username": ..., "password": ..., "uri": ...}` (`uri` optional)
    pub neo4j_arn: Option<String>,
    /// `{"username": ..., "password": ...}` for SASL/SCRAM
    pub kafka_arn: Option<String>,
    /// How long a read secret is served from memory.
    #[serde(rename = "ttl_seconds", with = "aop_config::seconds")]
    pub ttl: Duration,
}

impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            openai_arn: None,
            neo4j_arn: None,
            kafka_arn: None,
            ttl: Duration::from_secs(300),
        }
    }
}

impl SecretsSettings {
    pub fn any(&self) -> bool {
        self.openai_arn.is_some() || self.neo4j_arn.is_some() || self.kafka_arn.is_some()
    }
}

impl Section for SecretsSettings {
    const NAME: &'static str = "secrets";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("openai_arn", "OPENAI_SECRET_ARN", Kind::Text),
        Setting::new("neo4j_arn", "NEO4J_SECRET_ARN", Kind::Text),
        Setting::new("kafka_arn", "KAFKA_SECRET_ARN", Kind::Text),
        Setting::new("ttl_seconds", "AOP_SECRETS_TTL_SECONDS", Kind::Whole)
            .expecting("a whole number of seconds"),
    ];

    fn check(&self, problems: &mut Problems) {
        for (key, arn) in [
            ("openai_arn", &self.openai_arn),
            ("neo4j_arn", &self.neo4j_arn),
            ("kafka_arn", &self.kafka_arn),
        ] {
            if arn.as_ref().is_some_and(|a| !a.starts_with("arn:")) {
                problems.push(key, "must be a secret ARN (arn:aws:secretsmanager:...)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_is_a_setting() {
        assert_eq!(
            aop_config::undeclared::<super::SecretsSettings>(),
            Vec::<String>::new()
        );
    }
}
