//! Fitness: running statistics per agent version and metric, kept from interaction and feedback
//! events. Every event is applied at most once (its id is stored with its effect), so redelivery
//! is harmless.

use std::sync::Arc;

use async_trait::async_trait;

use std::sync::atomic::{AtomicI64, Ordering};

use crate::clock::Clock;
use crate::events::{DomainEvent, EventData, EventType, payload};
use crate::feedback::{FitnessUpdate, Metric, MetricStats};
use crate::handler::{EventHandler, EventStub, HandleError, Handled};
use crate::ports::{FeedbackStore, SessionStore};
use crate::session::Interaction;

/// Keeps fitness statistics from events.
#[derive(Clone)]
pub struct FitnessHandler {
    store: Arc<dyn FeedbackStore>,
    sessions: Option<Arc<dyn SessionStore>>,
    ledger: Option<LedgerRetention>,
}

/// How long the applied-event ledger keeps an entry, and when it was last trimmed.
#[derive(Clone)]
struct LedgerRetention {
    keep_ms: i64,
    clock: Arc<dyn Clock>,
    last_trim_ms: Arc<AtomicI64>,
}

/// The ledger is trimmed at most this often, and by at most `TRIM_BATCH` entries a time.
const TRIM_EVERY_MS: i64 = 3_600_000;
const TRIM_BATCH: u32 = 10_000;

impl FitnessHandler {
    pub fn new(store: Arc<dyn FeedbackStore>) -> Self {
        Self {
            store,
            sessions: None,
            ledger: None,
        }
    }

    /// Forgets applied events older than `keep` (at most hourly, from the events it handles):
    /// long after they can come again, their ledger entries only take space.
    #[must_use]
    pub fn with_ledger_retention(
        mut self,
        keep: std::time::Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        self.ledger = Some(LedgerRetention {
            keep_ms: i64::try_from(keep.as_millis()).unwrap_or(i64::MAX),
            clock,
            last_trim_ms: Arc::new(AtomicI64::new(i64::MIN)),
        });
        self
    }

    /// Trims the ledger when it is time; a failure is logged and tried again next time.
    async fn trim_ledger(&self) {
        let Some(ledger) = &self.ledger else { return };
        let now = ledger.clock.now_ms();
        let last = ledger.last_trim_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < TRIM_EVERY_MS
            || ledger
                .last_trim_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let before = now.saturating_sub(ledger.keep_ms);
        match self.store.forget_applied(before, TRIM_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "applied-event ledger trimmed"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot trim the applied-event ledger; trying again later");
                ledger.last_trim_ms.store(last, Ordering::Relaxed);
            }
        }
    }

    /// Reads interactions back from `sessions` when their events travelled without data.
    #[must_use]
    pub fn with_sessions(mut self, sessions: Arc<dyn SessionStore>) -> Self {
        self.sessions = Some(sessions);
        self
    }
}

#[async_trait]
impl EventHandler for FitnessHandler {
    fn name(&self) -> &'static str {
        "fitness"
    }

    fn wants(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::InteractionCompleted
                | EventType::InteractionFailed
                | EventType::FeedbackSubmitted
        )
    }

    /// An interaction event over the record size limit: the interaction, read by its id.
    async fn recall(&self, stub: &EventStub) -> Result<Option<DomainEvent>, HandleError> {
        let (Some(sessions), Some(id)) = (&self.sessions, &stub.interaction_id) else {
            return Ok(None);
        };
        let poison = |reason: String| HandleError::Poison {
            event_id: stub.id.clone(),
            event_type: stub.event_type.as_str().to_owned(),
            reason,
        };
        let interaction = match sessions.get_interaction(id).await {
            Ok(Some(interaction)) => interaction,
            Ok(None) => {
                return Err(poison(format!(
                    "it travelled without its data and interaction '{id}' is not in the store"
                )));
            }
            Err(source) if source.is_transient() => {
                return Err(HandleError::Transient {
                    event_id: stub.id.clone(),
                    source,
                });
            }
            Err(source) => return Err(poison(format!("the store cannot read it back: {source}"))),
        };
        let data = match stub.event_type {
            EventType::InteractionCompleted => {
                EventData::InteractionCompleted(payload::InteractionCompleted { interaction })
            }
            EventType::InteractionFailed => {
                EventData::InteractionFailed(payload::InteractionFailed { interaction })
            }
            _ => return Ok(None),
        };
        Ok(Some(stub.with_data(data)))
    }

    /// # Errors
    /// `Poison` for an event whose values no statistic can take (not finite, a rating outside
    /// 0..1) or that the store refuses for good; `Transient` when the store failed for now: a
    /// sick database delays events instead of dropping them.
    async fn handle(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let outcome = self.apply(event).await;
        self.trim_ledger().await;
        outcome
    }

    async fn handle_batch(&self, events: &[&DomainEvent]) -> Vec<Result<Handled, HandleError>> {
        let outcomes = self.apply_batch(events).await;
        self.trim_ledger().await;
        outcomes
    }
}

impl FitnessHandler {
    async fn apply(&self, event: &DomainEvent) -> Result<Handled, HandleError> {
        let updates = match updates_for(event) {
            Ok(None) => return Ok(Handled::Ignored),
            Ok(Some(updates)) => updates,
            Err(poison) => return Err(poison),
        };
        match self.store.apply_once(&event.id, &updates).await {
            Ok(true) => Ok(Handled::Applied),
            Ok(false) => Ok(Handled::Duplicate),
            Err(source) if source.is_transient() => Err(HandleError::transient(event, source)),
            Err(source) => Err(HandleError::poison(
                event,
                format!("the store refuses it: {source}"),
            )),
        }
    }

    /// All the batch's usable statistics in one store call (one transaction on the stores that
    /// can). Unusable events are refused on their own; if the store refuses the batch for good,
    /// its events are tried one by one, so only the one at fault is refused.
    async fn apply_batch(&self, events: &[&DomainEvent]) -> Vec<Result<Handled, HandleError>> {
        let mut updates: Vec<Result<Option<Vec<FitnessUpdate>>, HandleError>> =
            events.iter().map(|e| updates_for(e)).collect();
        let applying: Vec<(&str, &[FitnessUpdate])> = events
            .iter()
            .zip(&updates)
            .filter_map(|(e, u)| match u {
                Ok(Some(u)) => Some((e.id.as_str(), u.as_slice())),
                _ => None,
            })
            .collect();
        if applying.is_empty() {
            return updates
                .into_iter()
                .map(|u| u.map(|_| Handled::Ignored))
                .collect();
        }
        match self.store.apply_each_once(&applying).await {
            Ok(fresh) => {
                let mut fresh = fresh.into_iter();
                updates
                    .into_iter()
                    .map(|u| match u? {
                        None => Ok(Handled::Ignored),
                        Some(_) if fresh.next().unwrap_or(false) => Ok(Handled::Applied),
                        Some(_) => Ok(Handled::Duplicate),
                    })
                    .collect()
            }
            // Nothing of the batch counts as applied: from its first event with statistics on,
            // it comes again (each event is applied at most once either way).
            Err(source) if source.is_transient() => {
                let first = updates
                    .iter()
                    .position(|u| matches!(u, Ok(Some(_))))
                    .unwrap_or(0);
                let mut results: Vec<Result<Handled, HandleError>> = updates
                    .drain(..first)
                    .map(|u| u.map(|_| Handled::Ignored))
                    .collect();
                results.push(Err(HandleError::transient(events[first], source)));
                results
            }
            Err(source) => {
                tracing::warn!(error = %source, "the store refused a batch of statistics; applying its events one by one");
                crate::handler::one_by_one(self, events).await
            }
        }
    }
}

/// The largest turn latency (ms) or token count a statistic takes: far beyond any real turn,
/// far below where sums of squares stop being finite.
const MAX_TURN_MEASURE: f64 = 1e12;

/// The statistics an event feeds (`None` for events without any), or why it cannot feed them.
fn updates_for(event: &DomainEvent) -> Result<Option<Vec<FitnessUpdate>>, HandleError> {
    let Some(updates) = statistics(&event.data) else {
        return Ok(None);
    };
    for u in &updates {
        let (low, high) = match u.metric {
            Metric::Rating(_) | Metric::TurnError => (0.0, 1.0),
            Metric::TurnLatencyMs | Metric::TurnTokens => (0.0, MAX_TURN_MEASURE),
        };
        if !(u.value.is_finite() && (low..=high).contains(&u.value)) {
            return Err(HandleError::poison(
                event,
                format!(
                    "{} of version {} is {}, not a number between {low} and {high}",
                    u.metric, u.version, u.value
                ),
            ));
        }
    }
    Ok(Some(updates))
}

/// The statistics an event feeds, or `None` for events without any.
fn statistics(data: &EventData) -> Option<Vec<FitnessUpdate>> {
    match data {
        EventData::InteractionCompleted(p) => Some(turn_updates(&p.interaction, false)),
        EventData::InteractionFailed(p) => Some(turn_updates(&p.interaction, true)),
        EventData::FeedbackSubmitted(p) => Some(
            p.feedback
                .ratings
                .iter()
                .map(|r| FitnessUpdate {
                    agent_id: p.feedback.agent_id.clone(),
                    version: p.feedback.version,
                    metric: Metric::rating(&r.metric),
                    value: r.normalized,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn turn_updates(i: &Interaction, failed: bool) -> Vec<FitnessUpdate> {
    let point = |metric: Metric, value: f64| FitnessUpdate {
        agent_id: i.agent_id.clone(),
        version: i.version,
        metric,
        value,
    };
    let mut updates = vec![
        point(Metric::TurnError, if failed { 1.0 } else { 0.0 }),
        point(Metric::TurnLatencyMs, i.latency_ms as f64),
    ];
    if !failed {
        updates.push(point(
            Metric::TurnTokens,
            (i.usage.prompt_tokens + i.usage.completion_tokens) as f64,
        ));
    }
    updates
}

/// One statistic whose kept value differs from the one recomputed from history; `None` on a
/// side that has no such statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct FitnessDifference {
    pub agent_id: crate::AgentId,
    pub version: u32,
    pub metric: Metric,
    pub kept: Option<MetricStats>,
    pub rebuilt: Option<MetricStats>,
}

impl std::fmt::Display for FitnessDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |s: &Option<MetricStats>| {
            s.as_ref().map_or("none".to_owned(), |s| {
                format!("n={} mean={:.6} var={:.6}", s.count, s.mean, s.variance)
            })
        };
        write!(
            f,
            "{} v{} {}: kept {}, from history {}",
            self.agent_id,
            self.version,
            self.metric.key(),
            side(&self.kept),
            side(&self.rebuilt)
        )
    }
}

/// What a rebuild found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitnessAudit {
    pub agents: usize,
    /// Statistics recomputed (each agent version and metric once).
    pub statistics: usize,
    pub differences: Vec<FitnessDifference>,
}

/// Recomputes every fitness statistic from what is stored (each interaction's turn statistics,
/// each feedback rating) and compares it with the statistics the events maintained. Pages
/// through the store: memory grows with the number of statistics of one agent, not with the
/// history.
///
/// # Errors
/// The store's, when it cannot be read.
pub async fn audit_fitness(
    agents: &dyn crate::ports::AgentStore,
    sessions: &dyn SessionStore,
    feedback: &dyn FeedbackStore,
) -> Result<FitnessAudit, crate::StoreError> {
    use std::collections::BTreeMap;

    use crate::page::{Cursor, MAX_PAGE_SIZE, PageRequest};
    use crate::ports::{AgentFilter, StatusFilter};

    let mut audit = FitnessAudit::default();
    let filter = AgentFilter {
        status: StatusFilter::Any,
        ..AgentFilter::default()
    };
    let mut after: Option<Cursor> = None;
    loop {
        let page = PageRequest {
            after: after.clone(),
            limit: MAX_PAGE_SIZE,
        };
        let mut batch = agents.list_agents(&filter, &page).await?;
        let more = batch.len() > MAX_PAGE_SIZE as usize;
        batch.truncate(MAX_PAGE_SIZE as usize);
        for agent in &batch {
            audit.agents += 1;
            let mut rebuilt: BTreeMap<(u32, Metric), crate::stats::Summary> = BTreeMap::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = PageRequest {
                    after: cursor.clone(),
                    limit: MAX_PAGE_SIZE,
                };
                let mut turns = sessions.list_interactions(&agent.agent_id, &page).await?;
                let more = turns.len() > MAX_PAGE_SIZE as usize;
                turns.truncate(MAX_PAGE_SIZE as usize);
                for turn in &turns {
                    let failed = turn.status == crate::session::InteractionStatus::Failed;
                    for u in turn_updates(turn, failed) {
                        rebuilt
                            .entry((u.version, u.metric))
                            .or_default()
                            .push(u.value);
                    }
                }
                match turns.last() {
                    Some(last) if more => {
                        cursor = Some(Cursor::after(last.interaction_id.as_str()))
                    }
                    _ => break,
                }
            }
            let mut rebuilt: BTreeMap<(u32, Metric), MetricStats> = rebuilt
                .into_iter()
                .map(|((version, metric), s)| {
                    let stats = MetricStats {
                        version,
                        metric: metric.clone(),
                        count: s.n,
                        mean: s.mean,
                        variance: s.variance(),
                    };
                    ((version, metric), stats)
                })
                .collect();
            // Ratings are aggregated by the store straight from the stored feedback.
            for s in feedback
                .rating_stats(&agent.agent_id, None, None, i64::MIN, i64::MAX)
                .await?
            {
                rebuilt.insert((s.version, s.metric.clone()), s);
            }
            let mut kept: BTreeMap<(u32, Metric), MetricStats> = feedback
                .fitness(&agent.agent_id, None, None)
                .await?
                .into_iter()
                .map(|s| ((s.version, s.metric.clone()), s))
                .collect();
            audit.statistics += rebuilt.len();
            for (key, fresh) in rebuilt {
                let old = kept.remove(&key);
                if !old.as_ref().is_some_and(|old| same(old, &fresh)) {
                    audit.differences.push(FitnessDifference {
                        agent_id: agent.agent_id.clone(),
                        version: key.0,
                        metric: key.1,
                        kept: old,
                        rebuilt: Some(fresh),
                    });
                }
            }
            for ((version, metric), old) in kept {
                audit.differences.push(FitnessDifference {
                    agent_id: agent.agent_id.clone(),
                    version,
                    metric,
                    kept: Some(old),
                    rebuilt: None,
                });
            }
        }
        match batch.last() {
            Some(last) if more => after = Some(Cursor::after(last.agent_id.as_str())),
            _ => return Ok(audit),
        }
    }
}

/// Equal counts, and means and variances equal up to rounding (the incremental statistics
/// fold events in another order than the history is read).
fn same(a: &MetricStats, b: &MetricStats) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
    a.count == b.count && close(a.mean, b.mean) && close(a.variance, b.variance)
}
