//! The model port: one chat completion with optional function tools. The adapter (on
//! `async-openai`) retries transient failures inside the deadline it is given.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::session::{Role, TokenUsage};

/// A message sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Tool calls an assistant message made.
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn tool_result(call_id: &str, content: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.to_owned()),
        }
    }
}

/// A function tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// A function call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// One chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    /// The model that actually answered, as the provider reports it.
    pub model: String,
}

/// Why a completion failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// No model endpoint is configured; the message names the settings to provide.
    #[error("no LLM is configured: {0}")]
    NotConfigured(String),
    /// The deadline passed before the model answered (after any retries).
    #[error("the model did not answer within {0:?}")]
    Timeout(Duration),
    /// The provider refused the request (4xx other than 429); retrying will not help.
    #[error("the LLM provider refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The provider kept failing transiently (429, 5xx, connection errors) until retries or
    /// the deadline ran out.
    #[error("the LLM provider is unavailable after {attempts} attempts: {message}")]
    Unavailable { attempts: u32, message: String },
    /// The provider answered something that is not a usable completion.
    #[error("the LLM provider sent an unusable answer: {0}")]
    Invalid(String),
}

/// A chat model endpoint.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// Runs one completion, retrying transient failures, and gives up at `deadline`.
    ///
    /// # Errors
    /// `LlmError` saying whether the failure was configuration, time, the provider's refusal or
    /// its unavailability.
    async fn complete(
        &self,
        request: ChatRequest,
        deadline: Instant,
    ) -> Result<ChatResponse, LlmError>;
}

/// The model used when no LLM endpoint is configured: every call fails at once, naming the
/// settings to provide.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnconfiguredModel;

#[async_trait]
impl ChatModel for UnconfiguredModel {
    async fn complete(
        &self,
        _request: ChatRequest,
        _deadline: Instant,
    ) -> Result<ChatResponse, LlmError> {
        Err(LlmError::NotConfigured(
            "set OPENAI_API_KEY to use OpenAI, or OPENAI_BASE_URL to use a local \
             OpenAI-compatible server (Ollama, vLLM, LM Studio)"
                .into(),
        ))
    }
}
