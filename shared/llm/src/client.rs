//! The chat model on `async-openai`, with our own retries inside the caller's deadline.

use std::time::{Duration, Instant};

use aop_core::llm::{ChatModel, ChatRequest, ChatResponse, LlmError};
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_trait::async_trait;
use secrecy::ExposeSecret;

use crate::classify::{Failure, HttpStatusError, classify, parse_retry_after};
use crate::{OpenAiSettings, wire};

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the LLM client: {0}")]
pub struct SetupError(String);

/// A chat model behind an OpenAI-compatible HTTP API.
#[derive(Clone)]
pub struct OpenAiChatModel {
    client: Client<OpenAIConfig>,
    settings: OpenAiSettings,
    http: reqwest::Client,
}

impl OpenAiChatModel {
    /// Builds the HTTP client.
    ///
    /// # Errors
    /// `SetupError` when TLS or the HTTP client cannot be initialised.
    pub fn new(settings: OpenAiSettings) -> Result<Self, SetupError> {
        // The process-wide TLS provider; a second install (another client) is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.attempt_timeout.min(Duration::from_secs(10)))
            .timeout(settings.attempt_timeout)
            .build()
            .map_err(|e| SetupError(e.to_string()))?;
        let key = settings
            .api_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .unwrap_or_default();
        // Every field is set explicitly: OpenAIConfig::new() reads OPENAI_* variables itself.
        let config = OpenAIConfig::new()
            .with_api_base(settings.endpoint().trim_end_matches('/'))
            .with_api_key(key)
            .with_org_id(settings.organization.clone().unwrap_or_default())
            .with_project_id("");
        let probe = http.clone();
        let service = tower::service_fn(move |factory: HttpRequestFactory| {
            let http = http.clone();
            async move {
                let request = factory.build().await?;
                let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
                if response.status().is_success() {
                    return Ok(response);
                }
                let status = response.status().as_u16();
                let retry_after = parse_retry_after(response.headers());
                let body = response.text().await.unwrap_or_default();
                Err(OpenAIError::Boxed(Box::new(HttpStatusError {
                    status,
                    retry_after,
                    body,
                })))
            }
        });
        Ok(Self {
            client: Client::with_config(config).with_http_service(service),
            settings,
            http: probe,
        })
    }

    /// Checks the endpoint answers, accepts the key and offers `model` (`GET /models`, which
    /// costs nothing). Returns a line for an operator; errors say what to fix.
    ///
    /// # Errors
    /// A message naming the endpoint and what is wrong; never the key.
    pub async fn check_model(&self, model: &str, timeout: Duration) -> Result<String, String> {
        let url = self.settings.endpoint().trim_end_matches('/');
        let base = aop_config::redact::url(url);
        let mut request = self.http.get(format!("{url}/models")).timeout(timeout);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.scrub(format!("{base} did not answer: {}", e.without_url())))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(format!(
                    "{base} refused the API key (HTTP {})",
                    response.status().as_u16()
                ));
            }
            status => return Err(format!("{base}/models answered HTTP {status}")),
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{base}/models did not answer in time: {}", e.without_url()))?;
        let body: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{base}/models did not answer JSON: {e}"))?;
        let offered = body["data"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["id"] == model));
        if offered {
            Ok(format!("{base} offers {model}"))
        } else {
            Err(format!("{base} does not offer the model {model}"))
        }
    }

    /// Removes the API key from text that may echo it.
    fn scrub(&self, text: String) -> String {
        match &self.settings.api_key {
            Some(key) if !key.expose_secret().is_empty() => {
                text.replace(key.expose_secret(), "[REDACTED]")
            }
            _ => text,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .settings
            .base_backoff
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16));
        let capped = exp.min(self.settings.max_backoff);
        // Up to 25% jitter so parallel callers do not retry in step.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
        let spread = u64::try_from(capped.as_millis() / 4).unwrap_or(0) + 1;
        capped + Duration::from_millis(nanos % spread)
    }
}

#[async_trait]
impl ChatModel for OpenAiChatModel {
    async fn complete(
        &self,
        request: ChatRequest,
        deadline: Instant,
    ) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let body = wire::to_request(&request).map_err(|e| LlmError::Invalid(e.to_string()))?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LlmError::Timeout(started.elapsed()));
            }
            let chat = self.client.chat();
            let call = chat.create_byot::<_, wire::LenientResponse>(body.clone());
            let failure = match tokio::time::timeout(remaining, call).await {
                Ok(Ok(response)) => return wire::from_response(response),
                Ok(Err(e)) => classify(&e),
                Err(_) => return Err(LlmError::Timeout(started.elapsed())),
            };
            let message = self.scrub(failure.message.clone());
            match failure {
                Failure {
                    transient: false,
                    status,
                    ..
                } => {
                    tracing::warn!(status, %message, "LLM provider refused the request");
                    return Err(match status {
                        Some(status) => LlmError::Rejected { status, message },
                        None => LlmError::Invalid(message),
                    });
                }
                Failure {
                    retry_after,
                    status,
                    ..
                } => {
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
                    let out_of_attempts = attempt >= self.settings.max_attempts();
                    let out_of_time = Instant::now() + wait >= deadline;
                    tracing::info!(attempt, status, %message, wait_ms = wait.as_millis() as u64, "LLM call failed transiently");
                    if out_of_attempts || out_of_time {
                        if out_of_time && status.is_none() {
                            return Err(LlmError::Timeout(started.elapsed()));
                        }
                        return Err(LlmError::Unavailable {
                            attempts: attempt,
                            message,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
