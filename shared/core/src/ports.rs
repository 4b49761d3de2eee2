//! Ports: what the core needs from the outside world (stores, the outbox, event sinks). Adapters
//! live in their own crates. The model port is [`crate::llm::ChatModel`] and the clock
//! [`crate::clock::Clock`].

use async_trait::async_trait;
use serde::Serialize;

use crate::agent::{Agent, AgentId, AgentStatus, AgentVersion, Alias};
use crate::deployment::{Canary, CanaryId, Deployment, TurnSample};
pub use crate::error::StoreError;
use crate::events::DomainEvent;
use crate::evolution::{Candidate, EvalCase, EvalCaseId, Evolution, EvolutionId, Spend};
use crate::feedback::{Feedback, FitnessUpdate, Metric, MetricStats};
use crate::page::PageRequest;
use crate::proposal::{Proposal, ProposalId, ProposalStatus};

/// Which agents a listing returns, by status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusFilter {
    #[default]
    Active,
    Archived,
    Any,
}

/// Filters of `list_agents`, already validated. All given filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFilter {
    pub domain: Option<String>,
    /// The latest version has a capability of this name.
    pub capability: Option<String>,
    pub status: StatusFilter,
    /// Case-insensitive substring of the name or the description.
    pub text: Option<String>,
}

impl AgentFilter {
    /// Whether an agent (with its latest version) passes the filter. Adapters that cannot
    /// express a filter in their query language can use this; it also states the semantics.
    pub fn matches(&self, agent: &Agent, latest: &AgentVersion) -> bool {
        let status_ok = match self.status {
            StatusFilter::Active => agent.status == AgentStatus::Active,
            StatusFilter::Archived => agent.status == AgentStatus::Archived,
            StatusFilter::Any => true,
        };
        let domain_ok = self.domain.as_ref().is_none_or(|d| &agent.domain == d);
        let cap_ok = self
            .capability
            .as_ref()
            .is_none_or(|c| latest.capabilities.iter().any(|k| &k.name == c));
        let text_ok = self.text.as_ref().is_none_or(|t| {
            let t = t.to_lowercase();
            agent.name.to_lowercase().contains(&t) || agent.description.to_lowercase().contains(&t)
        });
        status_ok && domain_ok && cap_ok && text_ok
    }
}

/// How the store is doing, for `/health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreHealth {
    /// `sqlite`, `neo4j`, ...
    pub kind: &'static str,
    pub up: bool,
    /// Where it is (a path or a URI without credentials) or why it is down.
    pub detail: String,
}

/// Every write method of the stores takes the events it causes and writes them into the outbox
/// in the same transaction: a change and its events commit together or not at all.
///
/// Persistence of agents and their versions. Every method is atomic.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Stores a new agent with its first version.
    ///
    /// # Errors
    /// `Conflict` when the agent id exists.
    async fn insert_agent(
        &self,
        agent: &Agent,
        first: &AgentVersion,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Stores `version` and the agent as it is after it (latest version, aliases, updated_at),
    /// in one transaction.
    ///
    /// # Errors
    /// `Conflict` unless the stored latest version is `version.version - 1` and the stored
    /// aliases are `previous_aliases` (another writer got there first: a version, or an alias
    /// move); nothing is written then.
    async fn insert_version(
        &self,
        agent: &Agent,
        version: &AgentVersion,
        previous_aliases: &[Alias],
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Sets an agent's status and `updated_at`.
    ///
    /// # Errors
    /// `Permanent` when the agent does not exist.
    async fn set_status(
        &self,
        agent_id: &AgentId,
        status: AgentStatus,
        updated_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    async fn get_agent(&self, agent_id: &AgentId) -> Result<Option<Agent>, StoreError>;

    async fn get_version(
        &self,
        agent_id: &AgentId,
        version: u32,
    ) -> Result<Option<AgentVersion>, StoreError>;

    /// Agents passing `filter`, ordered by agent id, starting after the cursor's agent id, at
    /// most `page.limit + 1` of them (the extra one tells the caller there is a next page).
    async fn list_agents(
        &self,
        filter: &AgentFilter,
        page: &PageRequest,
    ) -> Result<Vec<Agent>, StoreError>;

    /// Versions of an agent in ascending order, starting after the cursor's version number, at
    /// most `page.limit + 1` of them.
    async fn list_versions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<AgentVersion>, StoreError>;

    /// Checks the store can serve requests.
    async fn health(&self) -> StoreHealth;
}

/// Persistence of sessions, their messages and interactions. Every method is atomic.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// # Errors
    /// `Conflict` when the session id exists.
    async fn insert_session(
        &self,
        session: &crate::session::Session,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    async fn get_session(
        &self,
        session_id: &crate::session::SessionId,
    ) -> Result<Option<crate::session::Session>, StoreError>;

    /// Marks a session ended.
    ///
    /// # Errors
    /// `Conflict` when it is not active.
    async fn end_session(
        &self,
        session_id: &crate::session::SessionId,
        summary: Option<&str>,
        ended_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Records an interaction and the session messages it produced, in one transaction.
    ///
    /// # Errors
    /// `Conflict` when a message number is taken (a concurrent turn in the same session) or the
    /// session is no longer active; nothing is written then.
    async fn record_turn(
        &self,
        interaction: &crate::session::Interaction,
        messages: &[crate::session::Message],
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Messages of a session in order, after the cursor's message number, at most
    /// `page.limit + 1`.
    async fn list_messages(
        &self,
        session_id: &crate::session::SessionId,
        page: &PageRequest,
    ) -> Result<Vec<crate::session::Message>, StoreError>;

    /// The last `limit` messages of a session, oldest first.
    async fn recent_messages(
        &self,
        session_id: &crate::session::SessionId,
        limit: u32,
    ) -> Result<Vec<crate::session::Message>, StoreError>;

    async fn get_interaction(
        &self,
        interaction_id: &crate::session::InteractionId,
    ) -> Result<Option<crate::session::Interaction>, StoreError>;

    /// US dollars recorded on the turns created at `since` (epoch ms) or later: one agent's,
    /// or those one caller asked for. Turns without a price count as nothing.
    async fn spent_since(
        &self,
        spender: crate::spend::Spender<'_>,
        since: i64,
    ) -> Result<f64, StoreError>;

    /// Interactions of an agent, oldest first, after the cursor's interaction id, at most
    /// `page.limit + 1`.
    async fn list_interactions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<crate::session::Interaction>, StoreError>;
}

/// Persistence of feedback and fitness. Every method is atomic.
#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Stores feedback with its events.
    async fn insert_feedback(
        &self,
        feedback: &Feedback,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Folds each event's updates into the running statistics and remembers its id, for
    /// several events in order and in one transaction. One flag per event: `false`, changing
    /// nothing, for an event applied before (also earlier in the same call).
    async fn apply_each_once(
        &self,
        events: &[(&str, &[FitnessUpdate])],
    ) -> Result<Vec<bool>, StoreError>;

    /// [`FeedbackStore::apply_each_once`] for one event.
    async fn apply_once(
        &self,
        event_id: &str,
        updates: &[FitnessUpdate],
    ) -> Result<bool, StoreError> {
        let fresh = self.apply_each_once(&[(event_id, updates)]).await?;
        Ok(fresh.first().copied().unwrap_or(false))
    }

    /// Forgets the applied-event ledger's entries recorded before `before` (epoch ms), at most
    /// `limit` of them, oldest first; returns how many. An event older than the topics'
    /// retention cannot come again, so its entry guards nothing any more.
    async fn forget_applied(&self, before: i64, limit: u32) -> Result<u64, StoreError>;

    /// Running statistics, filtered.
    async fn fitness(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        metric: Option<&Metric>,
    ) -> Result<Vec<MetricStats>, StoreError>;

    /// Statistics of the ratings given in `[from, to)`, as [`Metric::Rating`]s, optionally of
    /// one rating name only.
    async fn rating_stats(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
        rating: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<MetricStats>, StoreError>;
}

/// A move of one alias, written with its deployment record.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasMove {
    pub agent_id: AgentId,
    /// The alias as it was read before the move (`None`: it did not exist); the move happens
    /// only if it is still so.
    pub expected: Option<Alias>,
    pub alias: Alias,
    pub deployment: Deployment,
}

/// A canary to write with an alias move or on its own, compare-and-set on its revision.
#[derive(Debug, Clone, Copy)]
pub struct CanaryWrite<'a> {
    pub canary: &'a Canary,
    /// The revision it was read at; `None` for a new canary.
    pub expected_revision: Option<u64>,
}

/// Persistence of deployments and canaries, and the windowed statistics a canary is decided
/// on. Every method is atomic.
#[async_trait]
pub trait DeploymentStore: Send + Sync {
    /// Moves an alias, records the deployment, writes the canary if given and the events, in
    /// one transaction. The agent's `updated_at` becomes the deployment's time.
    ///
    /// # Errors
    /// `Conflict` when the alias is no longer `expected`, or the canary changed since it was
    /// read (or exists, for a new one); nothing is written then.
    async fn move_alias(
        &self,
        change: &AliasMove,
        canary: Option<CanaryWrite<'_>>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Writes a canary's state without moving its alias.
    ///
    /// # Errors
    /// `Conflict` when it changed since it was read.
    async fn save_canary(
        &self,
        canary: CanaryWrite<'_>,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    async fn canary(&self, canary_id: &CanaryId) -> Result<Option<Canary>, StoreError>;

    /// The newest canary of an alias, whatever its state.
    async fn latest_canary(
        &self,
        agent_id: &AgentId,
        alias: &str,
    ) -> Result<Option<Canary>, StoreError>;

    /// Every canary the controller still watches (running or baking), oldest first.
    async fn watched_canaries(&self) -> Result<Vec<Canary>, StoreError>;

    /// Deployments of an agent, oldest first, after the cursor's deployment id, at most
    /// `page.limit + 1`.
    async fn list_deployments(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<Deployment>, StoreError>;

    /// The agent's own turns (not delegated ones) of sessions started at or after `since`, and
    /// of one-shot turns made at or after it, with each turn's mean rating per metric.
    async fn turns_since(
        &self,
        agent_id: &AgentId,
        since: i64,
    ) -> Result<Vec<TurnSample>, StoreError>;

    /// How many sessions of `alias` started at or after `since`, per version.
    async fn sessions_since(
        &self,
        agent_id: &AgentId,
        alias: &str,
        since: i64,
    ) -> Result<Vec<(u32, u64)>, StoreError>;
}

/// Persistence of proposals and their reviews. Every method is atomic.
#[async_trait]
pub trait ProposalStore: Send + Sync {
    async fn insert_proposal(
        &self,
        proposal: &Proposal,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Writes a proposal's new state (reviews, status, version).
    ///
    /// # Errors
    /// `Conflict` when its revision is no longer `expected_revision`.
    async fn save_proposal(
        &self,
        proposal: &Proposal,
        expected_revision: u64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    async fn proposal(&self, proposal_id: &ProposalId) -> Result<Option<Proposal>, StoreError>;

    /// Proposals, optionally of one agent and in one state, oldest first, after the cursor's
    /// proposal id, at most `page.limit + 1`.
    async fn list_proposals(
        &self,
        agent_id: Option<&AgentId>,
        status: Option<ProposalStatus>,
        page: &PageRequest,
    ) -> Result<Vec<Proposal>, StoreError>;

    /// Pending proposals that expire at or before `now`.
    async fn expiring_proposals(&self, now: i64) -> Result<Vec<Proposal>, StoreError>;
}

/// A recorded turn with the feedback given on it: what an evolution replays.
#[derive(Debug, Clone, PartialEq)]
pub struct RatedTurn {
    pub interaction_id: crate::session::InteractionId,
    pub version: u32,
    pub input: String,
    pub output: Option<String>,
    pub failed: bool,
    /// Mean normalised rating per metric.
    pub ratings: Vec<(String, f64)>,
    pub comments: Vec<String>,
    pub created_at: i64,
}

/// One paid model result an evolution keeps, so the same call is never paid twice.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub key: String,
    /// The iteration that paid for it.
    pub iteration: u32,
    pub spend: Spend,
    pub value: serde_json::Value,
}

/// Persistence of evaluation cases and evolution runs. Every method is atomic.
#[async_trait]
pub trait EvolutionStore: Send + Sync {
    async fn insert_eval_cases(&self, cases: &[EvalCase]) -> Result<(), StoreError>;

    /// An agent's cases, oldest first, after the cursor's case id, at most `page.limit + 1`.
    async fn list_eval_cases(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<EvalCase>, StoreError>;

    /// Removes a case; `false` when the agent has no such case.
    async fn remove_eval_case(
        &self,
        agent_id: &AgentId,
        case_id: &EvalCaseId,
    ) -> Result<bool, StoreError>;

    /// The agent's own turns made at or after `since` that have feedback, newest first, at
    /// most `limit`.
    async fn rated_turns(
        &self,
        agent_id: &AgentId,
        since: i64,
        limit: usize,
    ) -> Result<Vec<RatedTurn>, StoreError>;

    /// Stores a new run with its events.
    ///
    /// # Errors
    /// `Conflict` when the agent has a running evolution already.
    async fn insert_evolution(
        &self,
        run: &Evolution,
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    /// Writes a run's new state, the candidates it made and its events.
    ///
    /// # Errors
    /// `Conflict` when its revision is no longer `expected_revision`; nothing is written then.
    async fn save_evolution(
        &self,
        run: &Evolution,
        expected_revision: u64,
        candidates: &[Candidate],
        events: &[DomainEvent],
    ) -> Result<(), StoreError>;

    async fn evolution(&self, evolution_id: &EvolutionId) -> Result<Option<Evolution>, StoreError>;

    /// Every running run.
    async fn running_evolutions(&self) -> Result<Vec<Evolution>, StoreError>;

    /// Runs, newest first, optionally of one agent, after the cursor's id, at most
    /// `page.limit + 1`.
    async fn list_evolutions(
        &self,
        agent_id: Option<&AgentId>,
        page: &PageRequest,
    ) -> Result<Vec<Evolution>, StoreError>;

    /// Every candidate of a run, in the order they were made.
    async fn candidates(&self, evolution_id: &EvolutionId) -> Result<Vec<Candidate>, StoreError>;

    /// The cached results among `keys`.
    async fn cached(
        &self,
        evolution_id: &EvolutionId,
        keys: &[String],
    ) -> Result<Vec<CacheEntry>, StoreError>;

    /// Keeps paid results; a key kept before stays as it was.
    async fn cache(
        &self,
        evolution_id: &EvolutionId,
        entries: &[CacheEntry],
    ) -> Result<(), StoreError>;

    /// What the cached results paid for in `iteration` cost, together.
    async fn spent_in(
        &self,
        evolution_id: &EvolutionId,
        iteration: u32,
    ) -> Result<Spend, StoreError>;
}

/// The transactional outbox: events written with their changes, waiting to be published.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Unpublished events, oldest first.
    async fn pending(&self, limit: u32) -> Result<Vec<DomainEvent>, StoreError>;

    /// Removes published events from the outbox.
    async fn mark_published(&self, event_ids: &[String]) -> Result<(), StoreError>;

    /// How many events wait to be published.
    async fn backlog(&self) -> Result<u64, StoreError>;
}

/// Wakes whatever publishes the outbox, right after a commit that wrote events.
pub trait OutboxSignal: Send + Sync {
    fn notify(&self);
}

/// No one to wake: the relay's schedule picks the events up.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSignal;

impl OutboxSignal for NoSignal {
    fn notify(&self) {}
}

/// What a delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// One flag per event, in order: whether the sink has it and may forget it. An event
    /// counts only when every earlier event of its agent in the batch was delivered too, so
    /// sending the rest again keeps each agent's order.
    pub delivered: Vec<bool>,
    /// Why some were not delivered.
    pub error: Option<String>,
}

impl Delivery {
    /// The first `done` of `total` events delivered.
    pub fn prefix(total: usize, done: usize, error: Option<String>) -> Self {
        Self {
            delivered: (0..total).map(|i| i < done).collect(),
            error,
        }
    }

    /// Every event delivered, as far as each agent's earlier events allow: `outcomes` says
    /// which arrived, `subjects` whose event each is.
    pub fn per_agent(subjects: &[&AgentId], outcomes: &[bool], error: Option<String>) -> Self {
        let mut blocked: std::collections::HashSet<&AgentId> = std::collections::HashSet::new();
        let delivered = subjects
            .iter()
            .zip(outcomes)
            .map(|(subject, arrived)| {
                if *arrived && !blocked.contains(subject) {
                    true
                } else {
                    blocked.insert(*subject);
                    false
                }
            })
            .collect();
        Self { delivered, error }
    }

    pub fn count(&self) -> usize {
        self.delivered.iter().filter(|d| **d).count()
    }
}

/// Where the outbox relay hands events: a broker, or the event processor in process.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Delivers events, each agent's in order.
    async fn deliver(&self, events: &[DomainEvent]) -> Delivery;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_counts_only_after_every_earlier_event_of_its_agent() {
        let (a, b, c) = (
            AgentId::try_from("agt_a".to_owned()).unwrap(),
            AgentId::try_from("agt_b".to_owned()).unwrap(),
            AgentId::try_from("agt_c".to_owned()).unwrap(),
        );
        // a1 fails; b1 and a2 arrive; b2 fails; c1 arrives.
        let d = Delivery::per_agent(
            &[&a, &b, &a, &b, &c],
            &[false, true, true, false, true],
            Some("timed out".into()),
        );
        assert_eq!(d.delivered, [false, true, false, false, true]);
        assert_eq!(d.count(), 2);
        assert_eq!(Delivery::prefix(3, 1, None).delivered, [true, false, false]);
    }
}
