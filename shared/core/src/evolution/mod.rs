//! Evolution: a budgeted run that improves an agent's instructions from its feedback and its
//! evaluation cases, by reflective evolution (GEPA): a pool of candidates, parents drawn from
//! the per-case Pareto front, a reflection model that rewrites instructions from *input /
//! output / feedback* records, strict acceptance on a minibatch before a full validation. The
//! winner becomes an immutable version with its lineage, then a proposal or a canary; a run never
//! moves an alias itself.

pub mod checks;
pub mod pareto;
pub mod reflection;
mod run;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentId;
use crate::ids::prefixed_id;

pub use checks::{Check, CheckResult};
pub use run::{
    Budget, CaseOutcome, Criterion, Evolution, EvolutionMode, EvolutionSettings, EvolutionStatus,
    IterationRecord, Spend, Winner,
};

prefixed_id!(EvolutionId, "evo_", "evolution");
prefixed_id!(CandidateId, "cand_", "candidate");
prefixed_id!(EvalCaseId, "case_", "evaluation case");

/// An evaluation case a user gave: an input and the checks its answer must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvalCase {
    pub case_id: EvalCaseId,
    pub agent_id: AgentId,
    pub input: String,
    pub checks: Vec<Check>,
    /// A reference answer, shown to the reflection model and to judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: i64,
}

/// Where a case of a run comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaseSource {
    /// A user's evaluation case.
    EvalCase,
    /// A recorded turn with feedback, replayed.
    Interaction,
}

/// One case of a run, frozen when the run starts: what the candidates are scored on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunCase {
    /// The eval case's id, or the interaction's.
    pub id: String,
    pub source: CaseSource,
    pub input: String,
    pub checks: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// How the serving version did on it: the replayed turn's score, for training order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_score: Option<f64>,
}

/// What a candidate changes: the parts of a version an evolution may rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Components {
    pub instructions: String,
    /// Descriptions of the version's capabilities, by name, in order.
    #[serde(default)]
    pub capability_descriptions: Vec<(String, String)>,
}

impl Components {
    /// A stable content hash: the key of the evaluation cache.
    pub fn hash(&self, model: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            h = (h ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
        };
        feed(model.as_bytes());
        feed(self.instructions.as_bytes());
        for (name, description) in &self.capability_descriptions {
            feed(name.as_bytes());
            feed(description.as_bytes());
        }
        format!("{h:016x}")
    }
}

/// How a candidate was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    /// The version the run started from.
    Seed,
    /// A reflection on a minibatch rewrote one component of its parent.
    Reflection,
    /// Two candidates with a common ancestor, combined component by component.
    Merge,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Reflection => "reflection",
            Self::Merge => "merge",
        }
    }
}

/// One candidate of a run, accepted into the pool or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    pub candidate_id: CandidateId,
    pub evolution_id: EvolutionId,
    pub iteration: u32,
    pub parents: Vec<CandidateId>,
    pub operator: Operator,
    pub components: Components,
    /// [`Components::hash`] with the model.
    pub hash: String,
    /// The parent's and this candidate's total on the minibatch that decided acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minibatch: Option<MinibatchScores>,
    /// Scores on the validation cases, in the run's validation order; empty unless accepted.
    #[serde(default)]
    pub val_scores: Vec<f64>,
    pub val_mean: Option<f64>,
    pub accepted: bool,
    /// Why: the reflection's rationale, or why it was refused.
    pub rationale: String,
    pub created_at: i64,
}

/// The minibatch comparison that accepted or refused a child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MinibatchScores {
    pub case_ids: Vec<String>,
    pub parent: Vec<f64>,
    pub child: Vec<f64>,
}

impl MinibatchScores {
    pub fn parent_total(&self) -> f64 {
        self.parent.iter().sum()
    }

    pub fn child_total(&self) -> f64 {
        self.child.iter().sum()
    }
}
