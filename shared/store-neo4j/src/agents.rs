//! Agents, their immutable versions, capabilities, lineage and aliases as nodes and
//! relationships:
//! `(:Agent)-[:HAS_VERSION]->(:AgentVersion)-[:HAS_CAPABILITY]->(:Capability)`,
//! `(:AgentVersion)-[:EVOLVED_FROM]->(:AgentVersion)`, `(:Agent)-[:ALIAS]->(:AgentVersion)`.

use aop_core::{
    Agent, AgentFilter, AgentId, AgentStatus, AgentStore, AgentVersion, Alias, AliasRoute,
    Capability, DomainEvent, ModelParameters, PageRequest, StatusFilter, StoreError, StoreHealth,
    VersionRef,
};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::corrupt;
use crate::params::{bolt, event_rows, json_text, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

/// Returns an agent with its alias routes, for rows that have `a` bound.
pub(crate) const RETURN_AGENT: &str = "
    OPTIONAL MATCH (a)-[r:ALIAS]->(target:AgentVersion)
    WITH a, r, target ORDER BY r.ord, r.route_ord
    WITH a, collect({name: r.name, version: target.version, weight: r.weight, since: r.since,
                     follows_latest: r.follows_latest}) AS routes
    RETURN a.agent_id AS agent_id, properties(a) AS agent, routes
    ORDER BY agent_id";

/// Returns versions with capabilities and parents, for rows that have `v` bound.
pub(crate) const RETURN_VERSION: &str = "
    OPTIONAL MATCH (v)-[hc:HAS_CAPABILITY]->(c:Capability)
    WITH v, hc, c ORDER BY hc.ord
    WITH v, collect(properties(c)) AS capabilities
    OPTIONAL MATCH (v)-[e:EVOLVED_FROM]->(p:AgentVersion)
    WITH v, capabilities, e, p ORDER BY e.ord
    WITH v, capabilities, collect({agent_id: p.agent_id, version: p.version}) AS parents
    RETURN v.version AS number, properties(v) AS version, capabilities, parents
    ORDER BY number";

#[derive(Deserialize)]
struct RawAgent {
    agent_id: String,
    name: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    description: String,
    status: String,
    created_at: i64,
    updated_at: i64,
    latest_version: u32,
}

#[derive(Deserialize)]
struct RawRoute {
    name: Option<String>,
    version: Option<u32>,
    weight: Option<u32>,
    since: Option<i64>,
    follows_latest: Option<bool>,
}

fn agent_id(text: String) -> Result<AgentId, StoreError> {
    AgentId::try_from(text).map_err(|reason| corrupt("agent id", reason))
}

pub(crate) fn decode_agent(row: &Row) -> Result<Agent, StoreError> {
    let raw: RawAgent = column(row, "agent", "agent")?;
    let routes: Vec<RawRoute> = column(row, "routes", "agent aliases")?;
    let mut aliases: Vec<Alias> = Vec::new();
    // Each ALIAS relationship is one route; consecutive routes of one name form an alias.
    for r in routes {
        let (Some(name), Some(version)) = (r.name, r.version) else {
            continue;
        };
        let route = AliasRoute {
            version,
            weight: r.weight.unwrap_or(100),
        };
        match aliases.last_mut() {
            Some(last) if last.name == name => last.routes.push(route),
            _ => aliases.push(Alias {
                name,
                routes: vec![route],
                follows_latest: r.follows_latest.unwrap_or(false),
                since: r.since.unwrap_or(raw.updated_at),
            }),
        }
    }
    Ok(Agent {
        agent_id: agent_id(raw.agent_id)?,
        name: raw.name,
        domain: raw.domain,
        description: raw.description,
        status: AgentStatus::parse(&raw.status)
            .ok_or_else(|| corrupt("agent status", &raw.status))?,
        created_at: raw.created_at,
        updated_at: raw.updated_at,
        latest_version: raw.latest_version,
        aliases,
    })
}

#[derive(Deserialize)]
struct RawVersion {
    agent_id: String,
    version: u32,
    instructions: String,
    model: String,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    #[serde(default)]
    knowledge_sources: Vec<String>,
    created_at: i64,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    generation: u32,
    #[serde(default)]
    change_summary: String,
    origin: Option<String>,
}

#[derive(Deserialize)]
struct RawCapability {
    name: String,
    #[serde(default)]
    description: String,
    parameters: Option<String>,
    effectiveness: Option<f64>,
    delegate_to: Option<String>,
}

#[derive(Deserialize)]
struct RawParent {
    agent_id: Option<String>,
    version: Option<u32>,
}

pub(crate) fn decode_version(row: &Row) -> Result<AgentVersion, StoreError> {
    let raw: RawVersion = column(row, "version", "agent version")?;
    let capabilities: Vec<RawCapability> = column(row, "capabilities", "capabilities")?;
    let parents: Vec<RawParent> = column(row, "parents", "version parents")?;
    let capabilities = capabilities
        .into_iter()
        .map(|c| {
            Ok(Capability {
                name: c.name,
                description: c.description,
                parameters: c
                    .parameters
                    .map(|p| {
                        serde_json::from_str(&p).map_err(|e| corrupt("capability parameters", e))
                    })
                    .transpose()?,
                effectiveness: c.effectiveness,
                delegate_to: c.delegate_to.map(agent_id).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let parents = parents
        .into_iter()
        .filter_map(|p| Some((p.agent_id?, p.version?)))
        .map(|(id, version)| {
            Ok(VersionRef {
                agent_id: agent_id(id)?,
                version,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(AgentVersion {
        agent_id: agent_id(raw.agent_id)?,
        version: raw.version,
        instructions: raw.instructions,
        model: raw.model,
        parameters: ModelParameters {
            temperature: raw.temperature,
            top_p: raw.top_p,
            max_tokens: raw.max_tokens,
        },
        capabilities,
        knowledge_sources: raw.knowledge_sources,
        created_at: raw.created_at,
        created_by: raw.created_by,
        parents,
        generation: raw.generation,
        change_summary: raw.change_summary,
        origin: raw
            .origin
            .map(|o| serde_json::from_str(&o).map_err(|e| corrupt("version origin", e)))
            .transpose()?,
    })
}

/// The writes of one use case, prepared before the transaction so each retry reuses them.
#[derive(Clone)]
struct AgentWrite {
    agent: BoltType,
    version: Option<VersionWrite>,
    routes: BoltType,
    events: BoltType,
}

#[derive(Clone)]
pub(crate) struct VersionWrite {
    props: BoltType,
    key: String,
    capabilities: BoltType,
    parents: BoltType,
    parent_count: usize,
    generation: i64,
    /// The `EVOLVED_FROM` properties of an evolved version.
    origin: BoltType,
}

pub(crate) fn agent_props(a: &Agent) -> Result<BoltType, StoreError> {
    bolt(json!({
        "agent_id": a.agent_id.as_str(),
        "name": a.name,
        "domain": a.domain,
        "description": a.description,
        "status": a.status.as_str(),
        "created_at": a.created_at,
        "updated_at": a.updated_at,
        "latest_version": a.latest_version,
    }))
}

pub(crate) fn route_rows(a: &Agent) -> Result<BoltType, StoreError> {
    let mut rows = Vec::new();
    for (ord, alias) in a.aliases.iter().enumerate() {
        for (route_ord, route) in alias.routes.iter().enumerate() {
            rows.push(json!({
                "key": version_key(a.agent_id.as_str(), route.version),
                "name": alias.name,
                "weight": route.weight,
                "since": alias.since,
                "follows_latest": alias.follows_latest,
                "ord": ord,
                "route_ord": route_ord,
            }));
        }
    }
    bolt(Value::Array(rows))
}

pub(crate) fn version_write(v: &AgentVersion) -> Result<VersionWrite, StoreError> {
    let key = version_key(v.agent_id.as_str(), v.version);
    let capabilities = v
        .capabilities
        .iter()
        .enumerate()
        .map(|(ord, c)| {
            Ok(json!({
                "key": format!("{key}:{}", c.name),
                "ord": ord,
                "name": c.name,
                "description": c.description,
                "parameters": c.parameters.as_ref().map(json_text).transpose()?,
                "effectiveness": c.effectiveness,
                "delegate_to": c.delegate_to.as_ref().map(AgentId::as_str),
            }))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let parents = v
        .parents
        .iter()
        .enumerate()
        .map(|(ord, p)| json!({"key": version_key(p.agent_id.as_str(), p.version), "ord": ord}))
        .collect::<Vec<_>>();
    Ok(VersionWrite {
        props: bolt(json!({
            "key": key,
            "agent_id": v.agent_id.as_str(),
            "version": v.version,
            "instructions": v.instructions,
            "model": v.model,
            "temperature": v.parameters.temperature,
            "top_p": v.parameters.top_p,
            "max_tokens": v.parameters.max_tokens,
            "knowledge_sources": v.knowledge_sources,
            "created_at": v.created_at,
            "created_by": v.created_by,
            "generation": v.generation,
            "change_summary": v.change_summary,
            "origin": v.origin.as_ref().map(json_text).transpose()?,
        }))?,
        origin: bolt(match &v.origin {
            Some(o) => json!({"evolution_id": o.evolution_id, "operator": o.operator,
                "improvement": o.improvement}),
            None => json!({}),
        })?,
        key,
        capabilities: bolt(Value::Array(capabilities))?,
        parent_count: parents.len(),
        parents: bolt(Value::Array(parents))?,
        generation: i64::from(v.generation),
    })
}

pub(crate) async fn write_version(
    txn: &mut Txn,
    agent_id: &str,
    v: &VersionWrite,
) -> Result<(), Failure> {
    run(
        txn,
        query(
            "MATCH (a:Agent {agent_id: $agent_id})
             CREATE (a)-[:HAS_VERSION]->(v:AgentVersion {key: $key})
             SET v += $props
             WITH v
             UNWIND $capabilities AS c
             CREATE (v)-[:HAS_CAPABILITY {ord: c.ord}]->(:Capability {key: c.key, name: c.name,
                 description: c.description, parameters: c.parameters,
                 effectiveness: c.effectiveness, delegate_to: c.delegate_to})",
        )
        .param("agent_id", agent_id)
        .param("key", v.key.as_str())
        .param("props", v.props.clone())
        .param("capabilities", v.capabilities.clone()),
    )
    .await?;
    if v.parent_count > 0 {
        let linked = rows(
            txn,
            query(
                "MATCH (child:AgentVersion {key: $key})
                 UNWIND $parents AS p
                 MATCH (parent:AgentVersion {key: p.key})
                 CREATE (child)-[e:EVOLVED_FROM {ord: p.ord, generation: $generation}]->(parent)
                 SET e += $origin
                 RETURN count(*) AS n",
            )
            .param("key", v.key.as_str())
            .param("parents", v.parents.clone())
            .param("generation", v.generation)
            .param("origin", v.origin.clone()),
        )
        .await?;
        let n: i64 = linked
            .first()
            .map_or(Ok(0), |r| column(r, "n", "parent count"))?;
        if usize::try_from(n).ok() != Some(v.parent_count) {
            // Parents come from versions the caller just read, so a missing one is most often
            // a concurrent writer's version this transaction's snapshot does not see yet (an
            // MVCC server reports that race here rather than at commit): a conflict.
            return Err(StoreError::Conflict(format!(
                "a parent of version {} is not in the store (a concurrent change, or a parent \
                 that does not exist)",
                v.key
            ))
            .into());
        }
    }
    Ok(())
}

/// Locks an agent for the rest of the transaction (a write to its node takes its lock, so
/// what follows sees the latest committed state) and reads it with its aliases.
pub(crate) async fn locked_agent(txn: &mut Txn, agent_id: &str) -> Result<Option<Agent>, Failure> {
    let found = rows(
        txn,
        query(&format!(
            "MATCH (a:Agent {{agent_id: $agent_id}})
             SET a.latest_version = a.latest_version
             WITH a{RETURN_AGENT}"
        ))
        .param("agent_id", agent_id),
    )
    .await?;
    found
        .first()
        .map(decode_agent)
        .transpose()
        .map_err(Failure::from)
}

/// Replaces an agent's alias routes by those of `agent`.
pub(crate) async fn rewrite_routes(txn: &mut Txn, agent: &Agent) -> Result<(), Failure> {
    let routes = route_rows(agent)?;
    write_routes(txn, agent.agent_id.as_str(), &routes).await
}

pub(crate) async fn write_routes(
    txn: &mut Txn,
    agent_id: &str,
    routes: &BoltType,
) -> Result<(), Failure> {
    run(
        txn,
        query("MATCH (a:Agent {agent_id: $agent_id})-[r:ALIAS]->(:AgentVersion) DELETE r")
            .param("agent_id", agent_id),
    )
    .await?;
    run(
        txn,
        query(
            "MATCH (a:Agent {agent_id: $agent_id})
             UNWIND $routes AS r
             MATCH (v:AgentVersion {key: r.key})
             CREATE (a)-[:ALIAS {name: r.name, weight: r.weight, since: r.since,
                 follows_latest: r.follows_latest, ord: r.ord, route_ord: r.route_ord}]->(v)",
        )
        .param("agent_id", agent_id)
        .param("routes", routes.clone()),
    )
    .await
}

#[async_trait]
impl AgentStore for Neo4jStore {
    async fn insert_agent(
        &self,
        agent: &Agent,
        first: &AgentVersion,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let id = agent.agent_id.to_string();
        let write = AgentWrite {
            agent: agent_props(agent)?,
            version: Some(version_write(first)?),
            routes: route_rows(agent)?,
            events: event_rows(events)?,
        };
        let marker = crate::first_id(events);
        self.transact_writing("insert_agent", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (id, write) = (id.clone(), write.clone());
            Box::pin(async move {
                run(
                    txn,
                    query("CREATE (a:Agent {agent_id: $agent_id}) SET a += $props")
                        .param("agent_id", id.as_str())
                        .param("props", write.agent),
                )
                .await?;
                if let Some(v) = &write.version {
                    write_version(txn, &id, v).await?;
                }
                write_routes(txn, &id, &write.routes).await?;
                outbox::write_events(txn, write.events).await
            })
        })
        .await
    }

    async fn insert_version(
        &self,
        agent: &Agent,
        version: &AgentVersion,
        previous_aliases: &[Alias],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let previous_aliases = previous_aliases.to_vec();
        let id = agent.agent_id.to_string();
        let number = version.version;
        let write = AgentWrite {
            agent: bolt(json!({
                "name": agent.name,
                "domain": agent.domain,
                "description": agent.description,
                "updated_at": agent.updated_at,
                "latest_version": agent.latest_version,
            }))?,
            version: Some(version_write(version)?),
            routes: route_rows(agent)?,
            events: event_rows(events)?,
        };
        let marker = crate::first_id(events);
        self.transact_writing("insert_version", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (id, write, previous_aliases) =
                (id.clone(), write.clone(), previous_aliases.clone());
            Box::pin(async move {
                // The lock makes the checks below see the latest committed state; the unique
                // version key guards servers that lock later.
                let Some(current) = locked_agent(txn, &id).await? else {
                    return Err(StoreError::Permanent {
                        message: format!("agent '{id}' does not exist"),
                        source: None,
                    }
                    .into());
                };
                let latest = current.latest_version;
                if current.status != AgentStatus::Active {
                    return Err(StoreError::Conflict(format!(
                        "agent '{id}' was archived meanwhile"
                    ))
                    .into());
                }
                if current.aliases != previous_aliases {
                    return Err(StoreError::Conflict(format!(
                        "an alias of agent '{id}' moved meanwhile"
                    ))
                    .into());
                }
                if latest + 1 != number {
                    return Err(StoreError::Conflict(format!(
                        "agent '{id}' is at version {latest}, cannot add version {number}"
                    ))
                    .into());
                }
                if let Some(v) = &write.version {
                    write_version(txn, &id, v).await?;
                }
                run(
                    txn,
                    query("MATCH (a:Agent {agent_id: $agent_id}) SET a += $props")
                        .param("agent_id", id.as_str())
                        .param("props", write.agent),
                )
                .await?;
                write_routes(txn, &id, &write.routes).await?;
                outbox::write_events(txn, write.events).await
            })
        })
        .await
    }

    async fn set_status(
        &self,
        agent_id: &AgentId,
        status: AgentStatus,
        updated_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let id = agent_id.to_string();
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("set_status", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (id, events) = (id.clone(), events.clone());
            Box::pin(async move {
                let found = rows(
                    txn,
                    query(
                        "MATCH (a:Agent {agent_id: $agent_id})
                         SET a.status = $status, a.updated_at = $updated_at
                         RETURN count(a) AS n",
                    )
                    .param("agent_id", id.as_str())
                    .param("status", status.as_str())
                    .param("updated_at", updated_at),
                )
                .await?;
                let n: i64 = found.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
                if n == 0 {
                    return Err(StoreError::Permanent {
                        message: format!("agent '{id}' does not exist"),
                        source: None,
                    }
                    .into());
                }
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn get_agent(&self, agent_id: &AgentId) -> Result<Option<Agent>, StoreError> {
        let id = agent_id.to_string();
        let text = format!("MATCH (a:Agent {{agent_id: $agent_id}}) {RETURN_AGENT}");
        let found = self
            .transact("get_agent", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text).param("agent_id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(decode_agent).transpose()
    }

    async fn get_version(
        &self,
        agent_id: &AgentId,
        version: u32,
    ) -> Result<Option<AgentVersion>, StoreError> {
        let key = version_key(agent_id.as_str(), version);
        let text = format!("MATCH (v:AgentVersion {{key: $key}}) {RETURN_VERSION}");
        let found = self
            .transact("get_version", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text).param("key", key.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(decode_version).transpose()
    }

    async fn list_agents(
        &self,
        filter: &AgentFilter,
        page: &PageRequest,
    ) -> Result<Vec<Agent>, StoreError> {
        let mut clauses: Vec<&str> = Vec::new();
        let mut params: Vec<(&str, BoltType)> = Vec::new();
        let mut head = "MATCH (a:Agent)";
        if let Some(cap) = &filter.capability {
            head = "MATCH (a:Agent)-[:HAS_VERSION]->(latest:AgentVersion)
                    -[:HAS_CAPABILITY]->(:Capability {name: $capability})";
            clauses.push("latest.version = a.latest_version");
            params.push(("capability", cap.as_str().into()));
        }
        match filter.status {
            StatusFilter::Active => clauses.push("a.status = 'active'"),
            StatusFilter::Archived => clauses.push("a.status = 'archived'"),
            StatusFilter::Any => {}
        }
        if let Some(domain) = &filter.domain {
            clauses.push("a.domain = $domain");
            params.push(("domain", domain.as_str().into()));
        }
        if let Some(text) = &filter.text {
            clauses
                .push("(toLower(a.name) CONTAINS $text OR toLower(a.description) CONTAINS $text)");
            params.push(("text", text.to_lowercase().into()));
        }
        if let Some(after) = &page.after {
            clauses.push("a.agent_id > $after");
            params.push(("after", after.key().into()));
        }
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let text = format!(
            "{head} {where_sql}
             WITH DISTINCT a ORDER BY a.agent_id LIMIT $limit
             {RETURN_AGENT}"
        );
        let limit = i64::from(page.limit) + 1;
        let found = self
            .transact("list_agents", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text)
                    .params(params.iter().map(|(k, v)| (*k, v.clone())))
                    .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode_agent).collect()
    }

    async fn list_versions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<AgentVersion>, StoreError> {
        let id = agent_id.to_string();
        let after = i64::from(page.after_number());
        let limit = i64::from(page.limit) + 1;
        let text = format!(
            "MATCH (v:AgentVersion) WHERE v.agent_id = $agent_id AND v.version > $after
             WITH v ORDER BY v.version LIMIT $limit
             {RETURN_VERSION}"
        );
        let found = self
            .transact("list_versions", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text)
                    .param("agent_id", id.as_str())
                    .param("after", after)
                    .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode_version).collect()
    }

    async fn health(&self) -> StoreHealth {
        match crate::migrations::applied_version(self).await {
            Ok(version) => StoreHealth {
                kind: "neo4j",
                up: true,
                detail: format!("{} (schema version {version})", self.target()),
            },
            Err(e) => StoreHealth {
                kind: "neo4j",
                up: false,
                detail: e.to_string(),
            },
        }
    }
}
