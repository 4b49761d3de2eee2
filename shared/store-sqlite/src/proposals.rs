//! Proposals and their reviews, kept whole as JSON beside the columns they are found by.

use aop_core::proposal::{Proposal, ProposalId, ProposalStatus};
use aop_core::{AgentId, DomainEvent, PageRequest, ProposalStore, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::map_err;
use crate::{SqliteStore, rows};

/// Inserts a proposal.
pub(crate) fn write_proposal(conn: &rusqlite::Connection, p: &Proposal) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO proposals (proposal_id, agent_id, status, expires_at, revision, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            p.proposal_id.as_str(),
            p.agent_id.as_str(),
            p.status.as_str(),
            p.expires_at,
            rows::revision(p.revision),
            rows::json(p)?
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl ProposalStore for SqliteStore {
    async fn insert_proposal(
        &self,
        p: &Proposal,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let p = p.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            write_proposal(&tx, &p)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn save_proposal(
        &self,
        p: &Proposal,
        expected_revision: u64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let p = p.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let n = tx
                .execute(
                    "UPDATE proposals SET status = ?2, revision = ?3, body = ?4 \
                     WHERE proposal_id = ?1 AND revision = ?5",
                    params![
                        p.proposal_id.as_str(),
                        p.status.as_str(),
                        rows::revision(p.revision),
                        rows::json(&p)?,
                        rows::revision(expected_revision)
                    ],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "proposal '{}' changed meanwhile",
                    p.proposal_id
                )));
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn proposal(&self, proposal_id: &ProposalId) -> Result<Option<Proposal>, StoreError> {
        let id = proposal_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT body FROM proposals WHERE proposal_id = ?1",
                [id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(map_err)?
            .map(|body| rows::parse("proposal", &body))
            .transpose()
        })
        .await
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
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM proposals WHERE (?1 IS NULL OR agent_id = ?1) \
                     AND (?2 IS NULL OR status = ?2) AND proposal_id > ?3 \
                     ORDER BY proposal_id LIMIT ?4",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![agent, status, after, limit],
                |r| r.get::<_, String>(0),
                |body| rows::parse("proposal", &body),
            )
        })
        .await
    }

    async fn expiring_proposals(&self, now: i64) -> Result<Vec<Proposal>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM proposals WHERE status = 'pending' AND expires_at <= ?1 \
                     ORDER BY proposal_id",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![now],
                |r| r.get::<_, String>(0),
                |body| rows::parse("proposal", &body),
            )
        })
        .await
    }
}
