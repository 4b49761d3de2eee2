//! Deployments, canaries and the windowed turn statistics canaries are decided on. Records are
//! kept whole as JSON beside the columns they are found by.

use std::collections::BTreeMap;

use aop_core::deployment::{Canary, CanaryId, CanaryStatus, Deployment, TurnSample};
use aop_core::ports::{AliasMove, CanaryWrite};
use aop_core::{AgentId, Alias, DeploymentStore, DomainEvent, PageRequest, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::map_err;
use crate::{SqliteStore, rows};

const WATCHED: [CanaryStatus; 2] = [CanaryStatus::Running, CanaryStatus::Baking];

/// Inserts or replaces a canary, compare-and-set on its revision.
pub(crate) fn write_canary(
    tx: &rusqlite::Connection,
    write: CanaryWrite<'_>,
) -> Result<(), StoreError> {
    let c = write.canary;
    let body = rows::json(c)?;
    let written = match write.expected_revision {
        None => tx
            .execute(
                "INSERT INTO canaries (canary_id, agent_id, alias, status, started_at, revision, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    c.canary_id.as_str(),
                    c.agent_id.as_str(),
                    c.alias,
                    c.status.as_str(),
                    c.started_at,
                    rows::revision(c.revision),
                    body
                ],
            )
            .map_err(map_err)?,
        Some(expected) => tx
            .execute(
                "UPDATE canaries SET status = ?2, revision = ?3, body = ?4 \
                 WHERE canary_id = ?1 AND revision = ?5",
                params![
                    c.canary_id.as_str(),
                    c.status.as_str(),
                    rows::revision(c.revision),
                    body,
                    rows::revision(expected)
                ],
            )
            .map_err(map_err)?,
    };
    if written == 0 {
        return Err(StoreError::Conflict(format!(
            "canary '{}' changed meanwhile",
            c.canary_id
        )));
    }
    Ok(())
}

/// Inserts a deployment record.
pub(crate) fn write_deployment(
    conn: &rusqlite::Connection,
    d: &Deployment,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO deployments (deployment_id, agent_id, alias, kind, canary_id, created_at, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            d.deployment_id.as_str(),
            d.agent_id.as_str(),
            d.alias,
            d.kind.as_str(),
            d.canary_id.as_ref().map(CanaryId::as_str),
            d.created_at,
            rows::json(d)?
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

pub(crate) fn decode_canary(body: &str) -> Result<Canary, StoreError> {
    rows::parse("canary", body)
}

#[async_trait]
impl DeploymentStore for SqliteStore {
    async fn move_alias(
        &self,
        change: &AliasMove,
        canary: Option<CanaryWrite<'_>>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let change = change.clone();
        let canary = canary.map(|c| (c.canary.clone(), c.expected_revision));
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT aliases FROM agents WHERE agent_id = ?1",
                    [change.agent_id.as_str()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(map_err)?;
            let Some(stored) = stored else {
                return Err(StoreError::Permanent {
                    message: format!("agent '{}' does not exist", change.agent_id),
                    source: None,
                });
            };
            let mut aliases: Vec<Alias> = rows::parse("aliases", &stored)?;
            let name = &change.alias.name;
            let current = aliases.iter().position(|a| &a.name == name);
            if current.map(|i| &aliases[i]) != change.expected.as_ref() {
                return Err(StoreError::Conflict(format!(
                    "alias '{name}' of agent '{}' moved meanwhile",
                    change.agent_id
                )));
            }
            match current {
                Some(i) => aliases[i] = change.alias.clone(),
                None => aliases.push(change.alias.clone()),
            }
            tx.execute(
                "UPDATE agents SET aliases = ?2, updated_at = ?3 WHERE agent_id = ?1",
                params![
                    change.agent_id.as_str(),
                    rows::json(&aliases)?,
                    change.deployment.created_at
                ],
            )
            .map_err(map_err)?;
            let d = &change.deployment;
            write_deployment(&tx, d)?;
            if let Some((canary, expected_revision)) = &canary {
                write_canary(
                    &tx,
                    CanaryWrite {
                        canary,
                        expected_revision: *expected_revision,
                    },
                )?;
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn save_canary(
        &self,
        canary: CanaryWrite<'_>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let (c, expected) = (canary.canary.clone(), canary.expected_revision);
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            write_canary(
                &tx,
                CanaryWrite {
                    canary: &c,
                    expected_revision: expected,
                },
            )?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn canary(&self, canary_id: &CanaryId) -> Result<Option<Canary>, StoreError> {
        let id = canary_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT body FROM canaries WHERE canary_id = ?1",
                [id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(map_err)?
            .map(|body| decode_canary(&body))
            .transpose()
        })
        .await
    }

    async fn latest_canary(
        &self,
        agent_id: &AgentId,
        alias: &str,
    ) -> Result<Option<Canary>, StoreError> {
        let (id, alias) = (agent_id.to_string(), alias.to_owned());
        self.with(move |conn| {
            conn.query_row(
                "SELECT body FROM canaries WHERE agent_id = ?1 AND alias = ?2 \
                 ORDER BY canary_id DESC LIMIT 1",
                params![id, alias],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(map_err)?
            .map(|body| decode_canary(&body))
            .transpose()
        })
        .await
    }

    async fn watched_canaries(&self) -> Result<Vec<Canary>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM canaries WHERE status IN (?1, ?2) ORDER BY canary_id",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![WATCHED[0].as_str(), WATCHED[1].as_str()],
                |r| r.get::<_, String>(0),
                |body| decode_canary(&body),
            )
        })
        .await
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
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM deployments WHERE agent_id = ?1 AND deployment_id > ?2 \
                     ORDER BY deployment_id LIMIT ?3",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![id, after, limit],
                |r| r.get::<_, String>(0),
                |body| rows::parse("deployment", &body),
            )
        })
        .await
    }

    async fn turns_since(
        &self,
        agent_id: &AgentId,
        since: i64,
    ) -> Result<Vec<TurnSample>, StoreError> {
        let id = agent_id.to_string();
        self.with(move |conn| {
            // The agent's own turns (not delegated ones) of sessions that started in the
            // window, and one-shot turns made in it.
            const TURNS: &str = "FROM interactions i LEFT JOIN sessions s ON s.session_id = i.session_id \
                 WHERE i.agent_id = ?1 AND i.parent_interaction_id IS NULL \
                 AND coalesce(s.created_at, i.created_at) >= ?2";
            let mut turns: BTreeMap<String, TurnSample> = BTreeMap::new();
            {
                let mut stmt = conn
                    .prepare_cached(&format!(
                        "SELECT i.interaction_id, i.version, i.status, i.latency_ms, i.cost_usd {TURNS}"
                    ))
                    .map_err(map_err)?;
                let found = stmt
                    .query_map(params![id, since], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            TurnSample {
                                version: r.get(1)?,
                                failed: r.get::<_, String>(2)? == "failed",
                                latency_ms: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                                cost_usd: r.get(4)?,
                                ratings: Vec::new(),
                            },
                        ))
                    })
                    .map_err(map_err)?;
                for row in found {
                    let (key, turn) = row.map_err(map_err)?;
                    turns.insert(key, turn);
                }
            }
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT f.interaction_id, r.metric, avg(r.normalized) \
                     FROM feedback f JOIN feedback_ratings r ON r.feedback_id = f.feedback_id \
                     WHERE f.interaction_id IN (SELECT i.interaction_id {TURNS}) \
                     GROUP BY f.interaction_id, r.metric ORDER BY f.interaction_id, r.metric"
                ))
                .map_err(map_err)?;
            let ratings = stmt
                .query_map(params![id, since], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?))
                })
                .map_err(map_err)?;
            for row in ratings {
                let (key, metric, mean) = row.map_err(map_err)?;
                if let Some(turn) = turns.get_mut(&key) {
                    turn.ratings.push((metric, mean));
                }
            }
            Ok(turns.into_values().collect())
        })
        .await
    }

    async fn sessions_since(
        &self,
        agent_id: &AgentId,
        alias: &str,
        since: i64,
    ) -> Result<Vec<(u32, u64)>, StoreError> {
        let (id, alias) = (agent_id.to_string(), alias.to_owned());
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT version, count(*) FROM sessions \
                     WHERE agent_id = ?1 AND alias = ?2 AND created_at >= ?3 \
                     GROUP BY version ORDER BY version",
                )
                .map_err(map_err)?;
            let rows = stmt
                .query_map(params![id, alias, since], |r| {
                    Ok((
                        r.get::<_, u32>(0)?,
                        u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    ))
                })
                .map_err(map_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(map_err)
        })
        .await
    }
}
