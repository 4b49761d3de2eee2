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

    /// A Mermaid flowchart: a box per version (number, generation, model, what changed), an
    /// arrow from each parent, labelled with the evolution operator and its improvement for an
    /// evolved version; a parent of another agent is drawn with that agent's id.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for v in &self.versions {
            out.push_str(&format!(
                "  v{}[\"v{} · gen {}<br/>{}<br/>{}\"]\n",
                v.version,
                v.version,
                v.generation,
                label(&v.model, 40),
                label(&v.change_summary, 60),
            ));
        }
        let mut outside: Vec<&VersionRef> = Vec::new();
        for e in &self.edges {
            let parent = if e.parent.agent_id == self.agent_id {
                format!("v{}", e.parent.version)
            } else {
                let at = outside
                    .iter()
                    .position(|r| **r == e.parent)
                    .unwrap_or_else(|| {
                        outside.push(&e.parent);
                        outside.len() - 1
                    });
                format!("x{at}")
            };
            let arrow = match &e.origin {
                Some(o) => format!("-->|\"{} {:+.3}\"|", label(&o.operator, 20), o.improvement),
                None => "-->".to_owned(),
            };
            out.push_str(&format!("  {parent} {arrow} v{}\n", e.child.version));
        }
        for (i, r) in outside.iter().enumerate() {
            out.push_str(&format!(
                "  x{i}[\"{} v{}\"]\n  style x{i} stroke-dasharray: 4 3\n",
                label(r.agent_id.as_str(), 64),
                r.version
            ));
        }
        out
    }
}

/// Text as a Mermaid label: on one line, at most `max` characters, with the characters that
/// would end the label or open markup written as entities.
fn label(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '|' => out.push_str("#124;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u32, parents: Vec<VersionRef>, origin: Option<VersionOrigin>) -> AgentVersion {
        let mut v =
            crate::samples::version(&AgentId::try_from("agt_a".to_owned()).unwrap(), n, "x");
        v.parents = parents;
        v.origin = origin;
        v.generation = n - 1;
        v.change_summary = format!("change {n}");
        v
    }

    #[test]
    fn the_lineage_draws_as_a_mermaid_flowchart() {
        let a = AgentId::try_from("agt_a".to_owned()).unwrap();
        let other = VersionRef {
            agent_id: AgentId::try_from("agt_template".to_owned()).unwrap(),
            version: 4,
        };
        let v1 = version(1, vec![other.clone()], None);
        let v2 = version(2, vec![v1.reference()], None);
        let mut v3 = version(
            3,
            vec![v2.reference()],
            Some(VersionOrigin {
                evolution_id: "evo_1".into(),
                operator: "reflection".into(),
                improvement: 0.125,
            }),
        );
        v3.change_summary = "say \"hi\" <b>loud</b>\nnow".into();
        let m = Lineage::from_versions(a, &[v1, v2, v3]).mermaid();
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        assert!(m.contains("  v1 --> v2\n"), "{m}");
        assert!(m.contains("  v2 -->|\"reflection +0.125\"| v3\n"), "{m}");
        assert!(m.contains("  x0 --> v1\n"), "{m}");
        assert!(m.contains("  x0[\"agt_template v4\"]"), "{m}");
        assert!(
            m.contains("say #quot;hi#quot; #lt;b#gt;loud#lt;/b#gt; now"),
            "labels cannot break out: {m}"
        );
        assert_eq!(m.matches("[\"v").count(), 3, "{m}");
    }
}
