//! One iteration of a run, as the evolution worker takes it for each
//! `evolution.generation.requested` event. Iteration 0 scores the seed on the validation set;
//! each later one draws a parent from the Pareto front, runs it on a training minibatch, asks
//! the reflection model for a better component, and accepts the child only when it scores
//! strictly higher on the same minibatch (a merge of two front candidates, when enabled, takes
//! some iterations instead).
//!
//! A step is idempotent by run and iteration: it acts only when the run is running and waits
//! for exactly that iteration, and it writes the iteration's outcome, its candidates and the
//! request for the next one in one transaction guarded by the run's revision. Every paid model
//! result is cached per (candidate hash, case) the moment it arrives, with the iteration that
//! paid for it, so a step that crashes or pauses resumes without paying twice, and what a run
//! spent is the sum of what its cache entries paid.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::json;

use super::EvolutionService;
use crate::agent::{AgentVersion, VersionOrigin};
use crate::error::{ServiceError, StoreError};
use crate::events::{DomainEvent, payload};
use crate::evolution::checks::{self, CheckResult};
use crate::evolution::reflection::{self, Record};
use crate::evolution::{
    Candidate, CandidateId, CaseOutcome, Components, Evolution, EvolutionMode, EvolutionStatus,
    IterationRecord, MinibatchScores, Operator, RunCase, Spend, Winner, pareto,
};
use crate::llm::{ChatMessage, ChatRequest, LlmError, ToolSpec};
use crate::ports::CacheEntry;
use crate::proposal::{Rollout, VersionChanges};
use crate::services::agents::NewVersion;
use crate::services::deployments::StartCanary;
use crate::services::proposals::ExistingVersion;
use crate::session::{Role, TokenUsage};
use crate::stats::SplitMix64;

/// Longest answer kept in the cache and shown to the reflection model.
const MAX_KEPT_OUTPUT: usize = 8_000;
/// A score this close to 1 is perfect.
const PERFECT: f64 = 1.0 - 1e-9;
/// A case the seed scored at least this on counts as passed, for the regression rule.
const PASSED: f64 = 0.5;
/// Every how many iterations a merge is tried, when merging is on.
const MERGE_EVERY: u32 = 3;

/// What a step did.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The iteration ran and was saved; the next one is requested unless the run finished.
    Advanced {
        iteration: u32,
        outcome: String,
        finished: Option<EvolutionStatus>,
    },
    /// The run finished without another iteration (a stop rule held, or it failed).
    Finished(EvolutionStatus),
    /// The step ran out of its time slice (or the model failed transiently) and asked for the
    /// same iteration again; what it paid for is cached.
    Continued,
    /// Nothing to do: the run is not running, or it is past this iteration.
    Duplicate,
}

/// Why an iteration stopped before its end.
enum Halt {
    /// The step's time slice is over.
    Pause,
    /// A budget ran out in the middle of the iteration.
    Budget(String),
    /// The model failed in a way retrying may fix.
    Transient(String),
    /// The model cannot be used (not configured, key refused, unknown model).
    Permanent(String),
    Store(StoreError),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<ServiceError> for Halt {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(e) => Self::Store(e),
            other => Self::Permanent(other.to_string()),
        }
    }
}

/// What an iteration produced, before it is saved.
struct Outcome {
    outcome: &'static str,
    detail: String,
    parent: Option<CandidateId>,
    /// Every candidate it made, accepted or not.
    made: Vec<Candidate>,
}

/// The state one step works with.
struct Ctx<'a> {
    svc: &'a EvolutionService,
    run: &'a Evolution,
    seed: &'a AgentVersion,
    iteration: u32,
    deadline: Instant,
    /// Paid in this iteration so far, this attempt and earlier ones.
    spent: Mutex<Spend>,
    /// Every candidate of the run stored so far.
    stored: Vec<Candidate>,
}

impl EvolutionService {
    /// Runs iteration `iteration` of a run, once.
    ///
    /// # Errors
    /// `Store` when the store fails (the request comes again); a model failure is not an
    /// error here: it fails the run, or asks for the iteration again.
    pub async fn step(
        &self,
        evolution_id: &crate::evolution::EvolutionId,
        iteration: u32,
    ) -> Result<Step, ServiceError> {
        let before = self.store.evolution(evolution_id).await?;
        let step = self.advance(evolution_id, iteration).await?;
        if let Some(before) = before
            && step != Step::Duplicate
            && let Some(after) = self.store.evolution(evolution_id).await?
        {
            self.observer.evolution(&before, &after);
        }
        Ok(step)
    }

    async fn advance(
        &self,
        evolution_id: &crate::evolution::EvolutionId,
        iteration: u32,
    ) -> Result<Step, ServiceError> {
        let Some(run) = self.store.evolution(evolution_id).await? else {
            tracing::warn!(%evolution_id, "an iteration was requested for an unknown evolution");
            return Ok(Step::Duplicate);
        };
        if run.status != EvolutionStatus::Running || run.iteration != iteration {
            return Ok(Step::Duplicate);
        }
        let seed = match self.agents.get(&run.agent_id, Some(run.seed_version)).await {
            Ok(detail) => detail.version,
            Err(ServiceError::Store(e)) => return Err(e.into()),
            Err(e) => {
                return self
                    .fail(run, format!("the seed version is gone: {e}"))
                    .await;
            }
        };
        if iteration > 0
            && let Some(reason) = run.stop_rule(run.pool.len(), self.clock.now_ms())
        {
            return self.finish(run, reason).await;
        }
        let ctx = Ctx {
            svc: self,
            run: &run,
            seed: &seed,
            iteration,
            deadline: Instant::now() + Duration::from_secs(self.rules.step_seconds.max(1)),
            spent: Mutex::new(self.store.spent_in(&run.evolution_id, iteration).await?),
            stored: self.store.candidates(&run.evolution_id).await?,
        };
        let result = if iteration == 0 {
            ctx.seed_iteration().await
        } else {
            ctx.iteration().await
        };
        drop(ctx);
        match result {
            Ok(outcome) => self.save_iteration(run, outcome).await,
            Err(Halt::Pause) => {
                self.request_again(&run, "continued after its time slice")
                    .await?;
                Ok(Step::Continued)
            }
            Err(Halt::Budget(reason)) => {
                let mut run = run;
                run.spend
                    .add(&self.store.spent_in(&run.evolution_id, iteration).await?);
                self.finish(run, reason).await
            }
            Err(Halt::Transient(message)) => {
                if run.retries + 1 >= self.rules.max_retries.max(1) {
                    let attempts = run.retries + 1;
                    return self
                        .fail(
                            run,
                            format!("the model failed {attempts} times in a row: {message}"),
                        )
                        .await;
                }
                let mut next = run.clone();
                next.retries += 1;
                next.error = Some(message);
                self.save_request(&run, next).await?;
                Ok(Step::Continued)
            }
            Err(Halt::Permanent(message)) => self.fail(run, message).await,
            Err(Halt::Store(e)) => Err(e.into()),
        }
    }

    /// Asks for the run's current iteration again.
    pub(super) async fn request_again(
        &self,
        run: &Evolution,
        why: &str,
    ) -> Result<(), ServiceError> {
        tracing::info!(evolution_id = %run.evolution_id, iteration = run.iteration, why, "iteration requested again");
        self.save_request(run, run.clone()).await.map(|_| ())
    }

    /// Saves `next` (a touch of `run`) with a request for its iteration.
    async fn save_request(&self, run: &Evolution, mut next: Evolution) -> Result<(), ServiceError> {
        let now = self.clock.now_ms();
        next.updated_at = now;
        next.revision = run.revision + 1;
        let event = DomainEvent::new(
            &next.agent_id,
            now,
            payload::EvolutionGenerationRequested {
                evolution_id: next.evolution_id.clone(),
                iteration: next.iteration,
            },
        );
        match self
            .store
            .save_evolution(&next, run.revision, &[], &[event])
            .await
        {
            // Someone else moved the run on: their request stands.
            Ok(()) | Err(StoreError::Conflict(_)) => {
                self.signal.notify();
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn save_iteration(&self, run: Evolution, o: Outcome) -> Result<Step, ServiceError> {
        let now = self.clock.now_ms();
        let spent = self
            .store
            .spent_in(&run.evolution_id, run.iteration)
            .await?;
        let mut next = run.clone();
        next.spend.add(&spent);
        next.iteration += 1;
        next.retries = 0;
        next.error = None;
        next.updated_at = now;
        next.revision += 1;

        let mut pool: Vec<Candidate> = self
            .store
            .candidates(&run.evolution_id)
            .await?
            .into_iter()
            .filter(|c| run.pool.contains(&c.candidate_id))
            .collect();
        for c in o.made.iter().filter(|c| c.accepted) {
            next.pool.push(c.candidate_id.clone());
            pool.push(c.clone());
        }
        let means: Vec<f64> = pool.iter().filter_map(|c| c.val_mean).collect();
        let (best_i, best) =
            means
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |acc, (i, m)| {
                    if *m > acc.1 { (i, *m) } else { acc }
                });
        let improved = next.best_score.is_none_or(|b| best > b + 1e-12);
        if improved && !pool.is_empty() {
            next.best = Some(pool[best_i].candidate_id.clone());
            next.best_score = Some(best);
        }
        if run.iteration == 0 {
            next.seed_score = next.best_score;
            next.stale_iterations = 0;
        } else if improved {
            next.stale_iterations = 0;
        } else {
            next.stale_iterations += 1;
        }
        let mean_val = if means.is_empty() {
            0.0
        } else {
            means.iter().sum::<f64>() / means.len() as f64
        };
        let record = IterationRecord {
            iteration: run.iteration,
            outcome: o.outcome.to_owned(),
            detail: o.detail.clone(),
            parent: o.parent.clone(),
            child: o.made.last().map(|c| c.candidate_id.clone()),
            best_val: next.best_score.unwrap_or(0.0),
            mean_val,
            spend: spent,
            at: now,
        };
        next.history.push(record);

        let mut events = vec![DomainEvent::new(
            &next.agent_id,
            now,
            payload::EvolutionGenerationCompleted {
                evolution_id: next.evolution_id.clone(),
                iteration: run.iteration,
                outcome: o.outcome.to_owned(),
                detail: o.detail.clone(),
                best_val: next.best_score.unwrap_or(0.0),
                spend: next.spend,
            },
        )];
        for c in &o.made {
            events.push(if c.accepted {
                DomainEvent::new(
                    &next.agent_id,
                    now,
                    payload::EvolutionCandidateAccepted {
                        candidate: c.clone(),
                    },
                )
            } else {
                DomainEvent::new(
                    &next.agent_id,
                    now,
                    payload::EvolutionCandidateRejected {
                        candidate: c.clone(),
                    },
                )
            });
        }
        let stop = next.stop_rule(next.pool.len(), now);
        if stop.is_none() {
            events.push(DomainEvent::new(
                &next.agent_id,
                now,
                payload::EvolutionGenerationRequested {
                    evolution_id: next.evolution_id.clone(),
                    iteration: next.iteration,
                },
            ));
        }
        match self
            .store
            .save_evolution(&next, run.revision, &o.made, &events)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Step::Duplicate),
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        tracing::info!(
            evolution_id = %next.evolution_id,
            iteration = run.iteration,
            outcome = o.outcome,
            best = next.best_score.unwrap_or(0.0),
            metric_calls = next.spend.metric_calls,
            "evolution iteration"
        );
        let finished = match stop {
            Some(reason) => match self.finish(next, reason).await? {
                Step::Finished(status) => Some(status),
                _ => None,
            },
            None => None,
        };
        Ok(Step::Advanced {
            iteration: run.iteration,
            outcome: o.outcome.to_owned(),
            finished,
        })
    }

    /// Ends a run with `reason`: the best candidate, when it beats the seed enough and breaks
    /// few of the cases the seed passed, becomes a version and goes out by the run's mode.
    async fn finish(&self, run: Evolution, reason: String) -> Result<Step, ServiceError> {
        let candidates = self.store.candidates(&run.evolution_id).await?;
        let pool: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| run.pool.contains(&c.candidate_id))
            .collect();
        let mut stop_reason = reason;
        let mut winner = None;
        let seed = pool.iter().find(|c| c.operator == Operator::Seed);
        if let (Some(seed), false) = (seed, pool.is_empty()) {
            let scores: Vec<Vec<f64>> = pool.iter().map(|c| c.val_scores.clone()).collect();
            let best = pool[pareto::best_mean(&scores)];
            match self.keep(&run, seed, best) {
                Ok(improvement) => match self.roll_out(&run, best, improvement).await {
                    Ok(w) => winner = Some(w),
                    Err(e @ ServiceError::Store(_)) => return Err(e),
                    Err(e) => {
                        stop_reason
                            .push_str(&format!("; the winner could not be made a version: {e}"));
                    }
                },
                Err(why) => {
                    stop_reason.push_str("; ");
                    stop_reason.push_str(&why);
                }
            }
        }
        let now = self.clock.now_ms();
        let mut next = run.clone();
        next.status = EvolutionStatus::Completed;
        next.stop_reason = Some(stop_reason.clone());
        next.winner.clone_from(&winner);
        next.finished_at = Some(now);
        next.updated_at = now;
        next.revision += 1;
        let mut events = Vec::new();
        if let Some(w) = &winner {
            events.push(DomainEvent::new(
                &next.agent_id,
                now,
                payload::EvolutionCandidateSelected {
                    evolution_id: next.evolution_id.clone(),
                    candidate_id: w.candidate_id.clone(),
                    version: w.version,
                    proposal_id: w.proposal_id.clone(),
                    canary_id: w.canary_id.clone(),
                },
            ));
        }
        events.push(DomainEvent::new(
            &next.agent_id,
            now,
            payload::EvolutionCompleted {
                evolution_id: next.evolution_id.clone(),
                stop_reason,
                seed_score: next.seed_score,
                best_score: next.best_score,
                winner,
                spend: next.spend,
            },
        ));
        match self
            .store
            .save_evolution(&next, run.revision, &[], &events)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Step::Duplicate),
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        tracing::info!(evolution_id = %next.evolution_id, reason = next.stop_reason.as_deref().unwrap_or(""), "evolution completed");
        Ok(Step::Finished(EvolutionStatus::Completed))
    }

    /// The winner's improvement over the seed when it is kept; why not otherwise.
    fn keep(&self, run: &Evolution, seed: &Candidate, best: &Candidate) -> Result<f64, String> {
        if best.candidate_id == seed.candidate_id {
            return Err("no candidate scored better than the seed on validation".into());
        }
        let (s, b) = (seed.val_mean.unwrap_or(0.0), best.val_mean.unwrap_or(0.0));
        let improvement = b - s;
        if improvement + 1e-12 < run.settings.min_improvement {
            return Err(format!(
                "the best candidate scored {b:.3} against the seed's {s:.3}, less than the {:.2} \
                 a winner must gain",
                run.settings.min_improvement
            ));
        }
        let passed: Vec<usize> = seed
            .val_scores
            .iter()
            .enumerate()
            .filter(|(_, v)| **v >= PASSED)
            .map(|(i, _)| i)
            .collect();
        let broken = passed
            .iter()
            .filter(|i| best.val_scores.get(**i).is_some_and(|v| *v < PASSED))
            .count();
        let allowed = (run.settings.max_regression * passed.len() as f64).floor() as usize;
        if broken > allowed {
            return Err(format!(
                "the best candidate ({b:.3}) fails {broken} of the {} validation cases the seed \
                 passed; at most {allowed} may regress",
                passed.len()
            ));
        }
        Ok(improvement)
    }

    /// Makes the winner a version and sends it out: a proposal (`review`) or a canary
    /// (`auto`). Safe to repeat: a version, proposal or canary made before is reused.
    async fn roll_out(
        &self,
        run: &Evolution,
        best: &Candidate,
        improvement: f64,
    ) -> Result<Winner, ServiceError> {
        let version = self.version_of(run, best, improvement).await?;
        let mut winner = Winner {
            candidate_id: best.candidate_id.clone(),
            version,
            improvement,
            proposal_id: None,
            canary_id: None,
            rollout_error: None,
        };
        let principal =
            crate::principal::Principal::named(&format!("evolution:{}", run.evolution_id));
        match run.mode {
            EvolutionMode::Review => {
                match self
                    .propose(run, best, version, Rollout::Canary, &principal)
                    .await
                {
                    Ok(p) => winner.proposal_id = Some(p.proposal_id),
                    Err(e @ ServiceError::Store(_)) => return Err(e),
                    Err(e) => winner.rollout_error = Some(e.to_string()),
                }
            }
            EvolutionMode::Auto => {
                let existing = self
                    .deployments
                    .latest_canary(&run.agent_id, Some(&run.alias))
                    .await
                    .ok()
                    .filter(|c| c.candidate == version);
                if let Some(canary) = existing {
                    winner.canary_id = Some(canary.canary_id);
                } else {
                    match self
                        .deployments
                        .start_canary(
                            StartCanary {
                                agent_id: run.agent_id.clone(),
                                version,
                                alias: Some(run.alias.clone()),
                                steps: None,
                                policy: None,
                                reason: Some(format!(
                                    "evolution {} improved validation by {improvement:.3}",
                                    run.evolution_id
                                )),
                            },
                            &principal,
                        )
                        .await
                    {
                        Ok(moved) => winner.canary_id = moved.canary.map(|c| c.canary_id),
                        Err(e @ ServiceError::Store(_)) => return Err(e),
                        Err(e) => winner.rollout_error = Some(e.to_string()),
                    }
                }
            }
        }
        Ok(winner)
    }

    /// The version a candidate became, made now unless this run made it before.
    pub(super) async fn version_of(
        &self,
        run: &Evolution,
        candidate: &Candidate,
        improvement: f64,
    ) -> Result<u32, ServiceError> {
        let created_by = format!("evolution:{}", run.evolution_id);
        let seed = self
            .agents
            .get(&run.agent_id, Some(run.seed_version))
            .await?
            .version;
        let latest = self
            .agents
            .get(&run.agent_id, None)
            .await?
            .agent
            .latest_version;
        for v in ((run.seed_version + 1)..=latest).rev().take(50) {
            let made = self.agents.get(&run.agent_id, Some(v)).await?.version;
            if made.created_by == created_by && components_of(&made) == candidate.components {
                return Ok(v);
            }
        }
        let changes = changes_of(&seed, &candidate.components);
        let detail = self
            .agents
            .derive(NewVersion {
                agent_id: run.agent_id.clone(),
                base: Some(run.seed_version),
                expected_latest: None,
                changes,
                change_summary: Some(candidate.rationale.clone()),
                created_by,
                generation_step: 1,
                moves_aliases: false,
                origin: Some(VersionOrigin {
                    evolution_id: run.evolution_id.to_string(),
                    operator: candidate.operator.as_str().to_owned(),
                    improvement,
                }),
            })
            .await?;
        Ok(detail.version.version)
    }

    /// A proposal for an evolved version, or the one made for it before.
    pub(super) async fn propose(
        &self,
        run: &Evolution,
        candidate: &Candidate,
        version: u32,
        rollout: Rollout,
        proposer: &crate::principal::Principal,
    ) -> Result<crate::proposal::Proposal, ServiceError> {
        let source = format!("evolution:{}:{}", run.evolution_id, candidate.candidate_id);
        if let Some(p) = self
            .proposals
            .find_by_source(&run.agent_id, &source)
            .await?
        {
            return Ok(p);
        }
        let seed = self
            .agents
            .get(&run.agent_id, Some(run.seed_version))
            .await?
            .version;
        let score = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
        self.proposals
            .propose_existing(
                ExistingVersion {
                    agent_id: run.agent_id.clone(),
                    version,
                    base_version: run.seed_version,
                    changes: changes_of(&seed, &candidate.components),
                    rationale: format!(
                        "Evolution {} ({}): validation mean {} against the seed's {} on {} \
                         held-out cases. {}",
                        run.evolution_id,
                        candidate.operator.as_str(),
                        score(candidate.val_mean),
                        score(run.seed_score),
                        run.valset.len(),
                        candidate.rationale
                    ),
                    alias: run.alias.clone(),
                    rollout,
                    source,
                },
                proposer,
            )
            .await
    }

    async fn fail(&self, run: Evolution, error: String) -> Result<Step, ServiceError> {
        let now = self.clock.now_ms();
        let mut next = run.clone();
        next.status = EvolutionStatus::Failed;
        next.error = Some(error.clone());
        next.stop_reason = Some("failed".into());
        next.finished_at = Some(now);
        next.updated_at = now;
        next.revision += 1;
        let events = [DomainEvent::new(
            &next.agent_id,
            now,
            payload::EvolutionFailed {
                evolution_id: next.evolution_id.clone(),
                error: error.clone(),
                spend: next.spend,
            },
        )];
        match self
            .store
            .save_evolution(&next, run.revision, &[], &events)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(Step::Duplicate),
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        tracing::warn!(evolution_id = %next.evolution_id, %error, "evolution failed");
        Ok(Step::Finished(EvolutionStatus::Failed))
    }
}

/// The parts of a version an evolution rewrites: the instructions and the descriptions of
/// the capabilities the model sees as tools.
pub(super) fn components_of(v: &AgentVersion) -> Components {
    Components {
        instructions: v.instructions.clone(),
        capability_descriptions: v
            .capabilities
            .iter()
            .filter(|c| c.delegate_to.is_some())
            .map(|c| (c.name.clone(), c.description.clone()))
            .collect(),
    }
}

/// What a candidate changes in the seed.
fn changes_of(seed: &AgentVersion, c: &Components) -> VersionChanges {
    let mut changes = VersionChanges::default();
    if c.instructions != seed.instructions {
        changes.instructions = Some(c.instructions.clone());
    }
    let described: HashMap<&str, &str> = c
        .capability_descriptions
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_str()))
        .collect();
    let capabilities: Vec<_> = seed
        .capabilities
        .iter()
        .map(|cap| {
            let mut cap = cap.clone();
            if let Some(d) = described.get(cap.name.as_str()) {
                (*d).clone_into(&mut cap.description);
            }
            cap
        })
        .collect();
    if capabilities != seed.capabilities {
        changes.capabilities = Some(capabilities);
    }
    changes
}

/// The component names of a candidate, in the order iterations take turns on them.
fn component_names(c: &Components) -> Vec<&'static str> {
    let mut names = vec!["instructions"];
    if !c.capability_descriptions.is_empty() {
        names.push("capability descriptions");
    }
    names
}

fn component_text(c: &Components, name: &str) -> String {
    if name == "instructions" {
        c.instructions.clone()
    } else {
        c.capability_descriptions
            .iter()
            .map(|(n, d)| format!("{n}: {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `c` with component `name` replaced by `text`; why not when the text does not fit.
fn with_component(c: &Components, name: &str, text: &str) -> Result<Components, String> {
    let mut child = c.clone();
    if name == "instructions" {
        text.clone_into(&mut child.instructions);
        return Ok(child);
    }
    let mut described = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((n, d)) = line.split_once(':') else {
            return Err(format!("the line `{line}` is not `name: description`"));
        };
        described.push((n.trim().to_owned(), d.trim().to_owned()));
    }
    let names: Vec<&str> = c
        .capability_descriptions
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let given: Vec<&str> = described.iter().map(|(n, _)| n.as_str()).collect();
    if names != given {
        return Err(format!(
            "the capabilities must stay {} in that order (got {})",
            names.join(", "),
            given.join(", ")
        ));
    }
    child.capability_descriptions = described;
    Ok(child)
}

/// Function tools as the candidate describes them.
fn tools_of(seed: &AgentVersion, c: &Components) -> Vec<ToolSpec> {
    let mut tools = crate::services::conversation::delegation_tools(seed);
    for tool in &mut tools {
        if let Some((_, d)) = c
            .capability_descriptions
            .iter()
            .find(|(n, _)| *n == tool.name)
            && !d.is_empty()
        {
            d.clone_into(&mut tool.description);
        }
    }
    tools
}

fn mean(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        0.0
    } else {
        scores.iter().sum::<f64>() / scores.len() as f64
    }
}

fn kept(text: &str) -> String {
    text.chars().take(MAX_KEPT_OUTPUT).collect()
}

impl Ctx<'_> {
    fn settings(&self) -> &crate::evolution::EvolutionSettings {
        &self.run.settings
    }

    fn candidate(
        &self,
        parents: Vec<CandidateId>,
        operator: Operator,
        components: Components,
        rationale: String,
    ) -> Candidate {
        Candidate {
            candidate_id: CandidateId::generate(),
            evolution_id: self.run.evolution_id.clone(),
            iteration: self.iteration,
            parents,
            operator,
            hash: components.hash(&self.run.model),
            components,
            minibatch: None,
            val_scores: Vec::new(),
            val_mean: None,
            accepted: false,
            rationale,
            created_at: self.svc.clock.now_ms(),
        }
    }

    /// Iteration 0: the seed on the validation set.
    async fn seed_iteration(&self) -> Result<Outcome, Halt> {
        let components = components_of(self.seed);
        let val = self.run.validation_cases();
        let outcomes = self.score(&components, &val).await?;
        let scores: Vec<f64> = outcomes.iter().map(|o| o.score).collect();
        let mut seed = self.candidate(
            Vec::new(),
            Operator::Seed,
            components,
            format!(
                "version {} as it served alias '{}'",
                self.run.seed_version, self.run.alias
            ),
        );
        seed.val_mean = Some(mean(&scores));
        seed.val_scores = scores;
        seed.accepted = true;
        Ok(Outcome {
            outcome: "seeded",
            detail: format!(
                "version {} scored {:.3} on {} validation cases",
                self.run.seed_version,
                seed.val_mean.unwrap_or(0.0),
                val.len()
            ),
            parent: None,
            made: vec![seed],
        })
    }

    fn pool(&self) -> Vec<&Candidate> {
        self.run
            .pool
            .iter()
            .filter_map(|id| self.stored.iter().find(|c| &c.candidate_id == id))
            .collect()
    }

    fn rng(&self) -> SplitMix64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.run.evolution_id.as_str().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        SplitMix64::new(
            self.settings().seed
                ^ h
                ^ u64::from(self.iteration).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )
    }

    async fn iteration(&self) -> Result<Outcome, Halt> {
        let pool = self.pool();
        if pool.is_empty() {
            return Err(Halt::Permanent("the run has no scored seed".into()));
        }
        let mut rng = self.rng();
        let merge_on = self
            .settings()
            .merge
            .unwrap_or_else(|| component_names(&pool[0].components).len() > 1);
        let s = self.settings();
        let merge_cost = u32::try_from(3 * s.minibatch_size + s.valset_size).unwrap_or(u32::MAX);
        if merge_on
            && self.iteration.is_multiple_of(MERGE_EVERY)
            && self.run.spend.metric_calls + merge_cost <= s.budget.max_metric_calls
            && let Some((a, b, child)) = self.merge_pair(&pool, &mut rng)
        {
            return self.merge(a, b, child).await;
        }
        let scores: Vec<Vec<f64>> = pool.iter().map(|c| c.val_scores.clone()).collect();
        let parent = pool[pareto::pick(&scores, &mut rng)];
        self.reflect(parent).await
    }

    async fn reflect(&self, parent: &Candidate) -> Result<Outcome, Halt> {
        let batch = self.run.minibatch(self.iteration);
        if batch.is_empty() {
            return Err(Halt::Permanent("the run has no training cases".into()));
        }
        let parent_out = self.score(&parent.components, &batch).await?;
        if parent_out.iter().all(|o| o.score >= PERFECT) {
            return Ok(Outcome {
                outcome: "skipped",
                detail: format!(
                    "the parent answered all {} minibatch cases perfectly",
                    batch.len()
                ),
                parent: Some(parent.candidate_id.clone()),
                made: Vec::new(),
            });
        }
        let names = component_names(&parent.components);
        let name = names[(self.iteration as usize - 1) % names.len()];
        let current = component_text(&parent.components, name);
        let records: Vec<Record> = batch
            .iter()
            .zip(&parent_out)
            .map(|(case, out)| Record {
                input: case.input.clone(),
                output: out.output.clone(),
                feedback: match &case.expected {
                    Some(e) => format!("{} (a reference answer: {e})", out.feedback),
                    None => out.feedback.clone(),
                },
                score: out.score,
            })
            .collect();
        let reply = self.reflection(parent, name, &current, &records).await?;
        let refuse = |detail: String| Outcome {
            outcome: "refused",
            detail,
            parent: Some(parent.candidate_id.clone()),
            made: Vec::new(),
        };
        let Some((text, rationale)) = reply else {
            return Ok(refuse(
                "the reflection's reply held no new text to read".into(),
            ));
        };
        let inputs: Vec<&str> = self.run.cases.iter().map(|c| c.input.as_str()).collect();
        if let Err(why) = reflection::screen(&current, &text, &inputs) {
            return Ok(refuse(format!("new {name} refused: {why}")));
        }
        let child_components = match with_component(&parent.components, name, &text) {
            Ok(c) => c,
            Err(why) => return Ok(refuse(format!("new {name} refused: {why}"))),
        };
        let mut child = self.candidate(
            vec![parent.candidate_id.clone()],
            Operator::Reflection,
            child_components,
            rationale,
        );
        if child.hash == parent.hash
            || self
                .stored
                .iter()
                .any(|c| c.hash == child.hash && !c.accepted)
        {
            return Ok(refuse(format!(
                "the new {name} is one the run has tried already"
            )));
        }
        let child_out = self.score(&child.components, &batch).await?;
        let minibatch = MinibatchScores {
            case_ids: batch.iter().map(|c| c.id.clone()).collect(),
            parent: parent_out.iter().map(|o| o.score).collect(),
            child: child_out.iter().map(|o| o.score).collect(),
        };
        let (p, c) = (minibatch.parent_total(), minibatch.child_total());
        child.minibatch = Some(minibatch);
        if c > p + 1e-9 {
            self.validate(&mut child).await?;
            Ok(Outcome {
                outcome: "accepted",
                detail: format!(
                    "new {name}: minibatch {p:.2} → {c:.2}; validation mean {:.3}",
                    child.val_mean.unwrap_or(0.0)
                ),
                parent: Some(parent.candidate_id.clone()),
                made: vec![child],
            })
        } else {
            Ok(Outcome {
                outcome: "rejected",
                detail: format!("new {name}: minibatch {p:.2} → {c:.2}, not higher"),
                parent: Some(parent.candidate_id.clone()),
                made: vec![child],
            })
        }
    }

    async fn validate(&self, child: &mut Candidate) -> Result<(), Halt> {
        let val = self.run.validation_cases();
        let outcomes = self.score(&child.components, &val).await?;
        child.val_scores = outcomes.iter().map(|o| o.score).collect();
        child.val_mean = Some(mean(&child.val_scores));
        child.accepted = true;
        Ok(())
    }

    /// Two front candidates with a common ancestor whose changes touch different parts, and
    /// the child that takes each part from the side that changed it. Pairs whose child the run
    /// made before are passed over.
    fn merge_pair<'c>(
        &self,
        pool: &[&'c Candidate],
        rng: &mut SplitMix64,
    ) -> Option<(&'c Candidate, &'c Candidate, Components)> {
        let scores: Vec<Vec<f64>> = pool.iter().map(|c| c.val_scores.clone()).collect();
        let counts = pareto::front_counts(&scores);
        let front: Vec<&Candidate> = pool
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n > 0)
            .map(|(c, _)| *c)
            .collect();
        let mut pairs: Vec<(usize, usize)> = (0..front.len())
            .flat_map(|i| ((i + 1)..front.len()).map(move |j| (i, j)))
            .collect();
        for k in (1..pairs.len()).rev() {
            pairs.swap(k, rng.below(k + 1));
        }
        let tried: HashSet<&str> = self.stored.iter().map(|c| c.hash.as_str()).collect();
        for (i, j) in pairs {
            let (a, b) = (front[i], front[j]);
            let Some(ancestor) = self.common_ancestor(a, b) else {
                continue;
            };
            let child = combine(&ancestor.components, &a.components, &b.components, a, b)?;
            if child == a.components || child == b.components {
                continue;
            }
            if tried.contains(child.hash(&self.run.model).as_str()) {
                continue;
            }
            return Some((a, b, child));
        }
        None
    }

    fn common_ancestor(&self, a: &Candidate, b: &Candidate) -> Option<&Candidate> {
        let by_id: HashMap<&CandidateId, &Candidate> =
            self.stored.iter().map(|c| (&c.candidate_id, c)).collect();
        let ancestors = |start: &Candidate| -> Vec<CandidateId> {
            let mut seen = Vec::new();
            let mut queue = std::collections::VecDeque::from(start.parents.clone());
            while let Some(id) = queue.pop_front() {
                if seen.contains(&id) {
                    continue;
                }
                if let Some(c) = by_id.get(&id) {
                    queue.extend(c.parents.iter().cloned());
                }
                seen.push(id);
            }
            seen
        };
        let of_a = ancestors(a);
        ancestors(b)
            .into_iter()
            .find(|id| of_a.contains(id))
            .and_then(|id| by_id.get(&id).copied())
    }

    async fn merge(
        &self,
        a: &Candidate,
        b: &Candidate,
        components: Components,
    ) -> Result<Outcome, Halt> {
        let batch = self.run.minibatch(self.iteration);
        let out_a = self.score(&a.components, &batch).await?;
        let out_b = self.score(&b.components, &batch).await?;
        let better = if out_a.iter().map(|o| o.score).sum::<f64>()
            >= out_b.iter().map(|o| o.score).sum::<f64>()
        {
            &out_a
        } else {
            &out_b
        };
        let mut child = self.candidate(
            vec![a.candidate_id.clone(), b.candidate_id.clone()],
            Operator::Merge,
            components,
            format!(
                "merged {} and {}: each part from the side that changed it",
                a.candidate_id, b.candidate_id
            ),
        );
        let child_out = self.score(&child.components, &batch).await?;
        let minibatch = MinibatchScores {
            case_ids: batch.iter().map(|c| c.id.clone()).collect(),
            parent: better.iter().map(|o| o.score).collect(),
            child: child_out.iter().map(|o| o.score).collect(),
        };
        let (p, c) = (minibatch.parent_total(), minibatch.child_total());
        child.minibatch = Some(minibatch);
        // A merge only needs to match the better parent: it is built from proven parts.
        if c + 1e-9 >= p {
            self.validate(&mut child).await?;
            Ok(Outcome {
                outcome: "merged",
                detail: format!(
                    "merge: minibatch {p:.2} → {c:.2}; validation mean {:.3}",
                    child.val_mean.unwrap_or(0.0)
                ),
                parent: Some(a.candidate_id.clone()),
                made: vec![child],
            })
        } else {
            Ok(Outcome {
                outcome: "rejected",
                detail: format!("merge: minibatch {p:.2} → {c:.2}, below the better parent"),
                parent: Some(a.candidate_id.clone()),
                made: vec![child],
            })
        }
    }

    /// The reflection's new text and rationale for `name` of `parent`; `None` when the reply
    /// cannot be read. Cached per parent, iteration and component, so a resumed iteration
    /// gets the same child without paying again.
    async fn reflection(
        &self,
        parent: &Candidate,
        name: &str,
        current: &str,
        records: &[Record],
    ) -> Result<Option<(String, String)>, Halt> {
        let key = format!("reflect:{}:{}:{name}", parent.hash, self.iteration);
        if let Some(hit) = self
            .svc
            .store
            .cached(&self.run.evolution_id, std::slice::from_ref(&key))
            .await?
            .into_iter()
            .next()
        {
            return Ok(read_reflection(&hit.value));
        }
        self.check_limits()?;
        let model = self
            .settings()
            .reflection_model
            .clone()
            .unwrap_or_else(|| self.run.model.clone());
        let request = ChatRequest {
            model: model.clone(),
            messages: reflection::prompt(name, current, records),
            tools: Vec::new(),
            temperature: Some(0.7),
            top_p: None,
            max_tokens: Some(reflection::max_tokens(current)),
        };
        let (content, spend) = match self.call(request).await {
            Ok((content, spend)) => (content, spend),
            Err(LlmError::Invalid(_)) => (
                String::new(),
                self.spend_of(&model, TokenUsage::default(), 1, 0),
            ),
            Err(e) => return Err(halt_of(e)),
        };
        let parsed = reflection::parse(&content, current);
        let value = match &parsed {
            Some((text, rationale)) => json!({"text": text, "rationale": rationale}),
            None => json!({"unreadable": kept(&content)}),
        };
        self.keep_paid(key, spend, value).await?;
        Ok(parsed)
    }

    /// Scores `components` on `cases`, in order: cached results first, then the rest, a few
    /// at a time, each cached the moment it is paid for.
    async fn score(
        &self,
        components: &Components,
        cases: &[&RunCase],
    ) -> Result<Vec<CaseOutcome>, Halt> {
        let hash = components.hash(&self.run.model);
        let keys: Vec<String> = cases
            .iter()
            .map(|c| format!("eval:{hash}:{}", c.id))
            .collect();
        let mut found: HashMap<String, CaseOutcome> = HashMap::new();
        for hit in self.svc.store.cached(&self.run.evolution_id, &keys).await? {
            if let Ok(outcome) = serde_json::from_value::<CaseOutcome>(hit.value) {
                found.insert(hit.key, outcome);
            }
        }
        let missing: Vec<(String, &RunCase)> = keys
            .iter()
            .zip(cases)
            .filter(|(k, _)| !found.contains_key(*k))
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        let calls: Vec<_> = missing
            .into_iter()
            .map(|(key, case)| self.pay(components, key, case))
            .collect();
        let paid: Vec<(String, CaseOutcome)> = stream::iter(calls)
            .buffer_unordered(self.svc.rules.concurrency.max(1))
            .try_collect()
            .await?;
        found.extend(paid);
        Ok(keys
            .iter()
            .map(|k| found.remove(k).expect("every key was found or paid"))
            .collect())
    }

    /// Scores one case and caches the result.
    async fn pay(
        &self,
        components: &Components,
        key: String,
        case: &RunCase,
    ) -> Result<(String, CaseOutcome), Halt> {
        self.check_limits()?;
        let (outcome, spend) = self.evaluate(components, case).await?;
        let value = serde_json::to_value(&outcome).unwrap_or_default();
        self.keep_paid(key.clone(), spend, value).await?;
        Ok((key, outcome))
    }

    async fn keep_paid(
        &self,
        key: String,
        spend: Spend,
        value: serde_json::Value,
    ) -> Result<(), Halt> {
        self.svc
            .store
            .cache(
                &self.run.evolution_id,
                &[CacheEntry {
                    key,
                    iteration: self.iteration,
                    spend,
                    value,
                }],
            )
            .await?;
        self.spent.lock().expect("spend lock").add(&spend);
        Ok(())
    }

    /// Stops before another paid call when the step's time slice or a budget is used up.
    fn check_limits(&self) -> Result<(), Halt> {
        let b = &self.settings().budget;
        let spent = *self.spent.lock().expect("spend lock");
        if self.run.spend.cost_usd + spent.cost_usd >= b.max_cost_usd {
            return Err(Halt::Budget(format!(
                "cost budget used (USD {:.4} of {:.2})",
                self.run.spend.cost_usd + spent.cost_usd,
                b.max_cost_usd
            )));
        }
        let elapsed = (self.svc.clock.now_ms() - self.run.started_at) / 1000;
        if elapsed >= i64::try_from(b.max_seconds).unwrap_or(i64::MAX) {
            return Err(Halt::Budget(format!(
                "time budget used ({elapsed} s of {})",
                b.max_seconds
            )));
        }
        if Instant::now() >= self.deadline {
            return Err(Halt::Pause);
        }
        Ok(())
    }

    /// One metric call: the candidate answers the case, then its checks score the answer.
    async fn evaluate(
        &self,
        components: &Components,
        case: &RunCase,
    ) -> Result<(CaseOutcome, Spend), Halt> {
        let p = &self.seed.parameters;
        let request = ChatRequest {
            model: self.run.model.clone(),
            messages: vec![
                ChatMessage::new(Role::System, components.instructions.clone()),
                ChatMessage::new(Role::User, case.input.clone()),
            ],
            tools: tools_of(self.seed, components),
            temperature: p.temperature,
            top_p: p.top_p,
            max_tokens: p.max_tokens,
        };
        let mut spend = Spend {
            metric_calls: 1,
            ..Spend::default()
        };
        let mut unusable = None;
        let answer = match self.call(request).await {
            Ok((answer, s)) => {
                spend.add(&s);
                answer
            }
            Err(LlmError::Invalid(why)) => {
                spend.llm_calls += 1;
                unusable = Some(format!("the model gave no usable answer ({why})"));
                String::new()
            }
            Err(LlmError::Rejected { status, message }) if !permanent_status(status) => {
                spend.llm_calls += 1;
                unusable = Some(format!(
                    "the provider refused this input (HTTP {status}): {message}"
                ));
                String::new()
            }
            Err(e) => return Err(halt_of(e)),
        };
        let mut results = Vec::with_capacity(case.checks.len());
        for check in &case.checks {
            if let Some(r) = check.evaluate(&answer) {
                results.push(r);
                continue;
            }
            let crate::evolution::Check::Judge { rubric, model } = check else {
                continue;
            };
            let model = model
                .clone()
                .or_else(|| self.settings().judge_model.clone())
                .unwrap_or_else(|| self.run.model.clone());
            let request = ChatRequest {
                model,
                messages: checks::judge_prompt(
                    rubric,
                    &case.input,
                    case.expected.as_deref(),
                    &answer,
                ),
                tools: Vec::new(),
                temperature: Some(0.0),
                top_p: None,
                max_tokens: Some(300),
            };
            match self.call(request).await {
                Ok((reply, s)) => {
                    spend.add(&s);
                    results.push(checks::read_judgement(&reply));
                }
                Err(LlmError::Invalid(why)) => {
                    spend.llm_calls += 1;
                    results.push(CheckResult {
                        score: 0.0,
                        feedback: format!("the judge gave no usable answer ({why})"),
                    });
                }
                Err(e) => return Err(halt_of(e)),
            }
        }
        let combined = checks::combine(&results);
        let feedback = match unusable {
            Some(why) => why,
            None => combined.feedback,
        };
        Ok((
            CaseOutcome {
                case_id: case.id.clone(),
                output: kept(&answer),
                score: if answer.is_empty() {
                    0.0
                } else {
                    combined.score
                },
                feedback,
            },
            spend,
        ))
    }

    /// One model call with the run's deadline per call: the answer's text (tool calls as
    /// `→ name(arguments)` lines) and what it cost.
    async fn call(&self, request: ChatRequest) -> Result<(String, Spend), LlmError> {
        let deadline =
            Instant::now() + Duration::from_secs(self.settings().call_timeout_seconds.max(1));
        let model = request.model.clone();
        let response = self.svc.model.complete(request, deadline).await?;
        let mut text = response.content.unwrap_or_default();
        for call in &response.tool_calls {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("→ {}({})", call.name, call.arguments));
        }
        let priced = if response.model.is_empty() {
            model
        } else {
            response.model
        };
        Ok((text, self.spend_of(&priced, response.usage, 1, 0)))
    }

    fn spend_of(&self, model: &str, usage: TokenUsage, llm_calls: u32, metric_calls: u32) -> Spend {
        Spend {
            metric_calls,
            llm_calls,
            tokens: usage.prompt_tokens + usage.completion_tokens,
            cost_usd: self
                .svc
                .prices
                .cost(model, usage.prompt_tokens, usage.completion_tokens)
                .unwrap_or(0.0),
        }
    }
}

/// Each part of the child from the side that changed it from the ancestor; `None` when both
/// changed the same part (nothing to combine) or neither changed anything.
fn combine(
    ancestor: &Components,
    a: &Components,
    b: &Components,
    ca: &Candidate,
    cb: &Candidate,
) -> Option<Components> {
    let prefer_a = ca.val_mean.unwrap_or(0.0) >= cb.val_mean.unwrap_or(0.0);
    let pick = |anc: &String, x: &String, y: &String| -> Option<String> {
        match (x != anc, y != anc) {
            (true, false) => Some(x.clone()),
            (false, true) => Some(y.clone()),
            (false, false) => Some(anc.clone()),
            (true, true) => None,
        }
    };
    let mut from_both = (false, false);
    let instructions = match pick(&ancestor.instructions, &a.instructions, &b.instructions) {
        Some(text) => text,
        None if prefer_a => a.instructions.clone(),
        None => b.instructions.clone(),
    };
    from_both.0 |= instructions == a.instructions && a.instructions != ancestor.instructions;
    from_both.1 |= instructions == b.instructions && b.instructions != ancestor.instructions;
    let mut descriptions = Vec::new();
    for (k, (name, anc)) in ancestor.capability_descriptions.iter().enumerate() {
        let x = a.capability_descriptions.get(k).map_or(anc, |(_, d)| d);
        let y = b.capability_descriptions.get(k).map_or(anc, |(_, d)| d);
        let chosen = match pick(anc, x, y) {
            Some(d) => d,
            None if prefer_a => x.clone(),
            None => y.clone(),
        };
        from_both.0 |= chosen == *x && x != anc;
        from_both.1 |= chosen == *y && y != anc;
        descriptions.push((name.clone(), chosen));
    }
    (from_both.0 && from_both.1).then_some(Components {
        instructions,
        capability_descriptions: descriptions,
    })
}

fn read_reflection(value: &serde_json::Value) -> Option<(String, String)> {
    let text = value.get("text")?.as_str()?.to_owned();
    let rationale = value
        .get("rationale")
        .and_then(|r| r.as_str())
        .unwrap_or_default()
        .to_owned();
    Some((text, rationale))
}

/// Provider refusals that no other input would change: a bad key, no access, no such model.
fn permanent_status(status: u16) -> bool {
    matches!(status, 401 | 403 | 404)
}

fn halt_of(e: LlmError) -> Halt {
    match e {
        LlmError::NotConfigured(_) => Halt::Permanent(e.to_string()),
        LlmError::Rejected { status, .. } if permanent_status(status) => {
            Halt::Permanent(e.to_string())
        }
        other => Halt::Transient(other.to_string()),
    }
}
