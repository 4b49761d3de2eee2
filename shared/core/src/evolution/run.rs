//! An evolution run as stored: its settings, frozen cases, pool, spend and history.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CandidateId, EvolutionId, RunCase};
use crate::agent::AgentId;
use crate::deployment::CanaryId;
use crate::deployment::policy::Goal;
use crate::principal::Principal;
use crate::proposal::ProposalId;

/// What happens to the winner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvolutionMode {
    /// It becomes a proposal for people to review.
    #[default]
    Review,
    /// It goes straight to a canary on the alias.
    Auto,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EvolutionStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl EvolutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Hard limits of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Candidate-on-case evaluations (a task call and its checks).
    pub max_metric_calls: u32,
    /// Every model call (task, judge, reflection), at the configured prices.
    pub max_cost_usd: f64,
    pub max_seconds: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_metric_calls: 300,
            max_cost_usd: 5.0,
            max_seconds: 3_600,
        }
    }
}

/// How a run searches; every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EvolutionSettings {
    pub budget: Budget,
    /// Training cases per iteration.
    pub minibatch_size: usize,
    /// Cases held for validation.
    pub valset_size: usize,
    /// Replayed turns with feedback come from this many days back...
    pub window_days: u32,
    /// ...at most this many.
    pub max_replayed: usize,
    /// Model that rewrites instructions; default the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reflection_model: Option<String>,
    /// Model of `judge` checks and replayed turns; default the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_model: Option<String>,
    /// How a replayed turn's ratings make its score (the selection criteria); empty: every
    /// rating equally.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objective: Vec<Criterion>,
    /// Iterations without a new best before stopping.
    pub patience: u32,
    /// A validation mean that ends the run.
    pub target: f64,
    /// Candidates in the pool that end the run.
    pub max_candidates: usize,
    /// Combine front candidates with a common ancestor; default on when the agent has more than
    /// one evolvable component (capability descriptions besides the instructions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<bool>,
    /// The winner must beat the seed's validation mean by this much...
    pub min_improvement: f64,
    /// ...and fail at most this share of the cases the seed passed.
    pub max_regression: f64,
    /// Seed of the run's sampling (parents, minibatches), so a run can be replayed.
    pub seed: u64,
    /// Deadline of one model call, in seconds.
    pub call_timeout_seconds: u64,
}

impl Default for EvolutionSettings {
    fn default() -> Self {
        Self {
            budget: Budget::default(),
            minibatch_size: 3,
            valset_size: 30,
            window_days: 14,
            max_replayed: 500,
            reflection_model: None,
            judge_model: None,
            objective: Vec::new(),
            patience: 10,
            target: 0.98,
            max_candidates: 20,
            merge: None,
            min_improvement: 0.03,
            max_regression: 0.10,
            seed: 0,
            call_timeout_seconds: 120,
        }
    }
}

impl EvolutionSettings {
    /// The smallest metric-call budget that can pay for one accepted iteration: the seed on the
    /// validation set, then parent and child on a minibatch and the child on the validation set,
    /// with room for two refused tries.
    pub fn minimum_metric_calls(&self) -> u32 {
        let (val, b) = (self.valset_size, self.minibatch_size);
        u32::try_from(val + 3 * (b + val)).unwrap_or(u32::MAX)
    }
}

/// One selection criterion: how a rating counts towards a replayed turn's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// A rating name (`helpfulness`).
    pub metric: String,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub goal: Goal,
    /// A normalised rating (0..1) below this (above, when minimising) counts as 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

fn one() -> f64 {
    1.0
}

impl Criterion {
    /// The score of a turn from its mean normalised ratings by metric, on 0..1; `None` when
    /// the turn has none of the criteria's ratings. Without criteria every rating counts
    /// equally.
    pub fn score(criteria: &[Self], ratings: &[(String, f64)]) -> Option<f64> {
        if criteria.is_empty() {
            if ratings.is_empty() {
                return None;
            }
            return Some(ratings.iter().map(|(_, v)| v).sum::<f64>() / ratings.len() as f64);
        }
        let (mut total, mut weights) = (0.0, 0.0);
        for c in criteria {
            let Some((_, value)) = ratings.iter().find(|(m, _)| *m == c.metric) else {
                continue;
            };
            let value = match c.goal {
                Goal::Maximize => *value,
                Goal::Minimize => 1.0 - value,
            };
            let passes = c.threshold.is_none_or(|t| match c.goal {
                Goal::Maximize => value >= t,
                Goal::Minimize => 1.0 - value <= t,
            });
            total += c.weight * if passes { value } else { 0.0 };
            weights += c.weight;
        }
        (weights > 0.0).then(|| (total / weights).clamp(0.0, 1.0))
    }
}

/// What a run has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Spend {
    pub metric_calls: u32,
    pub llm_calls: u32,
    pub tokens: u64,
    pub cost_usd: f64,
}

impl Spend {
    pub fn add(&mut self, other: &Self) {
        self.metric_calls += other.metric_calls;
        self.llm_calls += other.llm_calls;
        self.tokens += other.tokens;
        self.cost_usd += other.cost_usd;
    }
}

/// One iteration, as the performance history shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IterationRecord {
    pub iteration: u32,
    /// `seeded`, `skipped`, `refused`, `rejected`, `accepted`, `merged`.
    pub outcome: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<CandidateId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child: Option<CandidateId>,
    /// Best and mean validation score of the pool after the iteration.
    pub best_val: f64,
    pub mean_val: f64,
    pub spend: Spend,
    pub at: i64,
}

/// The candidate that won, and how it went out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Winner {
    pub candidate_id: CandidateId,
    pub version: u32,
    /// Validation mean over the seed's.
    pub improvement: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<ProposalId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_id: Option<CanaryId>,
    /// Why it could not go out, when the version was made but not proposed or canaried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_error: Option<String>,
}

/// The result of one case for one candidate, as cached and reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CaseOutcome {
    pub case_id: String,
    pub output: String,
    pub score: f64,
    pub feedback: String,
}

/// An evolution run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evolution {
    pub evolution_id: EvolutionId,
    pub agent_id: AgentId,
    pub alias: String,
    pub mode: EvolutionMode,
    pub settings: EvolutionSettings,
    pub status: EvolutionStatus,
    /// The version serving the most traffic on the alias when the run started.
    pub seed_version: u32,
    /// The model every candidate runs on (the seed's).
    pub model: String,
    /// Every case of the run, frozen at start.
    pub cases: Vec<RunCase>,
    /// Indices into `cases`.
    pub valset: Vec<usize>,
    /// Indices into `cases`, lowest prior score first.
    pub trainset: Vec<usize>,
    /// The next iteration to run (0: score the seed).
    pub iteration: u32,
    /// Accepted candidates, with validation scores, seed first.
    pub pool: Vec<CandidateId>,
    pub best: Option<CandidateId>,
    pub best_score: Option<f64>,
    pub seed_score: Option<f64>,
    /// Iterations since the best last improved.
    pub stale_iterations: u32,
    pub history: Vec<IterationRecord>,
    pub spend: Spend,
    pub stop_reason: Option<String>,
    pub winner: Option<Winner>,
    pub error: Option<String>,
    /// Attempts of the current iteration the model failed transiently, in a row.
    #[serde(default)]
    pub retries: u32,
    pub started_by: Principal,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// Incremented by every change; writes compare it.
    pub revision: u64,
}

impl Evolution {
    /// The validation cases, in order.
    pub fn validation_cases(&self) -> Vec<&RunCase> {
        self.valset
            .iter()
            .filter_map(|i| self.cases.get(*i))
            .collect()
    }

    /// The minibatch of iteration `n` (from 1): the training set in its order, a window at a
    /// time, round and round, so every training case is seen before any is seen twice.
    pub fn minibatch(&self, n: u32) -> Vec<&RunCase> {
        let train = &self.trainset;
        if train.is_empty() {
            return Vec::new();
        }
        let b = self.settings.minibatch_size.min(train.len());
        let start = (n.saturating_sub(1) as usize * b) % train.len();
        (0..b)
            .filter_map(|k| self.cases.get(train[(start + k) % train.len()]))
            .collect()
    }

    /// Why the run must stop now, if it must.
    pub fn stop_rule(&self, pool_size: usize, now: i64) -> Option<String> {
        let s = &self.settings;
        let b = &s.budget;
        let next_cost = u32::try_from(2 * s.minibatch_size + s.valset_size).unwrap_or(u32::MAX);
        if self.spend.metric_calls >= b.max_metric_calls {
            return Some(format!(
                "metric-call budget used ({} of {})",
                self.spend.metric_calls, b.max_metric_calls
            ));
        }
        if self.spend.metric_calls + next_cost > b.max_metric_calls {
            return Some(format!(
                "the metric-call budget left ({}) cannot pay for another iteration ({next_cost})",
                b.max_metric_calls - self.spend.metric_calls
            ));
        }
        if self.spend.cost_usd >= b.max_cost_usd {
            return Some(format!(
                "cost budget used (USD {:.4} of {:.2})",
                self.spend.cost_usd, b.max_cost_usd
            ));
        }
        let elapsed = (now - self.started_at) / 1000;
        if elapsed >= i64::try_from(b.max_seconds).unwrap_or(i64::MAX) {
            return Some(format!(
                "time budget used ({elapsed} s of {})",
                b.max_seconds
            ));
        }
        if self.stale_iterations >= s.patience {
            return Some(format!("{} iterations without a new best", s.patience));
        }
        if let Some(best) = self.best_score
            && best >= s.target
        {
            return Some(format!(
                "validation mean {best:.3} reached the target {:.2}",
                s.target
            ));
        }
        if pool_size >= s.max_candidates {
            return Some(format!("{pool_size} candidates, the most a run keeps"));
        }
        None
    }
}
