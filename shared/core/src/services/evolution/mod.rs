//! Evolution use cases: evaluation cases, starting, watching, cancelling and reading runs, and
//! the step the evolution worker takes for each requested iteration ([`engine`]).

mod engine;
mod lineage;
mod worker;

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::{AgentId, AgentStatus, PROD_ALIAS};
use crate::clock::Clock;
use crate::error::{ServiceError, StoreError};
use crate::events::{DomainEvent, payload};
use crate::evolution::{
    Budget, CaseSource, Check, Criterion, EvalCase, EvalCaseId, Evolution, EvolutionId,
    EvolutionMode, EvolutionSettings, EvolutionStatus, RunCase, Spend, Winner,
};
use crate::evolution::{Candidate, CandidateId};
use crate::llm::ChatModel;
use crate::page::{Page, PageRequest};
use crate::ports::{EvolutionStore, NoSignal, OutboxSignal, RatedTurn};
use crate::pricing::PriceTable;
use crate::principal::Principal;
use crate::proposal::{Proposal, Rollout};
use crate::services::agents::{AgentService, paginate};
use crate::services::deployments::DeploymentService;
use crate::services::proposals::ProposalService;
use crate::stats::SplitMix64;
use crate::validate::Problems;

pub use engine::Step;
pub use lineage::{EvolutionLineage, LineageLink, LineageNode};
pub use worker::EvolutionWorker;

/// Longest input, expected answer or rubric of an evaluation case.
const MAX_CASE_TEXT: usize = 32_000;
/// Cases one `add_eval_cases` call may add.
const MAX_CASES_PER_CALL: usize = 500;
/// Checks of one case.
const MAX_CHECKS: usize = 20;
/// Tags of one case, and the longest tag.
const MAX_TAGS: usize = 20;
const MAX_TAG: usize = 64;
/// Evaluation cases an agent may hold.
const MAX_CASES_PER_AGENT: usize = 5_000;

/// How runs are made and stepped, besides each run's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EvolutionRules {
    /// Defaults of every run's settings.
    pub defaults: EvolutionSettings,
    /// Cases scored at the same time.
    pub concurrency: usize,
    /// A step stops starting new model calls after this long and asks for a continuation, so
    /// one invocation stays well inside a Lambda function's limit.
    pub step_seconds: u64,
    /// Attempts in a row the model may fail transiently before a run fails.
    pub max_retries: u32,
}

impl Default for EvolutionRules {
    fn default() -> Self {
        Self {
            defaults: EvolutionSettings::default(),
            concurrency: 4,
            step_seconds: 600,
            max_retries: 3,
        }
    }
}

/// One case of `add_eval_cases`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvalCase {
    /// What the agent receives.
    pub input: String,
    /// What its answer must satisfy (at least one).
    pub checks: Vec<Check>,
    /// A reference answer, shown to judges and to the reflection model.
    #[serde(default)]
    pub expected: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Input of `add_eval_cases`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddEvalCases {
    pub agent_id: AgentId,
    pub cases: Vec<NewEvalCase>,
}

/// Input of `list_eval_cases`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEvalCases {
    pub agent_id: AgentId,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Input of `remove_eval_case`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveEvalCase {
    pub agent_id: AgentId,
    pub case_id: EvalCaseId,
}

/// Budget limits of `initialize_evolution`; each has a default.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// Candidate-on-case evaluations (default 300).
    #[serde(default)]
    pub max_metric_calls: Option<u32>,
    /// US dollars for every model call, at the configured prices (default 5).
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Wall time in seconds (default 3600).
    #[serde(default)]
    pub max_seconds: Option<u64>,
}

/// Input of `initialize_evolution`. Every field but `agent_id` has a default.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InitializeEvolution {
    pub agent_id: AgentId,
    /// The alias whose most-served version is the seed (default `prod`).
    #[serde(default)]
    pub alias: Option<String>,
    /// `review` (default): the winner becomes a proposal; `auto`: a canary.
    #[serde(default)]
    pub mode: Option<EvolutionMode>,
    /// Selection criteria for replayed turns: rating metric, weight, `maximize`|`minimize`,
    /// threshold.
    #[serde(default)]
    pub objective: Option<Vec<Criterion>>,
    #[serde(default)]
    pub budget: Option<BudgetInput>,
    /// Training cases per iteration (default 3).
    #[serde(default)]
    pub minibatch_size: Option<usize>,
    /// Cases held out for validation (default 30).
    #[serde(default)]
    pub valset_size: Option<usize>,
    /// Replay rated turns from this many days back (default 14).
    #[serde(default)]
    pub window_days: Option<u32>,
    /// The model that rewrites instructions (default the agent's).
    #[serde(default)]
    pub reflection_model: Option<String>,
    /// The model of judge checks (default the agent's).
    #[serde(default)]
    pub judge_model: Option<String>,
    /// Combine candidates with a common ancestor (default on when the agent has capability
    /// descriptions to evolve besides its instructions).
    #[serde(default)]
    pub merge: Option<bool>,
    /// Stop after this many iterations without a new best (default 10).
    #[serde(default)]
    pub patience: Option<u32>,
    /// Seed of the run's sampling, to replay a run.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Input of `list_evolutions`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListEvolutions {
    #[serde(default)]
    pub agent_id: Option<AgentId>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Input of `select_evolution_candidate`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectCandidate {
    pub evolution_id: EvolutionId,
    pub candidate_id: CandidateId,
    /// How the version goes live once approved: `canary` (default) or `deploy`.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// A run as callers see it: everything but its frozen cases.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct EvolutionView {
    pub evolution_id: EvolutionId,
    pub agent_id: AgentId,
    pub alias: String,
    pub mode: EvolutionMode,
    pub status: EvolutionStatus,
    pub seed_version: u32,
    pub model: String,
    /// Iterations done (0: the seed is being scored).
    pub iteration: u32,
    pub valset_size: usize,
    pub trainset_size: usize,
    /// Cases from evaluation cases and from replayed turns.
    pub eval_cases: usize,
    pub replayed_turns: usize,
    pub candidates_in_pool: usize,
    pub best_candidate: Option<CandidateId>,
    pub best_score: Option<f64>,
    pub seed_score: Option<f64>,
    pub budget: Budget,
    pub spend: Spend,
    /// Share of the metric-call budget used, 0..1.
    pub progress: f64,
    pub stop_reason: Option<String>,
    pub winner: Option<Winner>,
    pub error: Option<String>,
    pub settings: EvolutionSettings,
    pub started_by: Principal,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl EvolutionView {
    pub fn of(run: &Evolution) -> Self {
        let replayed = run
            .cases
            .iter()
            .filter(|c| c.source == CaseSource::Interaction)
            .count();
        let budget = run.settings.budget.clone();
        let progress = if run.status == EvolutionStatus::Running {
            (f64::from(run.spend.metric_calls) / f64::from(budget.max_metric_calls.max(1))).min(1.0)
        } else {
            1.0
        };
        Self {
            evolution_id: run.evolution_id.clone(),
            agent_id: run.agent_id.clone(),
            alias: run.alias.clone(),
            mode: run.mode,
            status: run.status,
            seed_version: run.seed_version,
            model: run.model.clone(),
            iteration: run.iteration,
            valset_size: run.valset.len(),
            trainset_size: run.trainset.len(),
            eval_cases: run.cases.len() - replayed,
            replayed_turns: replayed,
            candidates_in_pool: run.pool.len(),
            best_candidate: run.best.clone(),
            best_score: run.best_score,
            seed_score: run.seed_score,
            budget,
            spend: run.spend,
            progress,
            stop_reason: run.stop_reason.clone(),
            winner: run.winner.clone(),
            error: run.error.clone(),
            settings: run.settings.clone(),
            started_by: run.started_by.clone(),
            started_at: run.started_at,
            updated_at: run.updated_at,
            finished_at: run.finished_at,
        }
    }
}

/// What `select_evolution_candidate` made.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Selected {
    pub candidate_id: CandidateId,
    pub version: u32,
    pub proposal: Proposal,
}

/// The performance history of a run: per iteration, the best and mean validation score and
/// what it had spent by then.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PerformanceHistory {
    pub evolution_id: EvolutionId,
    pub seed_score: Option<f64>,
    pub best_score: Option<f64>,
    pub points: Vec<HistoryPoint>,
}

/// One iteration of [`PerformanceHistory`].
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct HistoryPoint {
    pub iteration: u32,
    pub outcome: String,
    pub best_val: f64,
    pub mean_val: f64,
    /// Spent by the end of this iteration, in total.
    pub metric_calls: u32,
    pub cost_usd: f64,
    pub at: i64,
}

/// Evaluation cases and evolution runs.
#[derive(Clone)]
pub struct EvolutionService {
    agents: AgentService,
    deployments: DeploymentService,
    proposals: ProposalService,
    store: Arc<dyn EvolutionStore>,
    model: Arc<dyn ChatModel>,
    prices: Arc<PriceTable>,
    clock: Arc<dyn Clock>,
    rules: EvolutionRules,
    signal: Arc<dyn OutboxSignal>,
    observer: Arc<dyn crate::services::ProgressObserver>,
}

impl EvolutionService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        agents: AgentService,
        deployments: DeploymentService,
        proposals: ProposalService,
        store: Arc<dyn EvolutionStore>,
        model: Arc<dyn ChatModel>,
        prices: PriceTable,
        clock: Arc<dyn Clock>,
        rules: EvolutionRules,
    ) -> Self {
        Self {
            agents,
            deployments,
            proposals,
            store,
            model,
            prices: Arc::new(prices),
            clock,
            rules,
            signal: Arc::new(NoSignal),
            observer: Arc::new(crate::services::NoProgressObserver),
        }
    }

    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    /// Tells `observer` about every step of a run, and its canaries' moves.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn crate::services::ProgressObserver>) -> Self {
        self.deployments = self.deployments.with_observer(observer.clone());
        self.observer = observer;
        self
    }

    pub fn rules(&self) -> &EvolutionRules {
        &self.rules
    }

    /// Adds evaluation cases to an agent, all or none.
    ///
    /// # Errors
    /// `Invalid` naming `cases[i].input`, `cases[i].checks[j]` (an unknown kind is refused when
    /// the input is read; a regex that does not compile or a schema that is not one here) and
    /// so on; `NotFound` for an unknown agent.
    #[instrument(name = "add_eval_cases", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn add_eval_cases(&self, input: AddEvalCases) -> Result<Vec<EvalCase>, ServiceError> {
        let mut p = Problems::default();
        if input.cases.is_empty() {
            p.push("cases", "give at least one case");
        }
        if input.cases.len() > MAX_CASES_PER_CALL {
            p.push(
                "cases",
                format!(
                    "at most {MAX_CASES_PER_CALL} cases per call (got {})",
                    input.cases.len()
                ),
            );
        }
        let now = self.clock.now_ms();
        let mut cases = Vec::with_capacity(input.cases.len());
        for (i, case) in input.cases.iter().enumerate() {
            let field = |name: &str| format!("cases[{i}].{name}");
            let text = p.text(&field("input"), &case.input, 1, MAX_CASE_TEXT);
            if case.checks.is_empty() {
                p.push(field("checks"), "give at least one check");
            }
            if case.checks.len() > MAX_CHECKS {
                p.push(field("checks"), format!("at most {MAX_CHECKS} checks"));
            }
            for (j, check) in case.checks.iter().enumerate() {
                if let Some(problem) = check.problem() {
                    p.push(format!("cases[{i}].checks[{j}]"), problem);
                }
            }
            let expected = case
                .expected
                .as_deref()
                .map(|e| p.text(&field("expected"), e, 1, MAX_CASE_TEXT));
            if case.tags.len() > MAX_TAGS {
                p.push(field("tags"), format!("at most {MAX_TAGS} tags"));
            }
            let tags = case
                .tags
                .iter()
                .enumerate()
                .map(|(k, t)| p.token(&format!("cases[{i}].tags[{k}]"), t, MAX_TAG))
                .collect();
            cases.push(EvalCase {
                case_id: EvalCaseId::generate(),
                agent_id: input.agent_id.clone(),
                input: text,
                checks: case.checks.clone(),
                expected,
                tags,
                created_at: now,
            });
        }
        p.finish()?;
        self.agents.get(&input.agent_id, None).await?;
        let held = self.all_eval_cases(&input.agent_id).await?.len();
        if held + cases.len() > MAX_CASES_PER_AGENT {
            return Err(ServiceError::invalid(
                "cases",
                format!(
                    "agent '{}' holds {held} cases; at most {MAX_CASES_PER_AGENT} are kept",
                    input.agent_id
                ),
            ));
        }
        self.store.insert_eval_cases(&cases).await?;
        Ok(cases)
    }

    /// An agent's evaluation cases, oldest first.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent; `Invalid` for a bad cursor or limit.
    pub async fn list_eval_cases(
        &self,
        input: ListEvalCases,
    ) -> Result<Page<EvalCase>, ServiceError> {
        let page = PageRequest::parse(input.cursor.as_deref(), input.limit)?;
        self.agents.get(&input.agent_id, None).await?;
        let rows = self.store.list_eval_cases(&input.agent_id, &page).await?;
        Ok(paginate(rows, page.limit, |c| c.case_id.to_string()))
    }

    /// Removes an evaluation case. Runs that started already keep their frozen copy.
    ///
    /// # Errors
    /// `NotFound` naming the case.
    pub async fn remove_eval_case(&self, input: RemoveEvalCase) -> Result<(), ServiceError> {
        if self
            .store
            .remove_eval_case(&input.agent_id, &input.case_id)
            .await?
        {
            Ok(())
        } else {
            Err(ServiceError::NotFound {
                kind: "evaluation case",
                id: format!("{} of agent {}", input.case_id, input.agent_id),
            })
        }
    }

    async fn all_eval_cases(&self, agent_id: &AgentId) -> Result<Vec<EvalCase>, ServiceError> {
        let mut page = PageRequest {
            after: None,
            limit: 200,
        };
        let mut all = Vec::new();
        loop {
            let mut rows = self.store.list_eval_cases(agent_id, &page).await?;
            let more = rows.len() > page.limit as usize;
            rows.truncate(page.limit as usize);
            if let Some(last) = rows.last() {
                page.after = Some(crate::page::Cursor::after(last.case_id.to_string()));
            }
            all.extend(rows);
            if !more {
                return Ok(all);
            }
        }
    }

    /// The settings of a new run: the input over the defaults, checked.
    fn settings(&self, input: &InitializeEvolution) -> Result<EvolutionSettings, ServiceError> {
        let mut s = self.rules.defaults.clone();
        let mut p = Problems::default();
        if let Some(b) = &input.budget {
            if let Some(n) = b.max_metric_calls {
                s.budget.max_metric_calls = n;
            }
            if let Some(c) = b.max_cost_usd {
                if c.is_finite() && c > 0.0 {
                    s.budget.max_cost_usd = c;
                } else {
                    p.push(
                        "budget.max_cost_usd",
                        "must be a positive number of dollars",
                    );
                }
            }
            if let Some(t) = b.max_seconds {
                if t == 0 {
                    p.push("budget.max_seconds", "must be at least 1");
                }
                s.budget.max_seconds = t;
            }
        }
        if let Some(b) = input.minibatch_size {
            if !(1..=20).contains(&b) {
                p.push("minibatch_size", format!("must be 1 to 20 (got {b})"));
            }
            s.minibatch_size = b;
        }
        if let Some(v) = input.valset_size {
            if !(1..=500).contains(&v) {
                p.push("valset_size", format!("must be 1 to 500 (got {v})"));
            }
            s.valset_size = v;
        }
        if let Some(w) = input.window_days {
            if !(1..=365).contains(&w) {
                p.push("window_days", format!("must be 1 to 365 (got {w})"));
            }
            s.window_days = w;
        }
        if let Some(m) = &input.reflection_model {
            s.reflection_model = Some(p.token("reflection_model", m, 200));
        }
        if let Some(m) = &input.judge_model {
            s.judge_model = Some(p.token("judge_model", m, 200));
        }
        if let Some(objective) = &input.objective {
            for (i, c) in objective.iter().enumerate() {
                p.token(&format!("objective[{i}].metric"), &c.metric, 64);
                if !(c.weight.is_finite() && c.weight > 0.0) {
                    p.push(
                        format!("objective[{i}].weight"),
                        "must be a positive number",
                    );
                }
                if let Some(t) = c.threshold
                    && !(0.0..=1.0).contains(&t)
                {
                    p.push(
                        format!("objective[{i}].threshold"),
                        "must be a normalised rating from 0 to 1",
                    );
                }
            }
            s.objective.clone_from(objective);
        }
        if let Some(n) = input.patience {
            if !(1..=1000).contains(&n) {
                p.push("patience", format!("must be 1 to 1000 (got {n})"));
            }
            s.patience = n;
        }
        if input.merge.is_some() {
            s.merge = input.merge;
        }
        if let Some(seed) = input.seed {
            s.seed = seed;
        }
        p.finish()?;
        let minimum = s.minimum_metric_calls();
        if s.budget.max_metric_calls < minimum {
            return Err(ServiceError::invalid(
                "budget.max_metric_calls",
                format!(
                    "{} cannot pay for one accepted iteration: the minimum is {minimum} for \
                     valset_size {} and minibatch_size {} (valset + 3 × (minibatch + valset))",
                    s.budget.max_metric_calls, s.valset_size, s.minibatch_size
                ),
            ));
        }
        Ok(s)
    }

    /// Starts a run on an agent and returns at once; the evolution worker does the work, one
    /// iteration per `evolution.generation.requested` event.
    ///
    /// # Errors
    /// `Invalid` naming the field (`alias`, `budget.max_metric_calls` with the minimum,
    /// `valset_size` when there are too few cases, ...); `NotFound` for an unknown agent;
    /// `Conflict` when the agent has a running evolution or is archived.
    #[instrument(name = "initialize_evolution", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn initialize(
        &self,
        input: InitializeEvolution,
        caller: &Principal,
    ) -> Result<EvolutionView, ServiceError> {
        let settings = self.settings(&input)?;
        let alias = match &input.alias {
            Some(a) => {
                let mut p = Problems::default();
                let a = p.token("alias", a, 64);
                p.finish()?;
                a
            }
            None => PROD_ALIAS.to_owned(),
        };
        let detail = self.agents.get(&input.agent_id, None).await?;
        let agent = detail.agent;
        if agent.status == AgentStatus::Archived {
            return Err(ServiceError::Conflict(format!(
                "agent '{}' is archived and takes no new versions",
                agent.agent_id
            )));
        }
        let Some(route) = agent.aliases.iter().find(|a| a.name == alias) else {
            let names: Vec<&str> = agent.aliases.iter().map(|a| a.name.as_str()).collect();
            return Err(ServiceError::invalid(
                "alias",
                format!(
                    "agent '{}' has no alias '{alias}' (it has: {})",
                    agent.agent_id,
                    names.join(", ")
                ),
            ));
        };
        let seed_version = route
            .routes
            .iter()
            .max_by_key(|r| (r.weight, r.version))
            .map_or(agent.latest_version, |r| r.version);
        let seed = self.agents.get(&agent.agent_id, Some(seed_version)).await?;

        let now = self.clock.now_ms();
        let evals = self.all_eval_cases(&agent.agent_id).await?;
        let since = now - i64::from(settings.window_days) * 86_400_000;
        let turns = self
            .store
            .rated_turns(&agent.agent_id, since, settings.max_replayed)
            .await?;
        let mut cases: Vec<RunCase> = evals.iter().map(run_case_of_eval).collect();
        cases.extend(
            turns
                .iter()
                .filter_map(|t| run_case_of_turn(t, &settings.objective)),
        );
        let needed = settings.valset_size + 1;
        if cases.len() < needed {
            return Err(ServiceError::invalid(
                "valset_size",
                format!(
                    "agent '{}' has {} usable cases ({} evaluation cases, {} rated turns in the \
                     last {} days); a run needs at least valset_size + 1 = {needed}: add cases \
                     with add_eval_cases or lower valset_size",
                    agent.agent_id,
                    cases.len(),
                    evals.len(),
                    cases.len() - evals.len(),
                    settings.window_days
                ),
            ));
        }
        let evolution_id = EvolutionId::generate();
        let (valset, trainset) = split(&cases, settings.valset_size, settings.seed);
        let run = Evolution {
            evolution_id: evolution_id.clone(),
            agent_id: agent.agent_id.clone(),
            alias,
            mode: input.mode.unwrap_or_default(),
            settings,
            status: EvolutionStatus::Running,
            seed_version,
            model: seed.version.model.clone(),
            cases,
            valset,
            trainset,
            iteration: 0,
            pool: Vec::new(),
            best: None,
            best_score: None,
            seed_score: None,
            stale_iterations: 0,
            history: Vec::new(),
            spend: Spend::default(),
            stop_reason: None,
            winner: None,
            error: None,
            retries: 0,
            started_by: caller.clone(),
            started_at: now,
            updated_at: now,
            finished_at: None,
            revision: 0,
        };
        let events = [
            DomainEvent::new(
                &run.agent_id,
                now,
                payload::EvolutionStarted {
                    evolution_id: evolution_id.clone(),
                    alias: run.alias.clone(),
                    mode: run.mode,
                    seed_version,
                    settings: run.settings.clone(),
                    valset_size: run.valset.len(),
                    trainset_size: run.trainset.len(),
                    started_by: caller.clone(),
                },
            ),
            DomainEvent::new(
                &run.agent_id,
                now,
                payload::EvolutionGenerationRequested {
                    evolution_id,
                    iteration: 0,
                },
            ),
        ];
        match self.store.insert_evolution(&run, &events).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let running = self.running_of(&run.agent_id).await?;
                return Err(ServiceError::Conflict(format!(
                    "agent '{}' has a running evolution{}; cancel it or wait for it to finish",
                    run.agent_id,
                    running.map(|r| format!(" ({r})")).unwrap_or_default()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        tracing::debug!(evolution_id = %run.evolution_id, seed_version, cases = run.cases.len(), "evolution started");
        Ok(EvolutionView::of(&run))
    }

    async fn running_of(&self, agent_id: &AgentId) -> Result<Option<EvolutionId>, ServiceError> {
        Ok(self
            .store
            .running_evolutions()
            .await?
            .into_iter()
            .find(|r| &r.agent_id == agent_id)
            .map(|r| r.evolution_id))
    }

    /// A run by id.
    ///
    /// # Errors
    /// `NotFound` naming the id.
    pub async fn run(&self, evolution_id: &EvolutionId) -> Result<Evolution, ServiceError> {
        self.store
            .evolution(evolution_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "evolution",
                id: evolution_id.to_string(),
            })
    }

    /// A run's status.
    ///
    /// # Errors
    /// `NotFound` naming the id.
    pub async fn status(&self, evolution_id: &EvolutionId) -> Result<EvolutionView, ServiceError> {
        Ok(EvolutionView::of(&self.run(evolution_id).await?))
    }

    /// Runs, newest first.
    ///
    /// # Errors
    /// `Invalid` for a bad cursor or limit.
    pub async fn list(&self, input: ListEvolutions) -> Result<Page<EvolutionView>, ServiceError> {
        let page = PageRequest::parse(input.cursor.as_deref(), input.limit)?;
        let rows = self
            .store
            .list_evolutions(input.agent_id.as_ref(), &page)
            .await?;
        let page = paginate(rows, page.limit, |r| r.evolution_id.to_string());
        Ok(Page {
            items: page.items.iter().map(EvolutionView::of).collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// Every candidate of a run, in the order they were made.
    ///
    /// # Errors
    /// `NotFound` naming the run.
    pub async fn candidates(
        &self,
        evolution_id: &EvolutionId,
    ) -> Result<Vec<Candidate>, ServiceError> {
        self.run(evolution_id).await?;
        Ok(self.store.candidates(evolution_id).await?)
    }

    /// The validation score per iteration.
    ///
    /// # Errors
    /// `NotFound` naming the run.
    pub async fn history(
        &self,
        evolution_id: &EvolutionId,
    ) -> Result<PerformanceHistory, ServiceError> {
        let run = self.run(evolution_id).await?;
        let mut spent = Spend::default();
        let points = run
            .history
            .iter()
            .map(|h| {
                spent.add(&h.spend);
                HistoryPoint {
                    iteration: h.iteration,
                    outcome: h.outcome.clone(),
                    best_val: h.best_val,
                    mean_val: h.mean_val,
                    metric_calls: spent.metric_calls,
                    cost_usd: spent.cost_usd,
                    at: h.at,
                }
            })
            .collect();
        Ok(PerformanceHistory {
            evolution_id: run.evolution_id,
            seed_score: run.seed_score,
            best_score: run.best_score,
            points,
        })
    }

    /// Stops a running run; the winner so far is not rolled out.
    ///
    /// # Errors
    /// `NotFound` naming the run; `Conflict` when it has finished.
    #[instrument(name = "cancel_evolution", skip_all, fields(evolution_id = %evolution_id))]
    pub async fn cancel(
        &self,
        evolution_id: &EvolutionId,
        caller: &Principal,
    ) -> Result<EvolutionView, ServiceError> {
        for _ in 0..5 {
            let run = self.run(evolution_id).await?;
            if run.status != EvolutionStatus::Running {
                return Err(ServiceError::Conflict(format!(
                    "evolution '{evolution_id}' is {} already; only a running evolution can be \
                     cancelled",
                    run.status.as_str()
                )));
            }
            let now = self.clock.now_ms();
            let mut next = run.clone();
            next.status = EvolutionStatus::Cancelled;
            next.stop_reason = Some(format!("cancelled by {caller}"));
            next.finished_at = Some(now);
            next.updated_at = now;
            next.revision += 1;
            let events = [DomainEvent::new(
                &next.agent_id,
                now,
                payload::EvolutionCancelled {
                    evolution_id: next.evolution_id.clone(),
                    by: caller.clone(),
                    spend: next.spend,
                },
            )];
            match self
                .store
                .save_evolution(&next, run.revision, &[], &events)
                .await
            {
                Ok(()) => {
                    self.signal.notify();
                    return Ok(EvolutionView::of(&next));
                }
                // The worker saved an iteration meanwhile: read it again.
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict(format!(
            "evolution '{evolution_id}' kept changing; try again"
        )))
    }

    /// Turns a candidate (the winner or not) into a version and a proposal for review.
    ///
    /// # Errors
    /// `NotFound` naming the run or the candidate; `Invalid` naming `candidate_id` for the
    /// seed itself.
    #[instrument(name = "select_evolution_candidate", skip_all, fields(evolution_id = %input.evolution_id))]
    pub async fn select(
        &self,
        input: SelectCandidate,
        caller: &Principal,
    ) -> Result<Selected, ServiceError> {
        let run = self.run(&input.evolution_id).await?;
        let candidates = self.store.candidates(&run.evolution_id).await?;
        let Some(candidate) = candidates
            .iter()
            .find(|c| c.candidate_id == input.candidate_id)
        else {
            return Err(ServiceError::NotFound {
                kind: "candidate",
                id: format!("{} of evolution {}", input.candidate_id, run.evolution_id),
            });
        };
        if candidate.operator == crate::evolution::Operator::Seed {
            return Err(ServiceError::invalid(
                "candidate_id",
                format!(
                    "'{}' is the seed, version {} already",
                    candidate.candidate_id, run.seed_version
                ),
            ));
        }
        let improvement = match (candidate.val_mean, run.seed_score) {
            (Some(c), Some(s)) => c - s,
            _ => 0.0,
        };
        let version = self.version_of(&run, candidate, improvement).await?;
        let proposal = self
            .propose(
                &run,
                candidate,
                version,
                input.rollout.unwrap_or_default(),
                caller,
            )
            .await?;
        let now = self.clock.now_ms();
        let event = DomainEvent::new(
            &run.agent_id,
            now,
            payload::EvolutionCandidateSelected {
                evolution_id: run.evolution_id.clone(),
                candidate_id: candidate.candidate_id.clone(),
                version,
                proposal_id: Some(proposal.proposal_id.clone()),
                canary_id: None,
            },
        );
        self.append_events(&run.evolution_id, vec![event]).await?;
        Ok(Selected {
            candidate_id: candidate.candidate_id.clone(),
            version,
            proposal,
        })
    }

    /// Writes events about a run with a touch of the run, retrying when the worker saved it
    /// meanwhile.
    async fn append_events(
        &self,
        evolution_id: &EvolutionId,
        events: Vec<DomainEvent>,
    ) -> Result<(), ServiceError> {
        for _ in 0..5 {
            let run = self.run(evolution_id).await?;
            let mut next = run.clone();
            next.updated_at = self.clock.now_ms();
            next.revision += 1;
            match self
                .store
                .save_evolution(&next, run.revision, &[], &events)
                .await
            {
                Ok(()) => {
                    self.signal.notify();
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict(format!(
            "evolution '{evolution_id}' kept changing; try again"
        )))
    }

    /// The lineage of a run: its seed version, its candidates and the versions they became.
    ///
    /// # Errors
    /// `NotFound` naming the run.
    pub async fn lineage(
        &self,
        evolution_id: &EvolutionId,
    ) -> Result<EvolutionLineage, ServiceError> {
        let run = self.run(evolution_id).await?;
        let candidates = self.store.candidates(evolution_id).await?;
        Ok(EvolutionLineage::of(&run, &candidates))
    }

    /// Asks again for the next iteration of running runs nothing has moved for `idle_ms`: a
    /// lost or dead-lettered request must not leave a run stuck. Returns how many.
    ///
    /// # Errors
    /// `Store` when running runs cannot be listed.
    pub async fn resume_stalled(&self, idle_ms: i64) -> Result<usize, ServiceError> {
        let now = self.clock.now_ms();
        let mut resumed = 0;
        for run in self.store.running_evolutions().await? {
            if now - run.updated_at < idle_ms {
                continue;
            }
            match self.request_again(&run, "resumed after no progress").await {
                Ok(()) => resumed += 1,
                Err(e) => {
                    tracing::warn!(evolution_id = %run.evolution_id, error = %e, "cannot resume a run");
                }
            }
        }
        Ok(resumed)
    }

    /// The automatic trigger: starts a run, with the default settings, on every active agent
    /// that collected `threshold` low-rated turns (a score under 0.5) since its last run started
    /// (or within the window), has no running run and no live canary on `prod`. Off at 0.
    /// Returns the runs it started; an agent without enough cases is passed over.
    ///
    /// # Errors
    /// `Store` when agents or runs cannot be listed.
    pub async fn auto_trigger(&self, threshold: usize) -> Result<Vec<EvolutionId>, ServiceError> {
        if threshold == 0 {
            return Ok(Vec::new());
        }
        let running: std::collections::HashSet<AgentId> = self
            .store
            .running_evolutions()
            .await?
            .into_iter()
            .map(|r| r.agent_id)
            .collect();
        let now = self.clock.now_ms();
        let window = i64::from(self.rules.defaults.window_days) * 86_400_000;
        let mut started = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .agents
                .list(crate::services::agents::ListAgents {
                    cursor,
                    limit: Some(200),
                    ..Default::default()
                })
                .await?;
            for agent in &page.items {
                if running.contains(&agent.agent_id) {
                    continue;
                }
                let live = self
                    .deployments
                    .latest_canary(&agent.agent_id, Some(PROD_ALIAS))
                    .await
                    .is_ok_and(|c| {
                        matches!(
                            c.status,
                            crate::deployment::CanaryStatus::Running
                                | crate::deployment::CanaryStatus::Paused
                                | crate::deployment::CanaryStatus::Baking
                        )
                    });
                if live {
                    continue;
                }
                let last = self
                    .store
                    .list_evolutions(
                        Some(&agent.agent_id),
                        &PageRequest {
                            after: None,
                            limit: 1,
                        },
                    )
                    .await?;
                let since = last
                    .first()
                    .map_or(now - window, |r| r.started_at.max(now - window));
                let turns = self
                    .store
                    .rated_turns(&agent.agent_id, since, self.rules.defaults.max_replayed)
                    .await?;
                let low = turns
                    .iter()
                    .filter(|t| {
                        t.failed
                            || Criterion::score(&self.rules.defaults.objective, &t.ratings)
                                .is_some_and(|s| s < 0.5)
                    })
                    .count();
                if low < threshold {
                    continue;
                }
                let input = InitializeEvolution {
                    agent_id: agent.agent_id.clone(),
                    alias: None,
                    mode: None,
                    objective: None,
                    budget: None,
                    minibatch_size: None,
                    valset_size: None,
                    window_days: None,
                    reflection_model: None,
                    judge_model: None,
                    merge: None,
                    patience: None,
                    seed: None,
                };
                match self
                    .initialize(input, &Principal::named("system:auto-evolution"))
                    .await
                {
                    Ok(view) => {
                        tracing::info!(agent_id = %agent.agent_id, evolution_id = %view.evolution_id, low_rated = low, "evolution started automatically");
                        started.push(view.evolution_id);
                    }
                    Err(ServiceError::Store(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::debug!(agent_id = %agent.agent_id, error = %e, "no automatic evolution");
                    }
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(started),
            }
        }
    }

    /// Running runs: what a process resumes when it starts.
    ///
    /// # Errors
    /// `Store` when they cannot be listed.
    pub async fn running(&self) -> Result<Vec<Evolution>, ServiceError> {
        Ok(self.store.running_evolutions().await?)
    }
}

fn run_case_of_eval(c: &EvalCase) -> RunCase {
    RunCase {
        id: c.case_id.to_string(),
        source: CaseSource::EvalCase,
        input: c.input.clone(),
        checks: c.checks.clone(),
        expected: c.expected.clone(),
        tags: c.tags.clone(),
        prior_score: None,
    }
}

/// A replayed turn as a case: a judge compares a new answer with what the feedback said of the
/// recorded one. `None` for a turn whose ratings the criteria do not use.
fn run_case_of_turn(t: &RatedTurn, criteria: &[Criterion]) -> Option<RunCase> {
    let score = if t.failed {
        0.0
    } else {
        Criterion::score(criteria, &t.ratings)?
    };
    let mut rubric = format!(
        "An earlier answer to this input was rated {score:.2} on a scale from 0 to 1 by the \
         people who used it."
    );
    if !t.comments.is_empty() {
        rubric.push_str(" What they said: ");
        rubric.push_str(&t.comments.join(" / "));
    }
    match (&t.output, t.failed) {
        (_, true) => rubric.push_str(" The earlier attempt failed without an answer."),
        (Some(out), false) => {
            rubric.push_str("\nThe earlier answer was:\n");
            rubric.push_str(&out.chars().take(4_000).collect::<String>());
        }
        (None, false) => {}
    }
    rubric.push_str(
        "\nScore the new answer by how well it does what that feedback asks for: better than \
         the earlier answer scores higher than the earlier rating, worse scores lower.",
    );
    Some(RunCase {
        id: t.interaction_id.to_string(),
        source: CaseSource::Interaction,
        input: t.input.clone(),
        checks: vec![Check::Judge {
            rubric,
            model: None,
        }],
        expected: None,
        tags: vec!["replayed".into()],
        prior_score: Some(score),
    })
}

/// Splits cases once per run: a validation set of `size` cases drawn evenly from each stratum
/// (source and first tag), and a training set of the rest, lowest prior score first.
fn split(cases: &[RunCase], size: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    use std::collections::BTreeMap;
    let mut strata: BTreeMap<(u8, String), Vec<usize>> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let source = match c.source {
            CaseSource::EvalCase => 0,
            CaseSource::Interaction => 1,
        };
        let tag = c.tags.first().cloned().unwrap_or_default();
        strata.entry((source, tag)).or_default().push(i);
    }
    let mut rng = SplitMix64::new(seed ^ SPLIT_SALT);
    for members in strata.values_mut() {
        // Fisher–Yates with the run's seed: the same cases and seed give the same split.
        for k in (1..members.len()).rev() {
            let j = rng.below(k + 1);
            members.swap(k, j);
        }
    }
    let total = cases.len();
    let size = size.min(total.saturating_sub(1));
    // Largest remainder: each stratum's share of the validation set, rounded fairly.
    let mut quotas: Vec<((u8, String), usize, f64)> = strata
        .iter()
        .map(|(k, m)| {
            let exact = size as f64 * m.len() as f64 / total as f64;
            (k.clone(), exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut given: usize = quotas.iter().map(|q| q.1).sum();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|a, b| quotas[*b].2.total_cmp(&quotas[*a].2));
    for i in order.iter().cycle().take(quotas.len() * 2) {
        if given >= size {
            break;
        }
        let stratum = &strata[&quotas[*i].0];
        if quotas[*i].1 < stratum.len() {
            quotas[*i].1 += 1;
            given += 1;
        }
    }
    let mut valset = Vec::with_capacity(size);
    let mut trainset = Vec::with_capacity(total - size);
    for (key, quota, _) in &quotas {
        let members = &strata[key];
        valset.extend(members.iter().take(*quota).copied());
        trainset.extend(members.iter().skip(*quota).copied());
    }
    // Top up from training when rounding left the validation set short.
    while valset.len() < size && !trainset.is_empty() {
        valset.push(trainset.remove(0));
    }
    valset.sort_unstable();
    trainset.sort_by(|a, b| {
        let score = |i: &usize| cases[*i].prior_score.unwrap_or(0.5);
        score(a).total_cmp(&score(b)).then(a.cmp(b))
    });
    (valset, trainset)
}

/// Keeps the split's draws apart from the run's other draws with the same seed.
const SPLIT_SALT: u64 = 0x5eed_0000_5917_0001;

#[cfg(test)]
mod tests;
