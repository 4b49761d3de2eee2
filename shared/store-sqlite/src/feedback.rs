//! Feedback, fitness statistics and processed-event records in the embedded store.

use aop_core::feedback::{Feedback, FitnessUpdate, Metric, MetricStats, sample_variance};
use aop_core::stats::Summary;
use aop_core::{AgentId, DomainEvent, FeedbackStore, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params, params_from_iter};

use crate::error::map_err;
use crate::{SqliteStore, rows};

/// Inserts a feedback row and its ratings.
pub(crate) fn write_feedback(conn: &rusqlite::Connection, f: &Feedback) -> Result<(), StoreError> {
    let categories = serde_json::to_string(&f.categories)
        .map_err(|e| StoreError::permanent("cannot encode categories", e))?;
    conn.execute(
        "INSERT INTO feedback (feedback_id, agent_id, version, session_id, interaction_id, \
         comments, categories, user_id, created_at, submitted_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
            f.submitted_by.as_ref().map(|p| p.as_str()),
        ],
    )
    .map_err(map_err)?;
    for r in &f.ratings {
        conn.execute(
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
    Ok(())
}

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
            write_feedback(&tx, &f)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    /// One transaction for the whole list: a commit (a WAL write) per event was most of the
    /// cost of an event.
    async fn apply_each_once(
        &self,
        events: &[(&str, &[FitnessUpdate])],
    ) -> Result<Vec<bool>, StoreError> {
        let events: Vec<(String, Vec<FitnessUpdate>)> = events
            .iter()
            .map(|(id, updates)| ((*id).to_owned(), updates.to_vec()))
            .collect();
        let now = self.now_ms();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let fresh = events
                .iter()
                .map(|(id, updates)| apply_in(&tx, id, updates, now))
                .collect::<Result<Vec<bool>, StoreError>>()?;
            tx.commit().map_err(map_err)?;
            Ok(fresh)
        })
        .await
    }

    async fn fitness(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&Metric>,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let query = StatsQuery::new(
            "SELECT version, metric, count, mean, m2 FROM fitness WHERE agent_id = ?",
            vec![agent_id.to_string()],
        )
        .filtered(
            version,
            metric.map(Metric::key).as_deref(),
            " ORDER BY version, metric",
        );
        self.with(move |conn| query.run(conn, MetricColumn::Key))
            .await
    }

    async fn forget_applied(&self, before: i64, limit: u32) -> Result<u64, StoreError> {
        self.with(move |conn| {
            conn.prepare_cached(
                "DELETE FROM processed_events WHERE event_id IN (SELECT event_id FROM \
                 processed_events WHERE processed_at < ?1 ORDER BY processed_at LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![before, limit]))
            .map(|n| n as u64)
            .map_err(map_err)
        })
        .await
    }

    async fn rating_stats(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        rating: Option<&str>,
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
            rating,
            " GROUP BY version, metric ORDER BY version, metric",
        );
        self.with(move |conn| query.run(conn, MetricColumn::RatingName))
            .await
    }
}

/// What the `metric` column of a statistics query holds.
#[derive(Clone, Copy)]
enum MetricColumn {
    /// A metric key, as `fitness` stores it.
    Key,
    /// The name of a rating, as `feedback_ratings` stores it.
    RatingName,
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

    fn run(
        &self,
        conn: &mut rusqlite::Connection,
        column: MetricColumn,
    ) -> Result<Vec<MetricStats>, StoreError> {
        let mut stmt = conn.prepare_cached(&self.sql).map_err(map_err)?;
        let raws = stmt
            .query_map(params_from_iter(self.args.iter()), |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?,
                ))
            })
            .map_err(map_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?;
        raws.into_iter()
            .map(|(version, name, count, mean, m2)| {
                let metric = match column {
                    MetricColumn::Key => {
                        Metric::parse(&name).ok_or_else(|| StoreError::Permanent {
                            message: format!("stored metric '{name}' is unknown"),
                            source: None,
                        })?
                    }
                    MetricColumn::RatingName => Metric::rating(name),
                };
                let count = u64::try_from(count).unwrap_or(0);
                Ok(MetricStats {
                    version,
                    metric,
                    count,
                    mean,
                    variance: sample_variance(count, m2),
                })
            })
            .collect()
    }
}

/// Folds `updates` into the statistics and records `event_id` inside `tx`; `false`, changing
/// nothing, when the event was recorded before.
fn apply_in(
    tx: &rusqlite::Transaction<'_>,
    event_id: &str,
    updates: &[FitnessUpdate],
    now: i64,
) -> Result<bool, StoreError> {
    // Prepared once per connection and reused (an event is three short statements).
    let fresh = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO processed_events (event_id, processed_at) VALUES (?1, ?2)",
        )
        .and_then(|mut s| s.execute(params![event_id, now]))
        .map_err(map_err)?;
    if fresh == 0 {
        return Ok(false);
    }
    let mut read = tx
        .prepare_cached(
            "SELECT count, mean, m2 FROM fitness \
             WHERE agent_id = ?1 AND version = ?2 AND metric = ?3",
        )
        .map_err(map_err)?;
    let mut write = tx
        .prepare_cached(
            "INSERT INTO fitness (agent_id, version, metric, count, mean, m2, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (agent_id, version, metric) DO UPDATE SET \
             count = excluded.count, mean = excluded.mean, m2 = excluded.m2, \
             updated_at = excluded.updated_at",
        )
        .map_err(map_err)?;
    for u in updates {
        let mut stats = read
            .query_row(
                params![u.agent_id.as_str(), u.version, u.metric.key()],
                |r| {
                    Ok(Summary {
                        n: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        mean: r.get(1)?,
                        m2: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(map_err)?
            .unwrap_or_default();
        stats.push(u.value);
        write
            .execute(params![
                u.agent_id.as_str(),
                u.version,
                u.metric.key(),
                i64::try_from(stats.n).unwrap_or(i64::MAX),
                stats.mean,
                stats.m2,
                now
            ])
            .map_err(map_err)?;
    }
    Ok(true)
}
