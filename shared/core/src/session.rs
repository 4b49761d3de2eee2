//! Sessions (one user talking to one agent alias), their messages, and interactions (one agent
//! turn each, recorded with tokens, cost, latency and tool calls).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentId;
use crate::ids::prefixed_id;
use crate::principal::Principal;

prefixed_id!(SessionId, "ses_", "session");
prefixed_id!(InteractionId, "int_", "interaction");
prefixed_id!(FeedbackId, "fb_", "feedback");

/// Whether a session takes more messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Ended,
}

/// A conversation of one user with one agent alias, pinned to the version the alias resolved to
/// when it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    pub session_id: SessionId,
    pub agent_id: AgentId,
    pub alias: String,
    /// The version every turn of this session uses.
    pub version: u32,
    pub user_id: String,
    /// Caller-supplied context (a JSON object), kept with the session.
    pub context: serde_json::Value,
    pub status: SessionStatus,
    pub summary: Option<String>,
    pub created_at: i64,
    pub ended_at: Option<i64>,
}

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "system" => Some(Self::System),
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            "tool" => Some(Self::Tool),
            _ => None,
        }
    }
}

/// One message of a session, numbered from 1 in the order it was said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub session_id: SessionId,
    pub seq: u32,
    pub role: Role,
    pub content: String,
    /// The turn that produced or consumed it.
    pub interaction_id: InteractionId,
    pub created_at: i64,
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InteractionStatus {
    Completed,
    Failed,
}

/// Tokens a turn used, over every model call it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl TokenUsage {
    pub fn add(&mut self, other: Self) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// A tool call the model made during a turn, and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallRecord {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    /// The agent the call was delegated to, when it was a delegation.
    pub delegate_agent_id: Option<AgentId>,
    /// The delegate's own recorded interaction.
    pub delegate_interaction_id: Option<InteractionId>,
    /// What the model was told: the delegate's answer or the error.
    pub result: String,
    pub is_error: bool,
}

/// One agent turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Interaction {
    pub interaction_id: InteractionId,
    pub agent_id: AgentId,
    pub version: u32,
    pub session_id: Option<SessionId>,
    /// The interaction that delegated this one.
    pub parent_interaction_id: Option<InteractionId>,
    pub input: String,
    pub output: Option<String>,
    pub model: String,
    pub usage: TokenUsage,
    /// US dollars, from the configured price table; `None` when the model has no price.
    pub cost_usd: Option<f64>,
    pub latency_ms: u64,
    pub tool_calls: Vec<ToolCallRecord>,
    pub status: InteractionStatus,
    pub error: Option<String>,
    pub created_at: i64,
    /// Who asked for the turn (an API key's name, a token's subject; a delegated turn inherits
    /// it). Absent in records written before callers were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<Principal>,
}
