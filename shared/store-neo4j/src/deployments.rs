//! Deployments and canaries as nodes: `(:Deployment)-[:OF_AGENT]->(:Agent)`,
//! `(:Deployment)-[:FROM|TO {weight}]->(:AgentVersion)`, `(:Canary)-[:OF_AGENT]->(:Agent)`,
//! `(:Canary)-[:BASELINE|CANDIDATE]->(:AgentVersion)`. Each record is also kept whole as JSON
//! text (`body`) beside the properties it is found by. And the windowed turn statistics a canary
//! is decided on, read from the interactions, sessions and ratings.

use std::collections::BTreeMap;

use aop_core::deployment::{Canary, CanaryId, CanaryStatus, Deployment, TurnSample};
use aop_core::ports::{AliasMove, CanaryWrite};
use aop_core::{AgentId, DeploymentStore, DomainEvent, PageRequest, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde_json::{Value, json};

use crate::agents::{locked_agent, rewrite_routes};
use crate::error::corrupt;
use crate::params::{bolt, event_rows, json_text, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

pub(crate) fn canary_props(c: &Canary) -> Result<BoltType, StoreError> {
    bolt(json!({
        "canary_id": c.canary_id.as_str(),
        "agent_id": c.agent_id.as_str(),
        "alias": c.alias,
        "status": c.status.as_str(),
        "started_at": c.started_at,
        "revision": i64::try_from(c.revision).unwrap_or(i64::MAX),
        "body": json_text(c)?,
        "baseline_key": version_key(c.agent_id.as_str(), c.baseline),
        "candidate_key": version_key(c.agent_id.as_str(), c.candidate),
    }))
}

/// Creates or updates a canary node, compare-and-set on its revision.
pub(crate) async fn write_canary(
    txn: &mut Txn,
    props: BoltType,
    id: &str,
    expected: Option<u64>,
) -> Result<(), Failure> {
    let written = match expected {
        None => {
            rows(
                txn,
                query(
                    "MATCH (a:Agent {agent_id: $props.agent_id})
                 CREATE (c:Canary {canary_id: $id})-[:OF_AGENT]->(a)
                 SET c.agent_id = $props.agent_id, c.alias = $props.alias,
                     c.status = $props.status, c.started_at = $props.started_at,
                     c.revision = $props.revision, c.body = $props.body
                 WITH c
                 MATCH (b:AgentVersion {key: $props.baseline_key})
                 MATCH (v:AgentVersion {key: $props.candidate_key})
                 CREATE (c)-[:BASELINE]->(b), (c)-[:CANDIDATE]->(v)
                 RETURN count(c) AS n",
                )
                .param("id", id)
                .param("props", props),
            )
            .await?
        }
        Some(expected) => {
            rows(
                txn,
                query(
                    "MATCH (c:Canary {canary_id: $id}) WHERE c.revision = $expected
                 SET c.status = $props.status, c.revision = $props.revision, c.body = $props.body
                 RETURN count(c) AS n",
                )
                .param("id", id)
                .param("expected", i64::try_from(expected).unwrap_or(i64::MAX))
                .param("props", props),
            )
            .await?
        }
    };
    let n: i64 = written.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("canary '{id}' changed meanwhile")).into());
    }
    Ok(())
}

pub(crate) fn decode_body<T: serde::de::DeserializeOwned>(
    row: &Row,
    what: &str,
) -> Result<T, StoreError> {
    let body: String = column(row, "body", what)?;
    serde_json::from_str(&body).map_err(|e| corrupt(what, e))
}

#[derive(Clone)]
pub(crate) struct DeploymentWrite {
    props: BoltType,
    from: BoltType,
    to: BoltType,
}

pub(crate) fn deployment_write(d: &Deployment) -> Result<DeploymentWrite, StoreError> {
    let routes = |routes: &[aop_core::AliasRoute]| {
        bolt(Value::Array(
            routes
                .iter()
                .map(|r| json!({"key": version_key(d.agent_id.as_str(), r.version), "weight": r.weight}))
                .collect(),
        ))
    };
    Ok(DeploymentWrite {
        props: bolt(json!({
            "deployment_id": d.deployment_id.as_str(),
            "agent_id": d.agent_id.as_str(),
            "alias": d.alias,
            "kind": d.kind.as_str(),
            "canary_id": d.canary_id.as_ref().map(CanaryId::as_str),
            "created_at": d.created_at,
            "body": json_text(d)?,
        }))?,
        from: routes(&d.from)?,
        to: routes(&d.to)?,
    })
}

/// Creates a deployment node linked to its agent and the versions it moved from and to.
pub(crate) async fn write_deployment(
    txn: &mut Txn,
    d: &DeploymentWrite,
    id: &str,
) -> Result<(), Failure> {
    run(
        txn,
        query(
            "MATCH (a:Agent {agent_id: $props.agent_id})
             CREATE (d:Deployment {deployment_id: $props.deployment_id})-[:OF_AGENT]->(a)
             SET d += $props
             WITH d
             UNWIND $from AS r
             MATCH (v:AgentVersion {key: r.key})
             CREATE (d)-[:FROM {weight: r.weight}]->(v)",
        )
        .param("props", d.props.clone())
        .param("from", d.from.clone()),
    )
    .await?;
    run(
        txn,
        query(
            "MATCH (d:Deployment {deployment_id: $id})
             UNWIND $to AS r
             MATCH (v:AgentVersion {key: r.key})
             CREATE (d)-[:TO {weight: r.weight}]->(v)",
        )
        .param("id", id)
        .param("to", d.to.clone()),
    )
    .await
}

#[async_trait]
impl DeploymentStore for Neo4jStore {
    async fn move_alias(
        &self,
        change: &AliasMove,
        canary: Option<CanaryWrite<'_>>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let change = change.clone();
        let deployment = deployment_write(&change.deployment)?;
        let canary = canary
            .map(|c| {
                canary_props(c.canary)
                    .map(|props| (props, c.canary.canary_id.to_string(), c.expected_revision))
            })
            .transpose()?;
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("move_alias", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (change, deployment, canary, events) = (
                change.clone(),
                deployment.clone(),
                canary.clone(),
                events.clone(),
            );
            Box::pin(async move {
                let id = change.agent_id.as_str();
                let Some(mut agent) = locked_agent(txn, id).await? else {
                    return Err(StoreError::Permanent {
                        message: format!("agent '{id}' does not exist"),
                        source: None,
                    }
                    .into());
                };
                let name = &change.alias.name;
                let current = agent.aliases.iter().position(|a| &a.name == name);
                if current.map(|i| &agent.aliases[i]) != change.expected.as_ref() {
                    return Err(StoreError::Conflict(format!(
                        "alias '{name}' of agent '{id}' moved meanwhile"
                    ))
                    .into());
                }
                match current {
                    Some(i) => agent.aliases[i] = change.alias.clone(),
                    None => agent.aliases.push(change.alias.clone()),
                }
                rewrite_routes(txn, &agent).await?;
                run(
                    txn,
                    query("MATCH (a:Agent {agent_id: $agent_id}) SET a.updated_at = $at")
                        .param("agent_id", id)
                        .param("at", change.deployment.created_at),
                )
                .await?;
                write_deployment(txn, &deployment, change.deployment.deployment_id.as_str())
                    .await?;
                if let Some((props, canary_id, expected)) = canary {
                    write_canary(txn, props, &canary_id, expected).await?;
                }
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn save_canary(
        &self,
        canary: CanaryWrite<'_>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let props = canary_props(canary.canary)?;
        let id = canary.canary.canary_id.to_string();
        let expected = canary.expected_revision;
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("save_canary", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (props, id, events) = (props.clone(), id.clone(), events.clone());
            Box::pin(async move {
                write_canary(txn, props, &id, expected).await?;
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn canary(&self, canary_id: &CanaryId) -> Result<Option<Canary>, StoreError> {
        let id = canary_id.to_string();
        let found = self
            .transact("canary", |txn| -> Work<'_, Vec<Row>> {
                let q = query("MATCH (c:Canary {canary_id: $id}) RETURN c.body AS body")
                    .param("id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(|r| decode_body(r, "canary")).transpose()
    }

    async fn latest_canary(
        &self,
        agent_id: &AgentId,
        alias: &str,
    ) -> Result<Option<Canary>, StoreError> {
        let (id, alias) = (agent_id.to_string(), alias.to_owned());
        let found = self
            .transact("latest_canary", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (c:Canary) WHERE c.agent_id = $agent_id AND c.alias = $alias
                     RETURN c.body AS body ORDER BY c.canary_id DESC LIMIT 1",
                )
                .param("agent_id", id.as_str())
                .param("alias", alias.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(|r| decode_body(r, "canary")).transpose()
    }

    async fn watched_canaries(&self) -> Result<Vec<Canary>, StoreError> {
        let found = self
            .transact("watched_canaries", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (c:Canary) WHERE c.status IN $statuses
                     RETURN c.body AS body ORDER BY c.canary_id",
                )
                .param(
                    "statuses",
                    vec![
                        CanaryStatus::Running.as_str(),
                        CanaryStatus::Baking.as_str(),
                    ],
                );
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode_body(r, "canary")).collect()
    }

    async fn list_deployments(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<Deployment>, StoreError> {
        let id = agent_id.to_string();
        let after = page
            .after
            .as_ref()
            .map(|c| c.key().to_owned())
            .unwrap_or_default();
        let limit = i64::from(page.limit) + 1;
        let found = self
            .transact("list_deployments", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (d:Deployment) WHERE d.agent_id = $agent_id AND d.deployment_id > $after
                     RETURN d.body AS body ORDER BY d.deployment_id LIMIT $limit",
                )
                .param("agent_id", id.as_str())
                .param("after", after.as_str())
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode_body(r, "deployment")).collect()
    }

    async fn turns_since(
        &self,
        agent_id: &AgentId,
        since: i64,
    ) -> Result<Vec<TurnSample>, StoreError> {
        let id = agent_id.to_string();
        // The agent's own turns (not delegated ones) of sessions that started in the window,
        // and one-shot turns made in it; then their ratings, mean per metric.
        let turns = self
            .transact("turns_since", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (i:Interaction) WHERE i.agent_id = $agent_id AND i.parent_interaction_id IS NULL
                     OPTIONAL MATCH (i)-[:IN_SESSION]->(s:Session)
                     WITH i, coalesce(s.created_at, i.created_at) AS started
                     WHERE started >= $since
                     RETURN i.interaction_id AS id, i.version AS version, i.status AS status,
                         i.latency_ms AS latency_ms, i.cost_usd AS cost_usd",
                )
                .param("agent_id", id.as_str())
                .param("since", since);
                Box::pin(rows(txn, q))
            })
            .await?;
        let mut out: BTreeMap<String, TurnSample> = BTreeMap::new();
        for row in &turns {
            let key: String = column(row, "id", "interaction id")?;
            let status: String = column(row, "status", "interaction status")?;
            let latency: i64 = column(row, "latency_ms", "interaction latency")?;
            out.insert(
                key,
                TurnSample {
                    version: column(row, "version", "interaction version")?,
                    failed: status == "failed",
                    latency_ms: u64::try_from(latency).unwrap_or(0),
                    cost_usd: column(row, "cost_usd", "interaction cost")?,
                    ratings: Vec::new(),
                },
            );
        }
        if out.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = out.keys().cloned().collect();
        let ratings = self
            .transact("turn_ratings", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "UNWIND $ids AS id
                     MATCH (f:Feedback)-[:ABOUT]->(i:Interaction {interaction_id: id})
                     MATCH (f)-[:HAS_RATING]->(r:Rating)
                     RETURN id, r.metric AS metric, avg(r.normalized) AS mean",
                )
                .param("ids", ids.clone());
                Box::pin(rows(txn, q))
            })
            .await?;
        for row in &ratings {
            let key: String = column(row, "id", "interaction id")?;
            let metric: String = column(row, "metric", "rating metric")?;
            let mean: f64 = column(row, "mean", "rating mean")?;
            if let Some(turn) = out.get_mut(&key) {
                turn.ratings.push((metric, mean));
            }
        }
        for turn in out.values_mut() {
            turn.ratings.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(out.into_values().collect())
    }

    async fn sessions_since(
        &self,
        agent_id: &AgentId,
        alias: &str,
        since: i64,
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        let (id, alias) = (agent_id.to_string(), alias.to_owned());
        let found = self
            .transact("sessions_since", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (s:Session) WHERE s.agent_id = $agent_id AND s.alias = $alias
                         AND s.created_at >= $since
                     RETURN s.version AS version, count(*) AS n ORDER BY version",
                )
                .param("agent_id", id.as_str())
                .param("alias", alias.as_str())
                .param("since", since);
                Box::pin(rows(txn, q))
            })
            .await?;
        found
            .iter()
            .map(|r| {
                let n: i64 = column(r, "n", "session count")?;
                Ok((
                    column(r, "version", "session version")?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }
}
