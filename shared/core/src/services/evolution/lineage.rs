//! The lineage of a run: which candidate came from which, how each was made and scored, and
//! which became a version; as JSON and as a Mermaid flowchart a client can draw.

use schemars::JsonSchema;
use serde::Serialize;

use crate::evolution::{Candidate, CandidateId, Evolution, EvolutionId, Operator};

/// One candidate in [`EvolutionLineage`].
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LineageNode {
    pub candidate_id: CandidateId,
    pub iteration: u32,
    pub operator: Operator,
    pub accepted: bool,
    pub val_mean: Option<f64>,
    /// The agent version it is (the seed) or became (the winner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub best: bool,
}

/// A parent-to-child link in [`EvolutionLineage`].
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LineageLink {
    pub parent: CandidateId,
    pub child: CandidateId,
}

/// The candidates of a run and how they descend from each other.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct EvolutionLineage {
    pub evolution_id: EvolutionId,
    pub agent_id: crate::agent::AgentId,
    pub seed_version: u32,
    pub nodes: Vec<LineageNode>,
    pub links: Vec<LineageLink>,
}

impl EvolutionLineage {
    pub fn of(run: &Evolution, candidates: &[Candidate]) -> Self {
        let winner = run.winner.as_ref();
        let nodes = candidates
            .iter()
            .map(|c| LineageNode {
                candidate_id: c.candidate_id.clone(),
                iteration: c.iteration,
                operator: c.operator,
                accepted: c.accepted,
                val_mean: c.val_mean,
                version: if c.operator == Operator::Seed {
                    Some(run.seed_version)
                } else {
                    winner
                        .filter(|w| w.candidate_id == c.candidate_id)
                        .map(|w| w.version)
                },
                best: run.best.as_ref() == Some(&c.candidate_id),
            })
            .collect();
        let links = candidates
            .iter()
            .flat_map(|c| {
                c.parents.iter().map(|p| LineageLink {
                    parent: p.clone(),
                    child: c.candidate_id.clone(),
                })
            })
            .collect();
        Self {
            evolution_id: run.evolution_id.clone(),
            agent_id: run.agent_id.clone(),
            seed_version: run.seed_version,
            nodes,
            links,
        }
    }

    /// A Mermaid flowchart: accepted candidates as boxes with their validation mean, refused
    /// ones dashed, the best one highlighted.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let short: std::collections::HashMap<&CandidateId, String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (&n.candidate_id, format!("c{i}")))
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            let mut label = match n.operator {
                Operator::Seed => "seed".to_owned(),
                op => format!("{} #{}", op.as_str(), n.iteration),
            };
            if let Some(v) = n.version {
                label.push_str(&format!(" · v{v}"));
            }
            if let Some(m) = n.val_mean {
                label.push_str(&format!("<br/>val {m:.3}"));
            } else if !n.accepted {
                label.push_str("<br/>rejected");
            }
            out.push_str(&format!("  c{i}[\"{label}\"]\n"));
        }
        for l in &self.links {
            if let (Some(p), Some(c)) = (short.get(&l.parent), short.get(&l.child)) {
                let accepted = self
                    .nodes
                    .iter()
                    .any(|n| n.candidate_id == l.child && n.accepted);
                out.push_str(&format!(
                    "  {p} {} {c}\n",
                    if accepted { "-->" } else { "-.->" }
                ));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.best {
                out.push_str(&format!("  style c{i} stroke-width:3px\n"));
            } else if !n.accepted {
                out.push_str(&format!("  style c{i} stroke-dasharray: 4 3\n"));
            }
        }
        out
    }
}
