//! The `openai` settings.

use std::time::Duration;

use aop_config::{Kind, Problems, Section, Setting};
use aop_core::pricing::PriceTable;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The `openai` settings: how to reach the model endpoint, the default model and prices.
/// `Debug` never shows the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// Base URL including the version path, such as `http://localhost:11434/v1`; OpenAI's own
    /// when unset.
    pub base_url: Option<String>,
    pub organization: Option<String>,
    /// The model of agents that name none.
    pub model: String,
    /// Bound on one HTTP attempt; the caller's deadline bounds the whole call.
    #[serde(rename = "timeout_seconds", with = "aop_config::seconds")]
    pub attempt_timeout: Duration,
    /// Retries of transient failures after the first attempt.
    pub max_retries: u32,
    /// Prices added to or replacing the defaults: `model=input/output` (USD per million
    /// tokens), comma-separated.
    pub prices: String,
    /// First backoff delay; doubles per attempt up to `max_backoff`.
    #[serde(skip)]
    pub base_backoff: Duration,
    #[serde(skip)]
    pub max_backoff: Duration,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            organization: None,
            model: "gpt-4o-mini".into(),
            attempt_timeout: Duration::from_secs(30),
            max_retries: 3,
            prices: String::new(),
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl OpenAiSettings {
    pub const OPENAI_BASE_URL: &'static str = "https://api.openai.com/v1";

    pub fn new(base_url: impl Into<String>, api_key: Option<SecretString>) -> Self {
        Self {
            base_url: Some(base_url.into()),
            api_key,
            ..Self::default()
        }
    }

    /// Whether a model endpoint is configured: a key (OpenAI itself) or a base URL (a local
    /// server may need no key).
    pub fn is_configured(&self) -> bool {
        self.api_key.is_some() || self.base_url.is_some()
    }

    /// The base URL calls go to.
    pub fn endpoint(&self) -> &str {
        self.base_url.as_deref().unwrap_or(Self::OPENAI_BASE_URL)
    }

    /// The default prices with the configured ones added.
    ///
    /// # Errors
    /// Why the `prices` text does not parse.
    pub fn price_table(&self) -> Result<PriceTable, String> {
        let mut prices = PriceTable::openai_defaults();
        prices.extend_from_spec(&self.prices)?;
        Ok(prices)
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries + 1
    }
}

impl Section for OpenAiSettings {
    const NAME: &'static str = "openai";
    const SETTINGS: &'static [Setting] = &[
        Setting::secret("api_key", "OPENAI_API_KEY", Kind::Text),
        Setting::new("base_url", "OPENAI_BASE_URL", Kind::Text),
        Setting::new("model", "OPENAI_MODEL", Kind::Text),
        Setting::new("timeout_seconds", "OPENAI_TIMEOUT_SECONDS", Kind::Whole)
            .expecting("a whole number of seconds"),
        Setting::new("organization", "OPENAI_ORG_ID", Kind::Text),
        Setting::new("max_retries", "OPENAI_MAX_RETRIES", Kind::Whole),
        Setting::new("prices", "AOP_MODEL_PRICES", Kind::Text),
    ];

    fn check(&self, problems: &mut Problems) {
        if let Some(url) = &self.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push("base_url", "must be an http:// or https:// URL");
        }
        if self.attempt_timeout.is_zero() {
            problems.push("timeout_seconds", "must be at least 1");
        }
        if self.model.trim().is_empty() {
            problems.push("model", "must not be empty");
        }
        if self.max_retries > 10 {
            problems.push("max_retries", "must be at most 10");
        }
        if let Err(reason) = self.price_table() {
            problems.push("prices", reason);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_is_a_setting() {
        assert_eq!(
            aop_config::undeclared::<super::OpenAiSettings>(),
            Vec::<String>::new()
        );
    }
}
