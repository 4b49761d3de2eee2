//! Evaluation cases, evolution runs, their candidates and the evaluation cache. Runs and
//! candidates are kept whole as JSON beside the columns they are found by; the cache keeps what
//! each result paid in columns, so a run's spend per iteration is one sum.

use aop_core::evolution::{Candidate, EvalCase, EvalCaseId, Evolution, EvolutionId, Spend};
use aop_core::ports::{CacheEntry, EvolutionStore, RatedTurn};
use aop_core::session::InteractionId;
use aop_core::{AgentId, DomainEvent, PageRequest, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::map_err;
use crate::{SqliteStore, rows};

fn after_key(page: &PageRequest) -> String {
    page.after
        .as_ref()
        .map(|c| c.key().to_owned())
        .unwrap_or_default()
}

/// Inserts an evaluation case.
pub(crate) fn write_eval_case(conn: &Connection, c: &EvalCase) -> Result<(), StoreError> {
    let body = rows::json(c)?;
    conn.prepare_cached(
        "INSERT INTO eval_cases (case_id, agent_id, created_at, body) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            c.case_id.as_str(),
            c.agent_id.as_str(),
            c.created_at,
            body
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// Inserts an evolution run.
pub(crate) fn write_evolution(conn: &Connection, run: &Evolution) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO evolutions (evolution_id, agent_id, status, revision, body) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            run.evolution_id.as_str(),
            run.agent_id.as_str(),
            run.status.as_str(),
            rows::revision(run.revision),
            rows::json(run)?
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

/// Inserts a candidate of a run.
pub(crate) fn write_candidate(conn: &Connection, c: &Candidate) -> Result<(), StoreError> {
    let body = rows::json(c)?;
    conn.prepare_cached(
        "INSERT INTO candidates (candidate_id, evolution_id, body) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            c.candidate_id.as_str(),
            c.evolution_id.as_str(),
            body
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// Keeps a paid result; with `strict` false, a key kept before stays as it was.
pub(crate) fn write_cache_entry(
    conn: &Connection,
    evolution_id: &str,
    e: &CacheEntry,
    strict: bool,
) -> Result<(), StoreError> {
    let sql = if strict {
        "INSERT INTO evaluation_cache (evolution_id, key, iteration, metric_calls, llm_calls, \
         tokens, cost_usd, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    } else {
        "INSERT INTO evaluation_cache (evolution_id, key, iteration, metric_calls, llm_calls, \
         tokens, cost_usd, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (evolution_id, key) DO NOTHING"
    };
    let value = rows::json(&e.value)?;
    conn.prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.execute(params![
                evolution_id,
                e.key,
                e.iteration,
                e.spend.metric_calls,
                e.spend.llm_calls,
                i64::try_from(e.spend.tokens).unwrap_or(i64::MAX),
                e.spend.cost_usd,
                value
            ])
        })
        .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl EvolutionStore for SqliteStore {
    async fn insert_eval_cases(&self, cases: &[EvalCase]) -> Result<(), StoreError> {
        let cases = cases.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            for c in &cases {
                write_eval_case(&tx, c)?;
            }
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn list_eval_cases(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<EvalCase>, StoreError> {
        let (agent, after, limit) = (
            agent_id.to_string(),
            after_key(page),
            i64::from(page.limit) + 1,
        );
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM eval_cases WHERE agent_id = ?1 AND case_id > ?2 \
                     ORDER BY case_id LIMIT ?3",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![agent, after, limit],
                |r| r.get::<_, String>(0),
                |body| rows::parse("evaluation case", &body),
            )
        })
        .await
    }

    async fn remove_eval_case(
        &self,
        agent_id: &AgentId,
        case_id: &EvalCaseId,
    ) -> Result<bool, StoreError> {
        let (agent, case) = (agent_id.to_string(), case_id.to_string());
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM eval_cases WHERE agent_id = ?1 AND case_id = ?2",
                params![agent, case],
            )
            .map(|n| n > 0)
            .map_err(map_err)
        })
        .await
    }

    async fn rated_turns(
        &self,
        agent_id: &AgentId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<RatedTurn>, StoreError> {
        let agent = agent_id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let tx = conn.transaction().map_err(map_err)?;
            let mut turns = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT i.interaction_id, i.version, i.input, i.output, i.status, \
                         i.created_at FROM interactions i \
                         WHERE i.agent_id = ?1 AND i.created_at >= ?2 \
                         AND EXISTS (SELECT 1 FROM feedback f \
                                     WHERE f.interaction_id = i.interaction_id) \
                         ORDER BY i.created_at DESC, i.interaction_id DESC LIMIT ?3",
                    )
                    .map_err(map_err)?;
                let rows = stmt
                    .query_map(params![agent, since, limit], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u32>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .map_err(map_err)?;
                for row in rows {
                    let (id, version, input, output, status, created_at) = row.map_err(map_err)?;
                    let interaction_id =
                        InteractionId::try_from(id).map_err(|reason| StoreError::Permanent {
                            message: format!("stored interaction id is invalid: {reason}"),
                            source: None,
                        })?;
                    turns.push(RatedTurn {
                        interaction_id,
                        version,
                        input,
                        output,
                        failed: status == "failed",
                        ratings: Vec::new(),
                        comments: Vec::new(),
                        created_at,
                    });
                }
            }
            {
                let mut ratings = tx
                    .prepare_cached(
                        "SELECT r.metric, AVG(r.normalized) FROM feedback f \
                         JOIN feedback_ratings r ON r.feedback_id = f.feedback_id \
                         WHERE f.interaction_id = ?1 GROUP BY r.metric ORDER BY r.metric",
                    )
                    .map_err(map_err)?;
                let mut comments = tx
                    .prepare_cached(
                        "SELECT comments FROM feedback WHERE interaction_id = ?1 \
                         AND comments IS NOT NULL AND comments != '' ORDER BY created_at",
                    )
                    .map_err(map_err)?;
                for t in &mut turns {
                    let id = t.interaction_id.as_str();
                    t.ratings = ratings
                        .query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))
                        .map_err(map_err)?
                        .collect::<Result<_, _>>()
                        .map_err(map_err)?;
                    t.comments = comments
                        .query_map([id], |r| r.get::<_, String>(0))
                        .map_err(map_err)?
                        .collect::<Result<_, _>>()
                        .map_err(map_err)?;
                }
            }
            Ok(turns)
        })
        .await
    }

    async fn insert_evolution(
        &self,
        run: &Evolution,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let run = run.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            write_evolution(&tx, &run)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn save_evolution(
        &self,
        run: &Evolution,
        expected_revision: u64,
        candidates: &[Candidate],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let run = run.clone();
        let candidates = candidates.to_vec();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let n = tx
                .execute(
                    "UPDATE evolutions SET status = ?2, revision = ?3, body = ?4 \
                     WHERE evolution_id = ?1 AND revision = ?5",
                    params![
                        run.evolution_id.as_str(),
                        run.status.as_str(),
                        rows::revision(run.revision),
                        rows::json(&run)?,
                        rows::revision(expected_revision)
                    ],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "evolution '{}' changed meanwhile",
                    run.evolution_id
                )));
            }
            for c in &candidates {
                write_candidate(&tx, c)?;
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn evolution(&self, evolution_id: &EvolutionId) -> Result<Option<Evolution>, StoreError> {
        let id = evolution_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT body FROM evolutions WHERE evolution_id = ?1",
                [id],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(map_err)?
            .map(|body| rows::parse("evolution", &body))
            .transpose()
        })
        .await
    }

    async fn running_evolutions(&self) -> Result<Vec<Evolution>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM evolutions WHERE status = 'running' ORDER BY evolution_id",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                [],
                |r| r.get::<_, String>(0),
                |body| rows::parse("evolution", &body),
            )
        })
        .await
    }

    async fn list_evolutions(
        &self,
        agent_id: Option<&AgentId>,
        page: &PageRequest,
    ) -> Result<Vec<Evolution>, StoreError> {
        let agent = agent_id.map(ToString::to_string);
        let (after, limit) = (after_key(page), i64::from(page.limit) + 1);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM evolutions WHERE (?1 IS NULL OR agent_id = ?1) \
                     AND (?2 = '' OR evolution_id < ?2) ORDER BY evolution_id DESC LIMIT ?3",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![agent, after, limit],
                |r| r.get::<_, String>(0),
                |body| rows::parse("evolution", &body),
            )
        })
        .await
    }

    async fn candidates(&self, evolution_id: &EvolutionId) -> Result<Vec<Candidate>, StoreError> {
        let id = evolution_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT body FROM candidates WHERE evolution_id = ?1 ORDER BY candidate_id",
                )
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                [id],
                |r| r.get::<_, String>(0),
                |body| rows::parse("candidate", &body),
            )
        })
        .await
    }

    async fn cached(
        &self,
        evolution_id: &EvolutionId,
        keys: &[String],
    ) -> Result<Vec<CacheEntry>, StoreError> {
        let id = evolution_id.to_string();
        let keys = keys.to_vec();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT iteration, metric_calls, llm_calls, tokens, cost_usd, value \
                     FROM evaluation_cache WHERE evolution_id = ?1 AND key = ?2",
                )
                .map_err(map_err)?;
            let mut found = Vec::new();
            for key in keys {
                let hit = stmt
                    .query_row(params![id, key], |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            Spend {
                                metric_calls: r.get(1)?,
                                llm_calls: r.get(2)?,
                                tokens: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                                cost_usd: r.get(4)?,
                            },
                            r.get::<_, String>(5)?,
                        ))
                    })
                    .optional()
                    .map_err(map_err)?;
                if let Some((iteration, spend, value)) = hit {
                    found.push(CacheEntry {
                        key,
                        iteration,
                        spend,
                        value: rows::parse("cached evaluation", &value)?,
                    });
                }
            }
            Ok(found)
        })
        .await
    }

    async fn cache(
        &self,
        evolution_id: &EvolutionId,
        entries: &[CacheEntry],
    ) -> Result<(), StoreError> {
        let id = evolution_id.to_string();
        let entries = entries.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            for e in &entries {
                write_cache_entry(&tx, &id, e, false)?;
            }
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn spent_in(
        &self,
        evolution_id: &EvolutionId,
        iteration: u32,
    ) -> Result<Spend, StoreError> {
        let id = evolution_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(metric_calls), 0), COALESCE(SUM(llm_calls), 0), \
                 COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_usd), 0.0) \
                 FROM evaluation_cache WHERE evolution_id = ?1 AND iteration = ?2",
                params![id, iteration],
                |r| {
                    Ok(Spend {
                        metric_calls: u32::try_from(r.get::<_, i64>(0)?).unwrap_or(u32::MAX),
                        llm_calls: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                        tokens: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        cost_usd: r.get(3)?,
                    })
                },
            )
            .map_err(map_err)
        })
        .await
    }
}
