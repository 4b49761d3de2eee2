//! Agents: the identity (`Agent`), its immutable versions (`AgentVersion`) and the aliases that
//! route traffic to versions.

mod id;
mod lineage;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use id::AgentId;
pub use lineage::{Lineage, LineageEdge, LineageNode};

/// Name of the alias that exists as soon as an agent has a version.
pub const PROD_ALIAS: &str = "prod";

/// Whether an agent takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Archived,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }

    /// Parses the stored or wire form.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// The identity of an agent. Its behaviour lives in its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Agent {
    pub agent_id: AgentId,
    pub name: String,
    pub domain: String,
    pub description: String,
    pub status: AgentStatus,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds of the last change to the agent or its aliases.
    pub updated_at: i64,
    /// The highest version number.
    pub latest_version: u32,
    /// Named routes to versions, `prod` first.
    pub aliases: Vec<Alias>,
}

impl Agent {
    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.iter().find(|a| a.name == name)
    }
}

/// A named route to one or more versions with weights (a canary is two routes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alias {
    pub name: String,
    /// Versions and their share of traffic in percent; the weights add up to 100.
    pub routes: Vec<AliasRoute>,
    /// True while the alias moves to every new version on its own; false once a deployment
    /// has pinned it.
    pub follows_latest: bool,
    /// Epoch milliseconds when the alias last moved.
    pub since: i64,
}

impl Alias {
    /// An alias that sends all traffic to `version` and follows new versions.
    pub fn following(name: &str, version: u32, since: i64) -> Self {
        Self {
            name: name.to_owned(),
            routes: vec![AliasRoute {
                version,
                weight: 100,
            }],
            follows_latest: true,
            since,
        }
    }
}

/// One version an alias routes to and its share of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AliasRoute {
    pub version: u32,
    /// Percent of traffic, 1..=100.
    pub weight: u32,
}

/// Sampling parameters passed to the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelParameters {
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Upper bound on generated tokens, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// Something an agent can do. A capability with `delegate_to` becomes a tool that hands the work
/// to another agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// Unique within a version; letters, digits, `_` and `-` (it can become a tool name).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema (an object) of the capability's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    /// How well the agent performs it, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effectiveness: Option<f64>,
    /// The agent this capability hands work to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_to: Option<AgentId>,
}

/// A pointer to one version of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct VersionRef {
    pub agent_id: AgentId,
    pub version: u32,
}

/// One immutable version of an agent's behaviour. Updating an agent creates a new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentVersion {
    pub agent_id: AgentId,
    /// 1, 2, 3, ...
    pub version: u32,
    /// The system prompt.
    pub instructions: String,
    pub model: String,
    pub parameters: ModelParameters,
    pub capabilities: Vec<Capability>,
    pub knowledge_sources: Vec<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Who made it: a user, or an evolution.
    pub created_by: String,
    /// The versions this one was derived from.
    pub parents: Vec<VersionRef>,
    /// Evolution generation; 0 for versions written by people.
    pub generation: u32,
    pub change_summary: String,
    /// For a version an evolution made: which run, by which operator, and how much better it
    /// scored than its parent (the properties of its `EVOLVED_FROM` links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<VersionOrigin>,
}

/// How an evolved version came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VersionOrigin {
    pub evolution_id: String,
    /// `reflection` or `merge`.
    pub operator: String,
    /// Validation mean over the parent's.
    pub improvement: f64,
}

impl AgentVersion {
    pub fn reference(&self) -> VersionRef {
        VersionRef {
            agent_id: self.agent_id.clone(),
            version: self.version,
        }
    }
}
