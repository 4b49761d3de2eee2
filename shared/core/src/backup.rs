//! What a backup holds and the two ports that move it: a store reads its records out
//! ([`BackupSource`]) and loads them back as they were ([`RestoreTarget`]).
//!
//! Records are domain-shaped, not table- or node-shaped, so an archive written from one store
//! loads into the other. Kinds come in an order where each kind refers only to kinds before it
//! (an agent's aliases point at its versions, so versions come first), which lets a store link
//! what it loads as it goes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentId, AgentVersion};
use crate::deployment::{Canary, Deployment};
use crate::error::StoreError;
use crate::evolution::{Candidate, EvalCase, Evolution, EvolutionId, Spend};
use crate::feedback::{Feedback, Metric};
use crate::proposal::Proposal;
use crate::session::{Interaction, Message, Session};

/// One kind of record, in archive order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Version,
    Agent,
    Session,
    Interaction,
    Message,
    Feedback,
    Fitness,
    Deployment,
    Canary,
    Proposal,
    EvalCase,
    Evolution,
    Candidate,
    Cached,
    Outbox,
    Applied,
    Quarantined,
}

impl Kind {
    /// Every kind, in the order an archive holds them.
    pub const ALL: [Self; 17] = [
        Self::Version,
        Self::Agent,
        Self::Session,
        Self::Interaction,
        Self::Message,
        Self::Feedback,
        Self::Fitness,
        Self::Deployment,
        Self::Canary,
        Self::Proposal,
        Self::EvalCase,
        Self::Evolution,
        Self::Candidate,
        Self::Cached,
        Self::Outbox,
        Self::Applied,
        Self::Quarantined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Agent => "agent",
            Self::Session => "session",
            Self::Interaction => "interaction",
            Self::Message => "message",
            Self::Feedback => "feedback",
            Self::Fitness => "fitness",
            Self::Deployment => "deployment",
            Self::Canary => "canary",
            Self::Proposal => "proposal",
            Self::EvalCase => "eval_case",
            Self::Evolution => "evolution",
            Self::Candidate => "candidate",
            Self::Cached => "cached",
            Self::Outbox => "outbox",
            Self::Applied => "applied",
            Self::Quarantined => "quarantined",
        }
    }

    /// What `n` records of the kind are, for messages: `1 agent`, `2 agents`.
    pub fn noun(self, n: u64) -> &'static str {
        if n == 1 {
            self.singular()
        } else {
            self.plural()
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Self::Version => "agent version",
            Self::Agent => "agent",
            Self::Session => "session",
            Self::Interaction => "interaction",
            Self::Message => "message",
            Self::Feedback => "feedback record",
            Self::Fitness => "fitness statistic",
            Self::Deployment => "deployment",
            Self::Canary => "canary",
            Self::Proposal => "proposal",
            Self::EvalCase => "evaluation case",
            Self::Evolution => "evolution",
            Self::Candidate => "evolution candidate",
            Self::Cached => "cached evaluation",
            Self::Outbox => "unpublished event",
            Self::Applied => "applied-event ledger entry",
            Self::Quarantined => "quarantined event",
        }
    }

    /// What records of the kind are, in plural, for messages.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Version => "agent versions",
            Self::Agent => "agents",
            Self::Session => "sessions",
            Self::Interaction => "interactions",
            Self::Message => "messages",
            Self::Feedback => "feedback records",
            Self::Fitness => "fitness statistics",
            Self::Deployment => "deployments",
            Self::Canary => "canaries",
            Self::Proposal => "proposals",
            Self::EvalCase => "evaluation cases",
            Self::Evolution => "evolutions",
            Self::Candidate => "evolution candidates",
            Self::Cached => "cached evaluations",
            Self::Outbox => "unpublished events",
            Self::Applied => "applied-event ledger entries",
            Self::Quarantined => "quarantined events",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The running statistics of one metric of one version, as kept (the sum of squared
/// differences, not the variance derived from it, so nothing is lost to rounding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitnessRecord {
    pub agent_id: AgentId,
    pub version: u32,
    pub metric: Metric,
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub updated_at: i64,
}

/// One paid model result an evolution keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedRecord {
    pub evolution_id: EvolutionId,
    pub key: String,
    pub iteration: u32,
    pub spend: Spend,
    pub value: serde_json::Value,
}

impl CachedRecord {
    /// The result as the evolution store keeps it.
    pub fn entry(&self) -> crate::ports::CacheEntry {
        crate::ports::CacheEntry {
            key: self.key.clone(),
            iteration: self.iteration,
            spend: self.spend,
            value: self.value.clone(),
        }
    }
}

/// An event written with its change and not yet published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxRecord {
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub time: i64,
    pub data: serde_json::Value,
    pub correlation_id: Option<String>,
}

/// An event id the fitness handler applied, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedRecord {
    pub event_id: String,
    pub processed_at: i64,
}

/// An outbox event set aside because it could not be read, kept as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedRecord {
    pub event_id: String,
    pub event_type: String,
    pub subject: String,
    pub data: String,
    pub error: String,
    pub quarantined_at: i64,
}

/// One record of an archive: `{"kind": ..., "data": {...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Record {
    Version(AgentVersion),
    Agent(Agent),
    Session(Session),
    Interaction(Interaction),
    Message(Message),
    Feedback(Feedback),
    Fitness(FitnessRecord),
    Deployment(Deployment),
    Canary(Box<Canary>),
    Proposal(Proposal),
    EvalCase(EvalCase),
    Evolution(Box<Evolution>),
    Candidate(Candidate),
    Cached(CachedRecord),
    Outbox(OutboxRecord),
    Applied(AppliedRecord),
    Quarantined(QuarantinedRecord),
}

impl Record {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Version(_) => Kind::Version,
            Self::Agent(_) => Kind::Agent,
            Self::Session(_) => Kind::Session,
            Self::Interaction(_) => Kind::Interaction,
            Self::Message(_) => Kind::Message,
            Self::Feedback(_) => Kind::Feedback,
            Self::Fitness(_) => Kind::Fitness,
            Self::Deployment(_) => Kind::Deployment,
            Self::Canary(_) => Kind::Canary,
            Self::Proposal(_) => Kind::Proposal,
            Self::EvalCase(_) => Kind::EvalCase,
            Self::Evolution(_) => Kind::Evolution,
            Self::Candidate(_) => Kind::Candidate,
            Self::Cached(_) => Kind::Cached,
            Self::Outbox(_) => Kind::Outbox,
            Self::Applied(_) => Kind::Applied,
            Self::Quarantined(_) => Kind::Quarantined,
        }
    }
}

/// A page of one kind's records and where the next page starts (`None`: that was the last).
#[derive(Debug, Clone, Default)]
pub struct ExportPage {
    pub records: Vec<Record>,
    pub next: Option<String>,
}

/// Reads a store's records out, kind by kind, in a fixed order (by key), a page at a time.
#[async_trait]
pub trait BackupSource: Send + Sync {
    /// How many records of each kind there are (kinds with none left out).
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError>;

    /// Whether every `export` reads the same moment of the store (one read transaction with
    /// snapshot isolation). When it does not, a backup reads everything a second time and
    /// completes only if nothing it had read changed in between.
    fn reads_one_snapshot(&self) -> bool {
        false
    }

    /// Records of `kind` after position `after` (a `next` this method returned; `None` for the
    /// first page), at most `limit`.
    async fn export(
        &self,
        kind: Kind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ExportPage, StoreError>;
}

/// Loads records into an empty store as they were: no events, no checks against what is
/// stored (a restore writes history, it does not make it), each call in one transaction.
#[async_trait]
pub trait RestoreTarget: Send + Sync {
    /// How many records of each kind the store holds (kinds with none left out).
    async fn census(&self) -> Result<Vec<(Kind, u64)>, StoreError>;

    /// How many records of the archive with this checksum an earlier, interrupted restore has
    /// loaded already (`None`: no restore of it was started here).
    async fn restored_so_far(&self, archive: &str) -> Result<Option<u64>, StoreError>;

    /// Writes `records` (all of one kind), recording in the same transaction that the first
    /// `done` records of `archive` are now loaded.
    ///
    /// # Errors
    /// `Permanent` when a record cannot be stored (a reference to something the archive did
    /// not hold before it, a duplicate key); nothing of the call is written then.
    async fn import(&self, archive: &str, done: u64, records: &[Record]) -> Result<(), StoreError>;

    /// Marks the restore of `archive` complete: the store serves again.
    async fn finish_restore(&self, archive: &str) -> Result<(), StoreError>;
}
