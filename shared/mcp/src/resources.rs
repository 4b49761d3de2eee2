//! The resources: an agent, one of its versions, its lineage and its deployments
//! (`agent://`), canaries (`canary://`) and evolution runs with their lineage and performance
//! history (`evolution://`), as JSON; lineages also as Mermaid text; an evolution's scores and a
//! canary's arms over time as SVG charts (`.../chart`).

use aop_core::deployment::CanaryId;
use aop_core::evolution::EvolutionId;
use aop_core::{
    AgentId, AgentService, DeploymentService, EvolutionService, ListAgents, ServiceError,
};
use rmcp::ErrorData;
use rmcp::model::{
    ListResourcesResult, ReadResourceResponse, ReadResourceResult, Resource, ResourceContents,
    ResourceTemplate,
};

use crate::errors::protocol_error;

const JSON: &str = "application/json";
const MERMAID: &str = "text/vnd.mermaid";

/// What an `agent://` URI names.
#[derive(Debug, PartialEq, Eq)]
enum AgentResource {
    Agent(AgentId),
    Version(AgentId, u32),
    Lineage(AgentId),
    Deployments(AgentId),
    Canary(CanaryId),
    CanaryChart(CanaryId),
    Evolution(EvolutionId),
    EvolutionChart(EvolutionId),
    EvolutionLineage(EvolutionId),
    EvolutionHistory(EvolutionId),
}

fn parse(uri: &str) -> Result<AgentResource, String> {
    if let Some(rest) = uri.strip_prefix("canary://") {
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let id =
            CanaryId::parse("canary_id", id).map_err(|e| format!("bad resource {uri}: {e}"))?;
        return match tail {
            "" => Ok(AgentResource::Canary(id)),
            "chart" => Ok(AgentResource::CanaryChart(id)),
            _ => Err(format!(
                "unknown resource {uri}: expected canary://{{canary_id}} or \
                 canary://{{canary_id}}/chart"
            )),
        };
    }
    if let Some(rest) = uri.strip_prefix("evolution://") {
        let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let id = EvolutionId::parse("evolution_id", id)
            .map_err(|e| format!("bad resource {uri}: {e}"))?;
        return match tail {
            "" => Ok(AgentResource::Evolution(id)),
            "lineage" => Ok(AgentResource::EvolutionLineage(id)),
            "performance_history" => Ok(AgentResource::EvolutionHistory(id)),
            "chart" => Ok(AgentResource::EvolutionChart(id)),
            _ => Err(format!(
                "unknown resource {uri}: expected evolution://{{evolution_id}}, \
                 evolution://{{evolution_id}}/lineage, \
                 evolution://{{evolution_id}}/performance_history or \
                 evolution://{{evolution_id}}/chart"
            )),
        };
    }
    let rest = uri.strip_prefix("agent://").ok_or_else(|| {
        format!("unknown resource {uri}: only agent://, canary:// and evolution:// URIs are served")
    })?;
    let mut parts = rest.split('/');
    let id = parts.next().unwrap_or_default();
    let id = AgentId::parse("agent_id", id).map_err(|e| format!("bad resource {uri}: {e}"))?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, ..) => Ok(AgentResource::Agent(id)),
        (Some("lineage"), None, _) => Ok(AgentResource::Lineage(id)),
        (Some("deployments"), None, _) => Ok(AgentResource::Deployments(id)),
        (Some("versions"), Some(v), None) => v
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .map(|v| AgentResource::Version(id, v))
            .ok_or_else(|| format!("bad resource {uri}: version must be a positive integer")),
        _ => Err(format!(
            "unknown resource {uri}: expected agent://{{agent_id}}, \
             agent://{{agent_id}}/versions/{{version}}, agent://{{agent_id}}/lineage or \
             agent://{{agent_id}}/deployments"
        )),
    }
}

pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new("agent://{agent_id}", "agent")
            .with_title("Agent")
            .with_description("An agent with its latest version")
            .with_mime_type(JSON),
        ResourceTemplate::new("agent://{agent_id}/versions/{version}", "agent_version")
            .with_title("Agent version")
            .with_description("One immutable version of an agent")
            .with_mime_type(JSON),
        ResourceTemplate::new("agent://{agent_id}/lineage", "agent_lineage")
            .with_title("Agent lineage")
            .with_description(
                "Every version of an agent and the versions it derives from: JSON, and a Mermaid flowchart (text/vnd.mermaid)",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new("agent://{agent_id}/deployments", "agent_deployments")
            .with_title("Agent deployments")
            .with_description(
                "Every move of an agent's aliases: versions, who, why, and the analysis behind it",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new("canary://{canary_id}", "canary")
            .with_title("Canary")
            .with_description("A canary's split, per-arm statistics, and its last decision and why")
            .with_mime_type(JSON),
        ResourceTemplate::new("evolution://{evolution_id}", "evolution")
            .with_title("Evolution run")
            .with_description("An evolution run: status, budget spent, scores, winner")
            .with_mime_type(JSON),
        ResourceTemplate::new("evolution://{evolution_id}/lineage", "evolution_lineage")
            .with_title("Evolution lineage")
            .with_description(
                "Which candidate came from which, how and with what score: JSON, and a Mermaid flowchart (text/vnd.mermaid)",
            )
            .with_mime_type(JSON),
        ResourceTemplate::new(
            "evolution://{evolution_id}/performance_history",
            "evolution_performance_history",
        )
        .with_title("Evolution performance history")
        .with_description("Best and mean validation score per iteration, and the budget spent")
        .with_mime_type(JSON),
        ResourceTemplate::new("evolution://{evolution_id}/chart", "evolution_chart")
            .with_title("Evolution chart")
            .with_description("The best and mean validation score per iteration, as an SVG chart")
            .with_mime_type(crate::charts::SVG),
        ResourceTemplate::new("canary://{canary_id}/chart", "canary_chart")
            .with_title("Canary chart")
            .with_description(
                "Each arm's mean score at every check and the candidate's share over time, as an SVG chart",
            )
            .with_mime_type(crate::charts::SVG),
    ]
}

/// Active agents as resources, one page at a time.
pub async fn list(
    agents: &AgentService,
    cursor: Option<String>,
) -> Result<ListResourcesResult, ErrorData> {
    let page = agents
        .list(ListAgents {
            cursor,
            ..ListAgents::default()
        })
        .await
        .map_err(|e| match e {
            ServiceError::Invalid(_) => ErrorData::invalid_params(e.to_string(), None),
            other => protocol_error(&other, "agent://"),
        })?;
    let items = page
        .items
        .iter()
        .map(|a| {
            Resource::new(format!("agent://{}", a.agent_id), a.name.clone())
                .with_description(a.description.clone())
                .with_mime_type(JSON)
        })
        .collect();
    let mut result = ListResourcesResult::with_all_items(items);
    result.next_cursor = page.next_cursor;
    Ok(result)
}

pub async fn read(
    agents: &AgentService,
    deployments: &DeploymentService,
    evolutions: &EvolutionService,
    uri: &str,
) -> Result<ReadResourceResponse, ErrorData> {
    let resource = parse(uri).map_err(|m| ErrorData::resource_not_found(m, None))?;
    // Resources with more than one form, or not JSON.
    let contents = match &resource {
        AgentResource::EvolutionChart(id) => {
            let history = evolutions
                .history(id)
                .await
                .map_err(|e| protocol_error(&e, uri))?;
            Some(svg(crate::charts::evolution(&history), uri)?)
        }
        AgentResource::CanaryChart(id) => {
            let canary = deployments
                .canary(id)
                .await
                .map_err(|e| protocol_error(&e, uri))?;
            let moves = all_deployments(deployments, &canary.agent_id)
                .await
                .map_err(|e| protocol_error(&e, uri))?;
            Some(svg(crate::charts::canary(&canary, &moves), uri)?)
        }
        AgentResource::Lineage(id) => {
            let lineage = agents
                .lineage(id)
                .await
                .map_err(|e| protocol_error(&e, uri))?;
            Some(json_and_mermaid(to_json(&lineage), lineage.mermaid(), uri))
        }
        AgentResource::EvolutionLineage(id) => {
            let lineage = evolutions
                .lineage(id)
                .await
                .map_err(|e| protocol_error(&e, uri))?;
            Some(json_and_mermaid(to_json(&lineage), lineage.mermaid(), uri))
        }
        _ => None,
    };
    if let Some(contents) = contents {
        return Ok(ReadResourceResult::new(contents).into());
    }
    let body = match resource {
        AgentResource::Evolution(id) => evolutions.status(&id).await.map(|v| to_json(&v)),
        AgentResource::EvolutionHistory(id) => evolutions.history(&id).await.map(|h| to_json(&h)),
        AgentResource::EvolutionLineage(_)
        | AgentResource::EvolutionChart(_)
        | AgentResource::CanaryChart(_) => unreachable!("answered above"),
        AgentResource::Deployments(id) => {
            all_deployments(deployments, &id).await.map(|d| to_json(&d))
        }
        AgentResource::Canary(id) => deployments.canary(&id).await.map(|c| to_json(&c)),
        AgentResource::Agent(id) => agents.get(&id, None).await.map(|d| to_json(&d)),
        AgentResource::Version(id, v) => {
            agents.get(&id, Some(v)).await.map(|d| to_json(&d.version))
        }
        AgentResource::Lineage(_) => unreachable!("answered above"),
    }
    .map_err(|e| protocol_error(&e, uri))?;
    Ok(
        ReadResourceResult::new(vec![ResourceContents::text(body, uri).with_mime_type(JSON)])
            .into(),
    )
}

/// A drawn chart as the resource's one content.
fn svg(drawn: Result<String, String>, uri: &str) -> Result<Vec<ResourceContents>, ErrorData> {
    let svg = drawn.map_err(|m| ErrorData::internal_error(m, None))?;
    Ok(vec![
        ResourceContents::text(svg, uri).with_mime_type(crate::charts::SVG),
    ])
}

/// A graph as JSON and as a Mermaid flowchart, in one read.
fn json_and_mermaid(json: String, mermaid: String, uri: &str) -> Vec<ResourceContents> {
    vec![
        ResourceContents::text(json, uri).with_mime_type(JSON),
        ResourceContents::text(mermaid, uri).with_mime_type(MERMAID),
    ]
}

/// Every deployment of an agent, oldest first, page after page.
async fn all_deployments(
    deployments: &DeploymentService,
    agent_id: &AgentId,
) -> Result<Vec<aop_core::deployment::Deployment>, ServiceError> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = deployments
            .list(
                agent_id,
                cursor.as_deref(),
                Some(aop_core::page::MAX_PAGE_SIZE),
            )
            .await?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse("agent_id", s).unwrap()
    }

    #[test]
    fn parses_every_agent_uri_form() {
        assert_eq!(parse("agent://a1"), Ok(AgentResource::Agent(id("a1"))));
        assert_eq!(
            parse("agent://a1/versions/3"),
            Ok(AgentResource::Version(id("a1"), 3))
        );
        assert_eq!(
            parse("agent://a1/lineage"),
            Ok(AgentResource::Lineage(id("a1")))
        );
        assert_eq!(
            parse("agent://a1/deployments"),
            Ok(AgentResource::Deployments(id("a1")))
        );
        assert_eq!(
            parse("canary://can_1"),
            Ok(AgentResource::Canary(
                CanaryId::parse("c", "can_1").unwrap()
            ))
        );
    }

    #[test]
    fn rejects_other_uris_with_the_expected_forms() {
        assert!(
            parse("file:///etc/passwd")
                .unwrap_err()
                .contains("only agent://, canary:// and evolution://")
        );
        assert!(
            parse("agent://a1/versions/0")
                .unwrap_err()
                .contains("positive integer")
        );
        assert!(parse("agent://a1/versions/x").is_err());
        assert!(
            parse("agent://a1/other")
                .unwrap_err()
                .contains("expected agent://")
        );
        assert!(parse("agent://a b").unwrap_err().contains("agent_id"));
        assert!(
            parse("evolution://evo_1/other")
                .unwrap_err()
                .contains("expected evolution://")
        );
    }

    #[test]
    fn parses_every_evolution_uri_form() {
        let id = EvolutionId::parse("e", "evo_1").unwrap();
        assert_eq!(
            parse("evolution://evo_1"),
            Ok(AgentResource::Evolution(id.clone()))
        );
        assert_eq!(
            parse("evolution://evo_1/lineage"),
            Ok(AgentResource::EvolutionLineage(id.clone()))
        );
        assert_eq!(
            parse("evolution://evo_1/performance_history"),
            Ok(AgentResource::EvolutionHistory(id))
        );
    }
}
