//! Errors, the bottom of the crate: what a store reports and why a use case did not happen. A
//! variant exists only where a caller reacts differently. Nothing here imports the rest of the
//! crate.

use std::fmt;

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

/// A store failure, split by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write lost a race or hit a uniqueness rule; re-reading and retrying can succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend is unreachable or busy; retrying later can succeed.
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else: a bug, corrupt data, a schema mismatch. Retrying will not help.
    #[error("store error: {message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    pub fn permanent(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Permanent {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Unavailable { .. })
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
    /// The caller may not do this (approve their own proposal, review without being a
    /// reviewer).
    #[error("not allowed: {0}")]
    Forbidden(String),
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
    /// An agent or a caller has spent its daily allowance on model calls; the message names
    /// which, how much and when turns resume.
    #[error("daily spend cap reached: {0}")]
    SpendCapReached(String),
    /// The store failed; the source says whether retrying can help.
    #[error("store failure")]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, reason)])
    }

    pub fn agent_not_found(id: &impl fmt::Display) -> Self {
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
