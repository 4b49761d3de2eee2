//! Feedback, ratings and fitness: `(:User)-[:PROVIDED_FEEDBACK]->(:Feedback)`,
//! `(:Feedback)-[:ABOUT]->(:Interaction|:Session)`, `(:Feedback)-[:RATES]->(:AgentVersion)`,
//! `(:Feedback)-[:HAS_RATING]->(:Rating)`, `(:Fitness)-[:OF]->(:AgentVersion)` and
//! `(:ProcessedEvent)` records that make event handling idempotent.

use aop_core::feedback::{Feedback, FitnessUpdate, Metric, MetricStats, sample_variance};
use aop_core::stats::Summary;
use aop_core::{AgentId, DomainEvent, FeedbackStore, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde_json::{Value, json};

use crate::error::corrupt;
use crate::params::{bolt, event_rows, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

/// What the `metric` column of a statistics row holds.
#[derive(Clone, Copy)]
enum MetricColumn {
    /// A metric key, as `(:Fitness)` stores it.
    Key,
    /// The name of a rating, as `(:Rating)` stores it.
    RatingName,
}

fn decode_stats(row: &Row, column_kind: MetricColumn) -> Result<MetricStats, StoreError> {
    let count: i64 = column(row, "n", "statistics count")?;
    let count = u64::try_from(count).unwrap_or(0);
    let name: String = column(row, "metric", "statistics metric")?;
    let metric = match column_kind {
        MetricColumn::Key => Metric::parse(&name).ok_or_else(|| corrupt("metric", &name))?,
        MetricColumn::RatingName => Metric::rating(name),
    };
    Ok(MetricStats {
        version: column(row, "version", "statistics version")?,
        metric,
        count,
        mean: column(row, "mean", "statistics mean")?,
        variance: sample_variance(count, column(row, "m2", "statistics m2")?),
    })
}

/// `AND` clauses for the optional version and metric filters, on node `x`.
fn filters(version: Option<u32>, metric: Option<&str>) -> (String, Vec<(&'static str, BoltType)>) {
    let mut sql = String::new();
    let mut params = Vec::new();
    if let Some(v) = version {
        sql.push_str(" AND x.version = $version");
        params.push(("version", i64::from(v).into()));
    }
    if let Some(m) = metric {
        sql.push_str(" AND x.metric = $metric");
        params.push(("metric", m.into()));
    }
    (sql, params)
}

/// Feedback prepared for [`write_feedback`].
#[derive(Clone)]
pub(crate) struct FeedbackWrite {
    props: BoltType,
    ratings: BoltType,
    id: String,
    user: String,
    key: String,
    session: Option<String>,
    interaction: Option<String>,
}

pub(crate) fn feedback_write(f: &Feedback) -> Result<FeedbackWrite, StoreError> {
    let props = bolt(json!({
        "feedback_id": f.feedback_id.as_str(),
        "agent_id": f.agent_id.as_str(),
        "version": f.version,
        "session_id": f.session_id.as_ref().map(|s| s.as_str()),
        "interaction_id": f.interaction_id.as_ref().map(|i| i.as_str()),
        "comments": f.comments,
        "categories": f.categories,
        "user_id": f.user_id,
        "created_at": f.created_at,
        "submitted_by": f.submitted_by.as_ref().map(|p| p.as_str()),
    }))?;
    let ratings = bolt(Value::Array(
        f.ratings
            .iter()
            .map(|r| {
                json!({
                    "feedback_id": f.feedback_id.as_str(),
                    "agent_id": f.agent_id.as_str(),
                    "version": f.version,
                    "metric": r.metric,
                    "value": r.value,
                    "scale_min": r.scale_min,
                    "scale_max": r.scale_max,
                    "normalized": r.normalized,
                    "created_at": f.created_at,
                })
            })
            .collect(),
    ))?;
    Ok(FeedbackWrite {
        props,
        ratings,
        id: f.feedback_id.to_string(),
        user: f.user_id.clone(),
        key: version_key(f.agent_id.as_str(), f.version),
        session: f.session_id.as_ref().map(ToString::to_string),
        interaction: f.interaction_id.as_ref().map(ToString::to_string),
    })
}

/// Creates a feedback node with its ratings, its user and what it is about.
pub(crate) async fn write_feedback(txn: &mut Txn, w: &FeedbackWrite) -> Result<(), Failure> {
    run(
        txn,
        query(
            "CREATE (f:Feedback {feedback_id: $id}) SET f += $props
             MERGE (u:User {user_id: $user_id})
             CREATE (u)-[:PROVIDED_FEEDBACK]->(f)
             WITH f
             MATCH (v:AgentVersion {key: $key})
             CREATE (f)-[:RATES]->(v)",
        )
        .param("id", w.id.as_str())
        .param("props", w.props.clone())
        .param("user_id", w.user.as_str())
        .param("key", w.key.as_str()),
    )
    .await?;
    // Feedback is about the most specific thing named: the turn, else the session.
    let about = match (&w.interaction, &w.session) {
        (Some(i), _) => Some((
            "MATCH (f:Feedback {feedback_id: $id})
             MATCH (t:Interaction {interaction_id: $target})
             CREATE (f)-[:ABOUT]->(t)",
            i,
        )),
        (None, Some(s)) => Some((
            "MATCH (f:Feedback {feedback_id: $id})
             MATCH (t:Session {session_id: $target})
             CREATE (f)-[:ABOUT]->(t)",
            s,
        )),
        (None, None) => None,
    };
    if let Some((statement, target)) = about {
        run(
            txn,
            query(statement)
                .param("id", w.id.as_str())
                .param("target", target.as_str()),
        )
        .await?;
    }
    run(
        txn,
        query(
            "MATCH (f:Feedback {feedback_id: $id})
             UNWIND $ratings AS r
             CREATE (f)-[:HAS_RATING]->(x:Rating)
             SET x += r",
        )
        .param("id", w.id.as_str())
        .param("ratings", w.ratings.clone()),
    )
    .await
}

#[async_trait]
impl FeedbackStore for Neo4jStore {
    async fn insert_feedback(
        &self,
        f: &Feedback,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let write = feedback_write(f)?;
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing(
            "insert_feedback",
            marker.as_deref(),
            |txn| -> Work<'_, ()> {
                let (write, events) = (write.clone(), events.clone());
                Box::pin(async move {
                    write_feedback(txn, &write).await?;
                    outbox::write_events(txn, events).await
                })
            },
        )
        .await
    }

    /// One transaction for the whole list, three statements whatever its length: the events
    /// not seen before are recorded (their unique ids make a concurrent second delivery fail
    /// at commit), and their updates, folded per statistic in order, are merged into the
    /// stored statistics with the pairwise update (Chan et al.) in the statement that locks
    /// each statistic, so concurrent batches never read a stale mean.
    async fn apply_each_once(
        &self,
        events: &[(&str, &[FitnessUpdate])],
    ) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let events: Vec<(String, Vec<FitnessUpdate>)> = events
            .iter()
            .map(|(id, updates)| ((*id).to_owned(), updates.to_vec()))
            .collect();
        let mut ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let now = self.now_ms();
        self.transact("apply_each_once", |txn| -> Work<'_, Vec<bool>> {
            let (events, ids) = (events.clone(), ids.clone());
            Box::pin(async move {
                let found = rows(
                    txn,
                    query(
                        "UNWIND $ids AS id MATCH (p:ProcessedEvent {event_id: id}) \
                         RETURN p.event_id AS id",
                    )
                    .param("ids", ids),
                )
                .await?;
                let mut seen = std::collections::HashSet::new();
                for row in &found {
                    seen.insert(column::<String>(row, "id", "processed event id")?);
                }
                let mut flags = Vec::with_capacity(events.len());
                let mut fresh_ids = Vec::new();
                let mut folds: Vec<Fold> = Vec::new();
                for (id, updates) in &events {
                    let fresh = seen.insert(id.clone());
                    flags.push(fresh);
                    if !fresh {
                        continue;
                    }
                    fresh_ids.push(id.clone());
                    for u in updates {
                        let key = format!(
                            "{}:{}",
                            version_key(u.agent_id.as_str(), u.version),
                            u.metric
                        );
                        let at = match folds.iter().position(|f| f.key == key) {
                            Some(at) => at,
                            None => {
                                folds.push(Fold::new(key, u));
                                folds.len() - 1
                            }
                        };
                        folds[at].values.push(u.value);
                    }
                }
                if fresh_ids.is_empty() {
                    return Ok(flags);
                }
                let folds = bolt(Value::Array(folds.iter().map(Fold::to_json).collect()))?;
                run(
                    txn,
                    query(
                        "UNWIND $ids AS id \
                         CREATE (:ProcessedEvent {event_id: id, processed_at: $now})",
                    )
                    .param("ids", fresh_ids)
                    .param("now", now),
                )
                .await?;
                // Every value is read before anything is set: one row per statistic.
                run(
                    txn,
                    query(
                        "UNWIND $folds AS f
                         MERGE (x:Fitness {key: f.key})
                         ON CREATE SET x.agent_id = f.agent_id, x.version = f.version,
                             x.metric = f.metric, x.samples = 0, x.mean = 0.0, x.m2 = 0.0
                         WITH x, f, x.samples AS na, x.mean AS ma, x.m2 AS m2a
                         WITH x, f, na, ma, m2a, na + f.n AS total, f.mean - ma AS delta
                         SET x.samples = total,
                             x.mean = ma + delta * f.n / total,
                             x.m2 = m2a + f.m2 + delta * delta * na * f.n / total,
                             x.updated_at = $now",
                    )
                    .param("folds", folds.clone())
                    .param("now", now),
                )
                .await?;
                run(
                    txn,
                    query(
                        "UNWIND $folds AS f
                         MATCH (x:Fitness {key: f.key})
                         MATCH (v:AgentVersion {key: f.version_key})
                         MERGE (x)-[:OF]->(v)",
                    )
                    .param("folds", folds),
                )
                .await?;
                Ok(flags)
            })
        })
        .await
    }

    async fn fitness(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&Metric>,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let (and, params) = filters(version, metric.map(Metric::key).as_deref());
        let text = format!(
            "MATCH (x:Fitness) WHERE x.agent_id = $agent_id{and}
             RETURN x.version AS version, x.metric AS metric, x.samples AS n, x.mean AS mean,
                 x.m2 AS m2
             ORDER BY version, metric"
        );
        let id = agent_id.to_string();
        let found = self
            .transact("fitness", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text)
                    .param("agent_id", id.as_str())
                    .params(params.iter().map(|(k, v)| (*k, v.clone())));
                Box::pin(rows(txn, q))
            })
            .await?;
        found
            .iter()
            .map(|r| decode_stats(r, MetricColumn::Key))
            .collect()
    }

    async fn forget_applied(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let found = self
            .transact("forget_applied", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (p:ProcessedEvent) WHERE p.processed_at < $before
                     WITH p ORDER BY p.processed_at LIMIT $limit
                     DELETE p RETURN count(*) AS forgotten",
                )
                .param("before", before)
                .param("limit", i64::from(limit));
                Box::pin(rows(txn, q))
            })
            .await?;
        match found.first() {
            Some(row) => column::<i64>(row, "forgotten", "forgotten count")
                .map(|n| u64::try_from(n).unwrap_or(0)),
            None => Ok(0),
        }
    }

    async fn rating_stats(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        rating: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let (and, params) = filters(version, rating);
        // `m2` is the sum of squared differences from the mean, as `Fitness.m2` is.
        let text = format!(
            "MATCH (x:Rating) WHERE x.agent_id = $agent_id
                 AND x.created_at >= $from AND x.created_at < $to{and}
             WITH x.version AS version, x.metric AS metric, count(*) AS n,
                 avg(x.normalized) AS mean, sum(x.normalized * x.normalized) AS squares,
                 sum(x.normalized) AS total
             RETURN version, metric, n, mean, squares - total * total / n AS m2
             ORDER BY version, metric"
        );
        let id = agent_id.to_string();
        let found = self
            .transact("rating_stats", |txn| -> Work<'_, Vec<Row>> {
                let q = query(&text)
                    .param("agent_id", id.as_str())
                    .param("from", from)
                    .param("to", to)
                    .params(params.iter().map(|(k, v)| (*k, v.clone())));
                Box::pin(rows(txn, q))
            })
            .await?;
        found
            .iter()
            .map(|r| decode_stats(r, MetricColumn::RatingName))
            .collect()
    }
}

/// One statistic's new values of a batch, folded in order.
struct Fold {
    key: String,
    version_key: String,
    agent_id: String,
    version: u32,
    metric: String,
    values: Summary,
}

impl Fold {
    fn new(key: String, u: &FitnessUpdate) -> Self {
        Self {
            key,
            version_key: version_key(u.agent_id.as_str(), u.version),
            agent_id: u.agent_id.as_str().to_owned(),
            version: u.version,
            metric: u.metric.key(),
            values: Summary::default(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "version_key": self.version_key,
            "agent_id": self.agent_id,
            "version": self.version,
            "metric": self.metric,
            "n": self.values.n,
            "mean": self.values.mean,
            "m2": self.values.m2,
        })
    }
}
