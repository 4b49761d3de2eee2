//! Errors of the use cases. A variant exists only where a caller reacts differently.

use std::fmt;

use crate::ports::StoreError;

/// One invalid input field: which field (a dotted path such as `capabilities[1].name`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a use case did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input is invalid; every problem found is listed.
    #[error("invalid input: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The named thing does not exist.
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// The request is valid but the current state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// No model endpoint is configured; the message names the settings to provide.
    #[error("cannot run the agent: no LLM is configured: {0}")]
    ModelNotConfigured(String),
    /// The agent's turn failed (the model timed out, refused or was unavailable); the
    /// interaction is recorded as failed.
    #[error("{reason} (interaction {interaction_id} recorded as failed)")]
    TurnFailed {
        interaction_id: String,
        reason: String,
    },
    /// The store failed; the source says whether retrying can help.
    #[error("store failure")]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, reason)])
    }

    pub fn agent_not_found(id: &crate::AgentId) -> Self {
        Self::NotFound {
            kind: "agent",
            id: id.to_string(),
        }
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
