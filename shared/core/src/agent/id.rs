//! Agent identifiers.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;

const MAX_LEN: usize = 64;

/// An agent's id: `agt_` and a time-ordered UUID when generated, so ids sort by creation.
/// Any 1..=64 characters of letters, digits, `_` and `-` parse.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl AgentId {
    pub fn generate() -> Self {
        Self(format!("agt_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id given by a caller.
    ///
    /// # Errors
    /// A `FieldError` naming `field` when the text cannot be an agent id.
    pub fn parse(field: &str, text: &str) -> Result<Self, FieldError> {
        Self::try_from(text.to_owned()).map_err(|reason| FieldError::new(field, reason))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        if text.len() > MAX_LEN {
            return Err(format!(
                "must be at most {MAX_LEN} characters (got {})",
                text.len()
            ));
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "'{}' is not an agent id (letters, digits, '_' and '-' only)",
                text.escape_debug()
            ));
        }
        Ok(Self(text))
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> Self {
        id.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_creation() {
        let a = AgentId::generate();
        let b = AgentId::generate();
        assert!(a < b, "{a} should sort before {b}");
        assert_eq!(AgentId::parse("agent_id", a.as_str()).unwrap(), a);
    }

    #[test]
    fn bad_ids_name_the_field() {
        let err = AgentId::parse("agent_id", "a b").unwrap_err();
        assert_eq!(err.field, "agent_id");
        assert!(err.reason.contains("letters, digits"), "{}", err.reason);
        assert!(AgentId::parse("agent_id", "").is_err());
        assert!(AgentId::parse("agent_id", &"x".repeat(65)).is_err());
    }
}
