//! The lineage of an agent: its versions and the links to the versions they came from.

use schemars::JsonSchema;
use serde::Serialize;

use super::{AgentId, AgentVersion, VersionOrigin, VersionRef};

/// One version in a lineage graph.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LineageNode {
    pub version: u32,
    pub created_at: i64,
    pub created_by: String,
    pub generation: u32,
    pub model: String,
    pub change_summary: String,
}

/// `child` was derived from `parent` (an `EVOLVED_FROM` edge in the graph).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LineageEdge {
    pub child: VersionRef,
    pub parent: VersionRef,
    /// For an evolved child: the run, the operator and the improvement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<VersionOrigin>,
}

/// Every version of an agent and how they derive from each other.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Lineage {
    pub agent_id: AgentId,
    pub versions: Vec<LineageNode>,
    pub edges: Vec<LineageEdge>,
}

impl Lineage {
    /// Builds the lineage from versions in ascending order.
    pub fn from_versions(agent_id: AgentId, versions: &[AgentVersion]) -> Self {
        let nodes = versions
            .iter()
            .map(|v| LineageNode {
                version: v.version,
                created_at: v.created_at,
                created_by: v.created_by.clone(),
                generation: v.generation,
                model: v.model.clone(),
                change_summary: v.change_summary.clone(),
            })
            .collect();
        let edges = versions
            .iter()
            .flat_map(|v| {
                v.parents.iter().map(move |p| LineageEdge {
                    child: v.reference(),
                    parent: p.clone(),
                    origin: v.origin.clone(),
                })
            })
            .collect();
        Self {
            agent_id,
            versions: nodes,
            edges,
        }
    }
}
