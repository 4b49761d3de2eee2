//! Evaluation cases and evolution runs: `(:EvalCase)-[:EVALUATES]->(:Agent)`,
//! `(:Evolution)-[:EVOLVES]->(:Agent)`, `(:Evolution)-[:SEEDED_FROM]->(:AgentVersion)`, once it
//! has a winner `(:Evolution)-[:GENERATED]->(:AgentVersion)`, `(:Candidate)-[:OF_RUN]->(:Evolution)`
//! and `(:Candidate)-[:CHILD_OF]->(:Candidate)` per parent; paid results are `(:Evaluation)`
//! nodes keyed by run and key. Runs, cases and candidates are also kept whole as JSON text
//! (`body`).

use aop_core::evolution::{Candidate, EvalCase, EvalCaseId, Evolution, EvolutionId, Spend};
use aop_core::ports::{CacheEntry, EvolutionStore, RatedTurn};
use aop_core::session::InteractionId;
use aop_core::{AgentId, DomainEvent, PageRequest, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde_json::{Value, json};

use crate::error::corrupt;
use crate::params::{bolt, event_rows, json_text, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

fn decode<T: serde::de::DeserializeOwned>(row: &Row, what: &str) -> Result<T, StoreError> {
    let body: String = column(row, "body", what)?;
    serde_json::from_str(&body).map_err(|e| corrupt(what, e))
}

fn after_key(page: &PageRequest) -> String {
    page.after
        .as_ref()
        .map(|c| c.key().to_owned())
        .unwrap_or_default()
}

pub(crate) fn run_props(r: &Evolution) -> Result<BoltType, StoreError> {
    bolt(json!({
        "evolution_id": r.evolution_id.as_str(),
        "agent_id": r.agent_id.as_str(),
        "status": r.status.as_str(),
        "revision": i64::try_from(r.revision).unwrap_or(i64::MAX),
        "iteration": r.iteration,
        "best_score": r.best_score,
        "seed_score": r.seed_score,
        "started_at": r.started_at,
        "updated_at": r.updated_at,
        "body": json_text(r)?,
    }))
}

pub(crate) fn candidate_rows(candidates: &[Candidate]) -> Result<BoltType, StoreError> {
    let rows: Result<Vec<Value>, StoreError> = candidates
        .iter()
        .map(|c| {
            Ok(json!({
                "props": {
                    "candidate_id": c.candidate_id.as_str(),
                    "evolution_id": c.evolution_id.as_str(),
                    "iteration": c.iteration,
                    "operator": c.operator.as_str(),
                    "accepted": c.accepted,
                    "val_mean": c.val_mean,
                    "hash": c.hash,
                    "body": json_text(c)?,
                },
                "candidate_id": c.candidate_id.as_str(),
                "parents": c.parents.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            }))
        })
        .collect();
    bolt(Value::Array(rows?))
}

/// Rows of [`CREATE_EVAL_CASES`].
pub(crate) fn eval_case_rows(cases: &[EvalCase]) -> Result<BoltType, StoreError> {
    let rows: Result<Vec<Value>, StoreError> = cases
        .iter()
        .map(|c| {
            Ok(json!({
                "case_id": c.case_id.as_str(),
                "agent_id": c.agent_id.as_str(),
                "created_at": c.created_at,
                "body": json_text(c)?,
            }))
        })
        .collect();
    bolt(Value::Array(rows?))
}

/// Creates evaluation cases linked to their agents.
pub(crate) const CREATE_EVAL_CASES: &str = "UNWIND $rows AS row
     MATCH (a:Agent {agent_id: row.agent_id})
     CREATE (c:EvalCase {case_id: row.case_id}) SET c += row
     CREATE (c)-[:EVALUATES]->(a)";

/// A row of [`MERGE_CACHE`]: one result of a run.
pub(crate) fn cache_row(evolution_id: &str, e: &CacheEntry) -> Result<Value, StoreError> {
    Ok(json!({
        "key": format!("{evolution_id}|{}", e.key),
        "evolution_id": evolution_id,
        "iteration": e.iteration,
        "metric_calls": e.spend.metric_calls,
        "llm_calls": e.spend.llm_calls,
        "tokens": i64::try_from(e.spend.tokens).unwrap_or(i64::MAX),
        "cost_usd": e.spend.cost_usd,
        "value": json_text(&e.value)?,
    }))
}

/// Keeps paid results; a key kept before stays as it was.
pub(crate) const MERGE_CACHE: &str = "UNWIND $rows AS row
     MERGE (x:Evaluation {key: row.key})
     ON CREATE SET x += row";

/// Creates a run linked to its agent and seed version.
pub(crate) async fn create_evolution(
    txn: &mut Txn,
    agent_id: &str,
    seed: &str,
    props: BoltType,
) -> Result<(), Failure> {
    run(
        txn,
        query(
            "MATCH (a:Agent {agent_id: $agent_id})
             MATCH (v:AgentVersion {key: $seed})
             CREATE (e:Evolution {evolution_id: $props.evolution_id}) SET e += $props
             CREATE (e)-[:EVOLVES]->(a)
             CREATE (e)-[:SEEDED_FROM]->(v)",
        )
        .param("agent_id", agent_id)
        .param("seed", seed)
        .param("props", props),
    )
    .await
}

/// Creates candidates (rows of [`candidate_rows`]) in their runs, linked to their parents.
pub(crate) async fn write_candidates(txn: &mut Txn, rows: BoltType) -> Result<(), Failure> {
    run(txn, query(CREATE_CANDIDATES).param("rows", rows.clone())).await?;
    run(txn, query(LINK_CANDIDATE_PARENTS).param("rows", rows)).await
}

pub(crate) const CREATE_CANDIDATES: &str = "UNWIND $rows AS row
     MATCH (e:Evolution {evolution_id: row.props.evolution_id})
     CREATE (c:Candidate {candidate_id: row.candidate_id}) SET c += row.props
     CREATE (c)-[:OF_RUN]->(e)";
pub(crate) const LINK_CANDIDATE_PARENTS: &str = "UNWIND $rows AS row
     UNWIND row.parents AS parent_id
     MATCH (c:Candidate {candidate_id: row.candidate_id})
     MATCH (p:Candidate {candidate_id: parent_id})
     CREATE (c)-[:CHILD_OF]->(p)";

/// Links a run to the version its winner became.
pub(crate) async fn link_generated(txn: &mut Txn, id: &str, key: &str) -> Result<(), Failure> {
    run(
        txn,
        query(
            "MATCH (e:Evolution {evolution_id: $id})
             MATCH (v:AgentVersion {key: $key})
             MERGE (e)-[:GENERATED]->(v)",
        )
        .param("id", id)
        .param("key", key),
    )
    .await
}

#[async_trait]
impl EvolutionStore for Neo4jStore {
    async fn insert_eval_cases(&self, cases: &[EvalCase]) -> Result<(), StoreError> {
        let rows = eval_case_rows(cases)?;
        self.transact("insert_eval_cases", |txn| -> Work<'_, ()> {
            let rows = rows.clone();
            Box::pin(async move { run(txn, query(CREATE_EVAL_CASES).param("rows", rows)).await })
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
        let found = self
            .transact("list_eval_cases", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (c:EvalCase) WHERE c.agent_id = $agent_id AND c.case_id > $after
                     RETURN c.body AS body ORDER BY c.case_id LIMIT $limit",
                )
                .param("agent_id", agent.as_str())
                .param("after", after.as_str())
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode(r, "evaluation case")).collect()
    }

    async fn remove_eval_case(
        &self,
        agent_id: &AgentId,
        case_id: &EvalCaseId,
    ) -> Result<bool, StoreError> {
        let (agent, case) = (agent_id.to_string(), case_id.to_string());
        let found = self
            .transact("remove_eval_case", |txn| -> Work<'_, Vec<Row>> {
                let (agent, case) = (agent.clone(), case.clone());
                Box::pin(async move {
                    let found = rows(
                        txn,
                        query(
                            "MATCH (c:EvalCase {case_id: $case_id}) WHERE c.agent_id = $agent_id
                             RETURN count(c) AS n",
                        )
                        .param("case_id", case.as_str())
                        .param("agent_id", agent.as_str()),
                    )
                    .await?;
                    run(
                        txn,
                        query(
                            "MATCH (c:EvalCase {case_id: $case_id}) WHERE c.agent_id = $agent_id
                             DETACH DELETE c",
                        )
                        .param("case_id", case.as_str())
                        .param("agent_id", agent.as_str()),
                    )
                    .await?;
                    Ok(found)
                })
            })
            .await?;
        let n: i64 = found.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
        Ok(n > 0)
    }

    async fn rated_turns(
        &self,
        agent_id: &AgentId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<RatedTurn>, StoreError> {
        let agent = agent_id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let turns = self
            .transact("rated_turns", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (f:Feedback)-[:ABOUT]->(i:Interaction)
                     WHERE i.agent_id = $agent_id AND i.created_at >= $since
                     WITH DISTINCT i
                     RETURN i.interaction_id AS id, i.version AS version, i.input AS input,
                         i.output AS output, i.status AS status, i.created_at AS created_at
                     ORDER BY created_at DESC, id DESC LIMIT $limit",
                )
                .param("agent_id", agent.as_str())
                .param("since", since)
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        let mut out = Vec::with_capacity(turns.len());
        for row in &turns {
            let id: String = column(row, "id", "interaction id")?;
            let status: String = column(row, "status", "interaction status")?;
            out.push(RatedTurn {
                interaction_id: InteractionId::try_from(id)
                    .map_err(|e| corrupt("interaction id", e))?,
                version: column(row, "version", "interaction version")?,
                input: column(row, "input", "interaction input")?,
                output: column(row, "output", "interaction output")?,
                failed: status == "failed",
                ratings: Vec::new(),
                comments: Vec::new(),
                created_at: column(row, "created_at", "interaction time")?,
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = out.iter().map(|t| t.interaction_id.to_string()).collect();
        let (ratings, comments) = self
            .transact(
                "rated_turn_feedback",
                |txn| -> Work<'_, (Vec<Row>, Vec<Row>)> {
                    let ids = ids.clone();
                    Box::pin(async move {
                        let ratings = rows(
                            txn,
                            query(
                                "UNWIND $ids AS id
                             MATCH (f:Feedback)-[:ABOUT]->(i:Interaction {interaction_id: id})
                             MATCH (f)-[:HAS_RATING]->(r:Rating)
                             RETURN id, r.metric AS metric, avg(r.normalized) AS mean",
                            )
                            .param("ids", ids.clone()),
                        )
                        .await?;
                        let comments = rows(
                            txn,
                            query(
                                "UNWIND $ids AS id
                             MATCH (f:Feedback)-[:ABOUT]->(i:Interaction {interaction_id: id})
                             WHERE f.comments IS NOT NULL AND f.comments <> ''
                             RETURN id, f.comments AS comments, f.created_at AS at
                             ORDER BY at",
                            )
                            .param("ids", ids),
                        )
                        .await?;
                        Ok((ratings, comments))
                    })
                },
            )
            .await?;
        for row in &ratings {
            let id: String = column(row, "id", "interaction id")?;
            if let Some(t) = out.iter_mut().find(|t| t.interaction_id.as_str() == id) {
                t.ratings.push((
                    column(row, "metric", "rating metric")?,
                    column(row, "mean", "rating mean")?,
                ));
            }
        }
        for row in &comments {
            let id: String = column(row, "id", "interaction id")?;
            if let Some(t) = out.iter_mut().find(|t| t.interaction_id.as_str() == id) {
                t.comments
                    .push(column(row, "comments", "feedback comments")?);
            }
        }
        for t in &mut out {
            t.ratings.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(out)
    }

    async fn insert_evolution(
        &self,
        r: &Evolution,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let props = run_props(r)?;
        let (agent, seed) = (
            r.agent_id.to_string(),
            version_key(r.agent_id.as_str(), r.seed_version),
        );
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing(
            "insert_evolution",
            marker.as_deref(),
            |txn| -> Work<'_, ()> {
                let (props, agent, seed, events) =
                    (props.clone(), agent.clone(), seed.clone(), events.clone());
                Box::pin(async move {
                    // Writing the agent first makes concurrent starts on one agent take turns, so
                    // the check below sees the other's run.
                    let running = rows(
                        txn,
                        query(
                            "MATCH (a:Agent {agent_id: $agent_id})
                         SET a.evolution_checked_at = timestamp()
                         WITH a
                         OPTIONAL MATCH (e:Evolution {agent_id: $agent_id, status: 'running'})
                         RETURN count(e) AS n",
                        )
                        .param("agent_id", agent.as_str()),
                    )
                    .await?;
                    let n: i64 = running.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
                    if n > 0 {
                        return Err(StoreError::Conflict(format!(
                            "agent '{agent}' has a running evolution"
                        ))
                        .into());
                    }
                    create_evolution(txn, &agent, &seed, props).await?;
                    outbox::write_events(txn, events).await
                })
            },
        )
        .await
    }

    async fn save_evolution(
        &self,
        r: &Evolution,
        expected_revision: u64,
        candidates: &[Candidate],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let props = run_props(r)?;
        let id = r.evolution_id.to_string();
        let generated = r
            .winner
            .as_ref()
            .map(|w| version_key(r.agent_id.as_str(), w.version));
        let candidates = candidate_rows(candidates)?;
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("save_evolution", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (props, id, generated, candidates, events) = (
                props.clone(),
                id.clone(),
                generated.clone(),
                candidates.clone(),
                events.clone(),
            );
            Box::pin(async move {
                let updated = rows(
                    txn,
                    query(
                        "MATCH (e:Evolution {evolution_id: $id}) WHERE e.revision = $expected
                         SET e += $props
                         RETURN count(e) AS n",
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
                    return Err(StoreError::Conflict(format!(
                        "evolution '{id}' changed meanwhile"
                    ))
                    .into());
                }
                write_candidates(txn, candidates).await?;
                if let Some(key) = generated {
                    link_generated(txn, &id, &key).await?;
                }
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn evolution(&self, evolution_id: &EvolutionId) -> Result<Option<Evolution>, StoreError> {
        let id = evolution_id.to_string();
        let found = self
            .transact("evolution", |txn| -> Work<'_, Vec<Row>> {
                let q = query("MATCH (e:Evolution {evolution_id: $id}) RETURN e.body AS body")
                    .param("id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(|r| decode(r, "evolution")).transpose()
    }

    async fn running_evolutions(&self) -> Result<Vec<Evolution>, StoreError> {
        let found = self
            .transact("running_evolutions", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (e:Evolution) WHERE e.status = 'running'
                     RETURN e.body AS body ORDER BY e.evolution_id",
                );
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode(r, "evolution")).collect()
    }

    async fn list_evolutions(
        &self,
        agent_id: Option<&AgentId>,
        page: &PageRequest,
    ) -> Result<Vec<Evolution>, StoreError> {
        let agent = agent_id.map(ToString::to_string);
        let (after, limit) = (after_key(page), i64::from(page.limit) + 1);
        let found = self
            .transact("list_evolutions", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (e:Evolution)
                     WHERE ($agent_id IS NULL OR e.agent_id = $agent_id)
                       AND ($after = '' OR e.evolution_id < $after)
                     RETURN e.body AS body ORDER BY e.evolution_id DESC LIMIT $limit",
                )
                .param("agent_id", agent.clone())
                .param("after", after.as_str())
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode(r, "evolution")).collect()
    }

    async fn candidates(&self, evolution_id: &EvolutionId) -> Result<Vec<Candidate>, StoreError> {
        let id = evolution_id.to_string();
        let found = self
            .transact("candidates", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (c:Candidate) WHERE c.evolution_id = $id
                     RETURN c.body AS body ORDER BY c.candidate_id",
                )
                .param("id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(|r| decode(r, "candidate")).collect()
    }

    async fn cached(
        &self,
        evolution_id: &EvolutionId,
        keys: &[String],
    ) -> Result<Vec<CacheEntry>, StoreError> {
        let id = evolution_id.to_string();
        let full: Vec<String> = keys.iter().map(|k| format!("{id}|{k}")).collect();
        let found = self
            .transact("cached", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "UNWIND $keys AS key
                     MATCH (x:Evaluation {key: key})
                     RETURN x.key AS key, x.iteration AS iteration, x.metric_calls AS metric_calls,
                         x.llm_calls AS llm_calls, x.tokens AS tokens, x.cost_usd AS cost_usd,
                         x.value AS value",
                )
                .param("keys", full.clone());
                Box::pin(rows(txn, q))
            })
            .await?;
        let prefix = format!("{id}|");
        found
            .iter()
            .map(|r| {
                let key: String = column(r, "key", "evaluation key")?;
                let value: String = column(r, "value", "evaluation value")?;
                let tokens: i64 = column(r, "tokens", "evaluation tokens")?;
                Ok(CacheEntry {
                    key: key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
                    iteration: column(r, "iteration", "evaluation iteration")?,
                    spend: Spend {
                        metric_calls: column(r, "metric_calls", "evaluation calls")?,
                        llm_calls: column(r, "llm_calls", "evaluation calls")?,
                        tokens: u64::try_from(tokens).unwrap_or(0),
                        cost_usd: column(r, "cost_usd", "evaluation cost")?,
                    },
                    value: serde_json::from_str(&value)
                        .map_err(|e| corrupt("cached evaluation", e))?,
                })
            })
            .collect()
    }

    async fn cache(
        &self,
        evolution_id: &EvolutionId,
        entries: &[CacheEntry],
    ) -> Result<(), StoreError> {
        let id = evolution_id.to_string();
        let rows: Result<Vec<Value>, StoreError> =
            entries.iter().map(|e| cache_row(&id, e)).collect();
        let rows = bolt(Value::Array(rows?))?;
        self.transact("cache", |txn| -> Work<'_, ()> {
            let rows = rows.clone();
            Box::pin(async move { run(txn, query(MERGE_CACHE).param("rows", rows)).await })
        })
        .await
    }

    async fn spent_in(
        &self,
        evolution_id: &EvolutionId,
        iteration: u32,
    ) -> Result<Spend, StoreError> {
        let id = evolution_id.to_string();
        let found = self
            .transact("spent_in", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (x:Evaluation) WHERE x.evolution_id = $id AND x.iteration = $iteration
                     RETURN count(x) AS n, sum(x.metric_calls) AS metric_calls,
                         sum(x.llm_calls) AS llm_calls, sum(x.tokens) AS tokens,
                         sum(x.cost_usd) AS cost_usd",
                )
                .param("id", id.as_str())
                .param("iteration", i64::from(iteration));
                Box::pin(rows(txn, q))
            })
            .await?;
        let Some(r) = found.first() else {
            return Ok(Spend::default());
        };
        let n: i64 = column(r, "n", "evaluation count")?;
        if n == 0 {
            return Ok(Spend::default());
        }
        let int = |name: &str| -> Result<i64, StoreError> { column(r, name, "evaluation sum") };
        Ok(Spend {
            metric_calls: u32::try_from(int("metric_calls")?).unwrap_or(u32::MAX),
            llm_calls: u32::try_from(int("llm_calls")?).unwrap_or(u32::MAX),
            tokens: u64::try_from(int("tokens")?).unwrap_or(0),
            cost_usd: column(r, "cost_usd", "evaluation cost")?,
        })
    }
}
