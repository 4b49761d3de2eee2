//! Feedback, fitness statistics and processed-event records in the embedded store.

use aop_core::feedback::{Feedback, FeedbackStore, FitnessUpdate, MetricStats, sample_variance};
use aop_core::{AgentId, Clock, DomainEvent, StoreError, SystemClock};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::error::map_err;
use crate::{SqliteStore, rows};

#[async_trait]
impl FeedbackStore for SqliteStore {
    async fn insert_feedback(
        &self,
        f: &Feedback,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let f = f.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let categories = serde_json::to_string(&f.categories)
                .map_err(|e| StoreError::permanent("cannot encode categories", e))?;
            tx.execute(
                "INSERT INTO feedback (feedback_id, agent_id, version, session_id, interaction_id, \
                 comments, categories, user_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    f.feedback_id.as_str(),
                    f.agent_id.as_str(),
                    f.version,
                    f.session_id.as_ref().map(|s| s.as_str()),
                    f.interaction_id.as_ref().map(|i| i.as_str()),
                    f.comments,
                    categories,
                    f.user_id,
                    f.created_at,
                ],
            )
            .map_err(map_err)?;
            for r in &f.ratings {
                tx.execute(
                    "INSERT INTO feedback_ratings (feedback_id, agent_id, version, metric, value, \
                     scale_min, scale_max, normalized, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        f.feedback_id.as_str(),
                        f.agent_id.as_str(),
                        f.version,
                        r.metric,
                        r.value,
                        r.scale_min,
                        r.scale_max,
                        r.normalized,
                        f.created_at,
                    ],
                )
                .map_err(map_err)?;
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn apply_once(
        &self,
        event_id: &str,
        updates: &[FitnessUpdate],
    ) -> Result<bool, StoreError> {
        let event_id = event_id.to_owned();
        let updates = updates.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let now = SystemClock.now_ms();
            let fresh = tx
                .execute(
                    "INSERT OR IGNORE INTO processed_events (event_id, processed_at) VALUES (?1, ?2)",
                    params![event_id, now],
                )
                .map_err(map_err)?;
            if fresh == 0 {
                return Ok(false);
            }
            for u in &updates {
                let current: Option<(i64, f64, f64)> = tx
                    .query_row(
                        "SELECT count, mean, m2 FROM fitness \
                         WHERE agent_id = ?1 AND version = ?2 AND metric = ?3",
                        params![u.agent_id.as_str(), u.version, u.metric],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(map_err)?;
                // Welford's update: numerically stable running mean and variance.
                let (count, mean, m2) = current.unwrap_or((0, 0.0, 0.0));
                let count = count + 1;
                let delta = u.value - mean;
                let mean = mean + delta / count as f64;
                let m2 = m2 + delta * (u.value - mean);
                tx.execute(
                    "INSERT INTO fitness (agent_id, version, metric, count, mean, m2, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (agent_id, version, metric) DO UPDATE SET \
                     count = excluded.count, mean = excluded.mean, m2 = excluded.m2, \
                     updated_at = excluded.updated_at",
                    params![u.agent_id.as_str(), u.version, u.metric, count, mean, m2, now],
                )
                .map_err(map_err)?;
            }
            tx.commit().map_err(map_err)?;
            Ok(true)
        })
        .await
    }

    async fn fitness(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&str>,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let query = StatsQuery::new(
            "SELECT version, metric, count, mean, m2 FROM fitness WHERE agent_id = ?",
            vec![agent_id.to_string()],
        )
        .filtered(version, metric, " ORDER BY version, metric");
        self.with(move |conn| query.run(conn, "")).await
    }

    async fn rating_stats(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricStats>, StoreError> {
        // The fourth column is the running sum of squared differences, as `fitness.m2` is.
        let query = StatsQuery::new(
            "SELECT version, metric, count(*), avg(normalized), \
             sum(normalized * normalized) - sum(normalized) * sum(normalized) / count(*) \
             FROM feedback_ratings WHERE agent_id = ? AND created_at >= ? AND created_at < ?",
            vec![agent_id.to_string(), from.to_string(), to.to_string()],
        )
        .filtered(
            version,
            metric,
            " GROUP BY version, metric ORDER BY version, metric",
        );
        self.with(move |conn| query.run(conn, "feedback.")).await
    }
}

/// A statistics query: `version, metric, count, mean, m2` rows, optionally filtered.
struct StatsQuery {
    sql: String,
    args: Vec<String>,
}

impl StatsQuery {
    fn new(select: &str, args: Vec<String>) -> Self {
        Self {
            sql: select.to_owned(),
            args,
        }
    }

    fn filtered(mut self, version: Option<u32>, metric: Option<&str>, tail: &str) -> Self {
        if let Some(v) = version {
            self.sql.push_str(" AND version = ?");
            self.args.push(v.to_string());
        }
        if let Some(m) = metric {
            self.sql.push_str(" AND metric = ?");
            self.args.push(m.to_owned());
        }
        self.sql.push_str(tail);
        self
    }

    /// Runs the query; `prefix` goes before each metric name.
    fn run(
        &self,
        conn: &mut rusqlite::Connection,
        prefix: &str,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let mut stmt = conn.prepare_cached(&self.sql).map_err(map_err)?;
        stmt.query_map(params_from_iter(self.args.iter()), |r| {
            let count = u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0);
            Ok(MetricStats {
                version: r.get(0)?,
                metric: format!("{prefix}{}", r.get::<_, String>(1)?),
                count,
                mean: r.get(3)?,
                variance: sample_variance(count, r.get(4)?),
            })
        })
        .map_err(map_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)
    }
}
