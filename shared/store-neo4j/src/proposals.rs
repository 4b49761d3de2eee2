//! Proposals and reviews: `(:Proposal)-[:BASED_ON]->(:AgentVersion)`, once applied
//! `(:Proposal)-[:PROPOSES]->(:AgentVersion)`, and `(:User)-[:REVIEWED]->(:Review)-[:OF]->(:Proposal)`
//! per review. Each proposal is also kept whole as JSON text (`body`).

use aop_core::proposal::{Proposal, ProposalId, ProposalStatus};
use aop_core::{AgentId, DomainEvent, PageRequest, ProposalStore, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde_json::{Value, json};

use crate::error::corrupt;
use crate::params::{bolt, event_rows, json_text, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

pub(crate) fn props(p: &Proposal) -> Result<BoltType, StoreError> {
    bolt(json!({
        "proposal_id": p.proposal_id.as_str(),
        "agent_id": p.agent_id.as_str(),
        "status": p.status.as_str(),
        "expires_at": p.expires_at,
        "revision": i64::try_from(p.revision).unwrap_or(i64::MAX),
        "body": json_text(p)?,
    }))
}

pub(crate) fn reviews(p: &Proposal) -> Result<BoltType, StoreError> {
    bolt(Value::Array(
        p.reviews
            .iter()
            .map(|r| {
                json!({
                    "key": format!("{}:{}", p.proposal_id, r.reviewer),
                    "reviewer": r.reviewer.as_str(),
                    "decision": serde_json::to_value(r.decision).unwrap_or_default(),
                    "comment": r.comment,
                    "created_at": r.created_at,
                })
            })
            .collect(),
    ))
}

fn decode(row: &Row) -> Result<Proposal, StoreError> {
    let body: String = column(row, "body", "proposal")?;
    serde_json::from_str(&body).map_err(|e| corrupt("proposal", e))
}

/// Creates a proposal node linked to the version it is based on.
pub(crate) async fn create_proposal(
    txn: &mut Txn,
    props: BoltType,
    base: &str,
) -> Result<(), Failure> {
    run(
        txn,
        query(
            "CREATE (p:Proposal {proposal_id: $props.proposal_id}) SET p += $props
             WITH p
             MATCH (v:AgentVersion {key: $base})
             CREATE (p)-[:BASED_ON]->(v)",
        )
        .param("props", props)
        .param("base", base),
    )
    .await
}

/// Records a proposal's reviews (each once) and, once applied, the version it made.
pub(crate) async fn write_reviews(
    txn: &mut Txn,
    id: &str,
    reviews: BoltType,
    applied: Option<&str>,
) -> Result<(), Failure> {
    run(
        txn,
        query(
            "MATCH (p:Proposal {proposal_id: $id})
             UNWIND $reviews AS r
             MERGE (x:Review {key: r.key})
             ON CREATE SET x += r
             MERGE (x)-[:OF]->(p)
             MERGE (u:User {user_id: r.reviewer})
             MERGE (u)-[:REVIEWED]->(x)",
        )
        .param("id", id)
        .param("reviews", reviews),
    )
    .await?;
    if let Some(key) = applied {
        run(
            txn,
            query(
                "MATCH (p:Proposal {proposal_id: $id})
                 MATCH (v:AgentVersion {key: $key})
                 MERGE (p)-[:PROPOSES]->(v)",
            )
            .param("id", id)
            .param("key", key),
        )
        .await?;
    }
    Ok(())
}

#[async_trait]
impl ProposalStore for Neo4jStore {
    async fn insert_proposal(
        &self,
        p: &Proposal,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let (props, base) = (props(p)?, version_key(p.agent_id.as_str(), p.base_version));
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing(
            "insert_proposal",
            marker.as_deref(),
            |txn| -> Work<'_, ()> {
                let (props, base, events) = (props.clone(), base.clone(), events.clone());
                Box::pin(async move {
                    create_proposal(txn, props, &base).await?;
                    outbox::write_events(txn, events).await
                })
            },
        )
        .await
    }

    async fn save_proposal(
        &self,
        p: &Proposal,
        expected_revision: u64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let (props, reviews) = (props(p)?, reviews(p)?);
        let id = p.proposal_id.to_string();
        let applied = p.version.map(|v| version_key(p.agent_id.as_str(), v));
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("save_proposal", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (props, reviews, id, applied, events) = (
                props.clone(),
                reviews.clone(),
                id.clone(),
                applied.clone(),
                events.clone(),
            );
            Box::pin(async move {
                let updated = rows(
                    txn,
                    query(
                        "MATCH (p:Proposal {proposal_id: $id}) WHERE p.revision = $expected
                         SET p += $props
                         RETURN count(p) AS n",
                    )
                    .param("id", id.as_str())
                    .param(
                        "expected",
                        i64::try_from(expected_revision).unwrap_or(i64::MAX),
                    )
                    .param("props", props),
                )
                .await?;
                let n: i64 = updated.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
                if n == 0 {
                    return Err(
                        StoreError::Conflict(format!("proposal '{id}' changed meanwhile")).into(),
                    );
                }
                write_reviews(txn, &id, reviews, applied.as_deref()).await?;
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn proposal(&self, proposal_id: &ProposalId) -> Result<Option<Proposal>, StoreError> {
        let id = proposal_id.to_string();
        let found = self
            .transact("proposal", |txn| -> Work<'_, Vec<Row>> {
                let q = query("MATCH (p:Proposal {proposal_id: $id}) RETURN p.body AS body")
                    .param("id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(decode).transpose()
    }

    async fn list_proposals(
        &self,
        agent_id: Option<&AgentId>,
        status: Option<ProposalStatus>,
        page: &PageRequest,
    ) -> Result<Vec<Proposal>, StoreError> {
        let agent = agent_id.map(ToString::to_string);
        let status = status.map(|s| s.as_str().to_owned());
        let after = page
            .after
            .as_ref()
            .map(|c| c.key().to_owned())
            .unwrap_or_default();
        let limit = i64::from(page.limit) + 1;
        let found = self
            .transact("list_proposals", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (p:Proposal)
                     WHERE ($agent_id IS NULL OR p.agent_id = $agent_id)
                       AND ($status IS NULL OR p.status = $status) AND p.proposal_id > $after
                     RETURN p.body AS body ORDER BY p.proposal_id LIMIT $limit",
                )
                .param("agent_id", agent.clone())
                .param("status", status.clone())
                .param("after", after.as_str())
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode).collect()
    }

    async fn expiring_proposals(&self, now: i64) -> Result<Vec<Proposal>, StoreError> {
        let found = self
            .transact("expiring_proposals", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (p:Proposal) WHERE p.status = 'pending' AND p.expires_at <= $now
                     RETURN p.body AS body ORDER BY p.proposal_id",
                )
                .param("now", now);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode).collect()
    }
}
