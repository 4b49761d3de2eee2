//! Toolsets: the groups of MCP tools a deployment offers (`AOP_TOOLSETS`).

use std::fmt;

/// A group of tools a deployment can offer or leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Toolset {
    /// Create, read, update, list and archive agents and their versions.
    Agents,
    /// Sessions, turns and recorded interactions.
    Sessions,
    /// Feedback and fitness statistics.
    Feedback,
    /// Deployments, canaries, rollbacks and reviewed proposals.
    Deployments,
    /// Evaluation cases and evolutions.
    Evolution,
}

impl Toolset {
    pub const ALL: [Self; 5] = [
        Self::Agents,
        Self::Sessions,
        Self::Feedback,
        Self::Deployments,
        Self::Evolution,
    ];

    /// The name used in `AOP_TOOLSETS`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Agents => "agents",
            Self::Sessions => "sessions",
            Self::Feedback => "feedback",
            Self::Deployments => "deployments",
            Self::Evolution => "evolution",
        }
    }

    /// The toolset called `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name.trim())
    }

    /// Every toolset's name, for error messages: `agents, sessions, ...`.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for Toolset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolsets_are_named_as_configured() {
        for toolset in Toolset::ALL {
            assert_eq!(Toolset::parse(toolset.name()), Some(toolset));
        }
        assert_eq!(Toolset::parse(" evolution "), Some(Toolset::Evolution));
        assert_eq!(Toolset::parse("agent"), None);
    }
}
