//! Deployments: which version serves an alias. A new version is inert until deployed (unless
//! the alias still follows the latest version); a canary tries a candidate on a growing share of
//! new sessions and the controller ([`DeploymentService::evaluate`]) promotes or rolls it back on
//! live feedback. Every alias move is compare-and-set and recorded with who, why and the
//! analysis that decided it.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::{Agent, AgentId, AgentStatus, Alias, AliasRoute, PROD_ALIAS};
use crate::clock::Clock;
use crate::deployment::analysis::{self, Bake, Check, Verdict};
use crate::deployment::{
    Canary, CanaryId, CanaryPolicy, CanaryStatus, Decision, Deployment, DeploymentId,
    DeploymentKind, split,
};
use crate::error::{ServiceError, StoreError};
use crate::events::{DomainEvent, EventData, payload};
use crate::page::{Page, PageRequest};
use crate::ports::{AgentStore, AliasMove, CanaryWrite, DeploymentStore, NoSignal, OutboxSignal};
use crate::principal::Principal;
use crate::services::agents::paginate;
use crate::validate::Problems;

/// Attempts of a user's alias move that lost a race with another move.
const MOVE_ATTEMPTS: usize = 3;
const MAX_REASON: usize = 2_000;

/// Input of `deploy_version`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployVersion {
    pub agent_id: AgentId,
    pub version: u32,
    /// Default `prod`.
    #[serde(default)]
    pub alias: Option<String>,
    /// Why; kept in the deployment history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Input of `start_canary`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartCanary {
    pub agent_id: AgentId,
    /// The candidate version.
    pub version: u32,
    /// Default `prod`; it must serve one version now (the baseline).
    #[serde(default)]
    pub alias: Option<String>,
    /// The candidate's share of new sessions at each step, rising, each 1-99 (default 5, 10,
    /// 25, 50).
    #[serde(default)]
    pub steps: Option<Vec<u32>>,
    /// Any canary policy setting to override (`min_rated_turns`, `step_min_seconds`,
    /// `objective`, ...).
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Input of `promote_canary`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteCanary {
    pub canary_id: CanaryId,
    /// Promote even when the statistics do not support it yet.
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Input of `rollback_agent`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackAgent {
    pub agent_id: AgentId,
    /// Default `prod`.
    #[serde(default)]
    pub alias: Option<String>,
    /// The version to serve; default: the canary's baseline, else the version the alias served
    /// before its last move.
    #[serde(default)]
    pub to_version: Option<u32>,
    pub reason: String,
}

/// What an alias move did.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Moved {
    pub agent: Agent,
    pub deployment: Deployment,
    /// The canary the move belongs to, as it is after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// What one controller check did.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    /// Another writer changed the canary first, or it is no longer watched: nothing done.
    Skipped,
    /// Decided and written.
    Decided(Box<Canary>),
}

/// Deployments and canaries.
#[derive(Clone)]
pub struct DeploymentService {
    agents: Arc<dyn AgentStore>,
    store: Arc<dyn DeploymentStore>,
    clock: Arc<dyn Clock>,
    policy: CanaryPolicy,
    signal: Arc<dyn OutboxSignal>,
    observer: Arc<dyn super::ProgressObserver>,
}

impl DeploymentService {
    /// `policy` is the default every canary starts from.
    pub fn new(
        agents: Arc<dyn AgentStore>,
        store: Arc<dyn DeploymentStore>,
        clock: Arc<dyn Clock>,
        policy: CanaryPolicy,
    ) -> Self {
        Self {
            agents,
            store,
            clock,
            policy,
            signal: Arc::new(NoSignal),
            observer: Arc::new(super::NoProgressObserver),
        }
    }

    /// Tells `observer` about every canary written.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn super::ProgressObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Wakes `signal` after every commit that wrote events.
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    pub fn default_policy(&self) -> &CanaryPolicy {
        &self.policy
    }

    /// Points an alias at one version (all traffic); it stops following new versions.
    ///
    /// # Errors
    /// `Invalid` naming `version` (no such version) or `alias`; `Conflict` when a canary holds
    /// the alias or the agent is archived.
    #[instrument(name = "deploy_version", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn deploy(
        &self,
        input: DeployVersion,
        actor: &Principal,
    ) -> Result<Moved, ServiceError> {
        let mut p = Problems::default();
        let alias = alias_name(&mut p, input.alias.as_deref());
        let reason = reason(&mut p, input.reason.as_deref(), "deployed");
        p.finish()?;
        self.retrying(|| async {
            let agent = self.live_agent(&input.agent_id).await?;
            self.require_version(&agent, "version", input.version)
                .await?;
            self.refuse_live_canary(&agent.agent_id, &alias).await?;
            let routes = vec![AliasRoute {
                version: input.version,
                weight: 100,
            }];
            self.move_alias(
                &agent,
                &alias,
                routes,
                DeploymentKind::Deploy,
                actor,
                &reason,
                None,
                None,
                Vec::new(),
            )
            .await
        })
        .await
    }

    /// Starts a canary: the alias routes the first step's share of new sessions to the
    /// candidate, the rest to the version it serves now.
    ///
    /// # Errors
    /// `Invalid` naming `version`, `alias`, `steps` or `policy.*`; `Conflict` when a canary
    /// holds the alias already or the agent is archived.
    #[instrument(name = "start_canary", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn start_canary(
        &self,
        input: StartCanary,
        actor: &Principal,
    ) -> Result<Moved, ServiceError> {
        let mut p = Problems::default();
        let alias = alias_name(&mut p, input.alias.as_deref());
        let reason = reason(&mut p, input.reason.as_deref(), "canary started");
        let mut policy = match &input.policy {
            Some(overrides) => match self.policy.overridden("policy", overrides) {
                Ok(policy) => policy,
                Err(e) => {
                    p.add(e);
                    self.policy.clone()
                }
            },
            None => self.policy.clone(),
        };
        if let Some(steps) = &input.steps {
            policy.steps.clone_from(steps);
            if let Err(mut e) = policy.check("policy") {
                if e.field == "policy.steps" {
                    e.field = "steps".into();
                }
                p.add(e);
            }
        }
        p.finish()?;
        let agent = self.live_agent(&input.agent_id).await?;
        self.require_version(&agent, "version", input.version)
            .await?;
        let current = agent.alias(&alias).ok_or_else(|| {
            ServiceError::invalid(
                "alias",
                format!("agent '{}' has no alias '{alias}'", agent.agent_id),
            )
        })?;
        self.refuse_live_canary(&agent.agent_id, &alias).await?;
        let [route] = current.routes.as_slice() else {
            return Err(ServiceError::Conflict(format!(
                "alias '{alias}' splits its traffic already; deploy one version before starting a canary"
            )));
        };
        if route.version == input.version {
            return Err(ServiceError::invalid(
                "version",
                format!("alias '{alias}' already serves version {}", input.version),
            ));
        }
        let now = self.clock.now_ms();
        let canary = Canary {
            history: Vec::new(),
            canary_id: CanaryId::generate(),
            agent_id: agent.agent_id.clone(),
            alias: alias.clone(),
            baseline: route.version,
            candidate: input.version,
            policy,
            status: CanaryStatus::Running,
            step: 0,
            started_at: now,
            step_started_at: now,
            updated_at: now,
            hard_limit_breaches: 0,
            last_decision: None,
            promoted_at: None,
            baseline_score: None,
            finished_at: None,
            started_by: actor.clone(),
            revision: 0,
        };
        let routes = canary.routes();
        let extra = vec![
            payload::CanaryStarted {
                canary: canary.clone(),
            }
            .into(),
        ];
        self.move_alias(
            &agent,
            &alias,
            routes,
            DeploymentKind::CanaryStarted,
            actor,
            &reason,
            Some(CanaryWrite {
                canary: &canary,
                expected_revision: None,
            }),
            None,
            extra,
        )
        .await
        .map_err(|e| match e {
            ServiceError::Store(StoreError::Conflict(_)) => ServiceError::Conflict(format!(
                "alias '{alias}' changed while the canary started (another deployment or canary); read it again and retry"
            )),
            other => other,
        })
    }

    /// A canary by id.
    ///
    /// # Errors
    /// `NotFound` naming the id.
    pub async fn canary(&self, canary_id: &CanaryId) -> Result<Canary, ServiceError> {
        self.store
            .canary(canary_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "canary",
                id: canary_id.to_string(),
            })
    }

    /// The newest canary of an alias.
    ///
    /// # Errors
    /// `NotFound` when the alias never had one.
    pub async fn latest_canary(
        &self,
        agent_id: &AgentId,
        alias: Option<&str>,
    ) -> Result<Canary, ServiceError> {
        let alias = alias.unwrap_or(PROD_ALIAS);
        self.store
            .latest_canary(agent_id, alias)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "canary",
                id: format!("of alias '{alias}' of agent {agent_id}"),
            })
    }

    /// Every move of every alias of an agent, oldest first.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent; `Invalid` for a bad cursor or limit.
    pub async fn list(
        &self,
        agent_id: &AgentId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Deployment>, ServiceError> {
        let page = PageRequest::parse(cursor, limit)?;
        self.agent(agent_id).await?;
        let rows = self.store.list_deployments(agent_id, &page).await?;
        Ok(paginate(rows, page.limit, |d| d.deployment_id.to_string()))
    }

    /// Promotes a running (or paused) canary: the candidate serves all traffic and the bake
    /// period starts. Without `force`, only when the rule says so now.
    ///
    /// # Errors
    /// `NotFound` for an unknown canary; `Conflict` when it is not running or paused, or the
    /// statistics do not support promotion and `force` is off.
    #[instrument(name = "promote_canary", skip_all, fields(canary_id = %input.canary_id))]
    pub async fn promote(
        &self,
        input: PromoteCanary,
        actor: &Principal,
    ) -> Result<Moved, ServiceError> {
        let mut p = Problems::default();
        let reason = reason(&mut p, input.reason.as_deref(), "promoted by hand");
        p.finish()?;
        let canary = self.canary(&input.canary_id).await?;
        if !canary.status.is_live() {
            return Err(ServiceError::Conflict(format!(
                "canary '{}' is {}; only a running or paused canary can be promoted",
                canary.canary_id,
                canary.status.as_str()
            )));
        }
        let now = self.clock.now_ms();
        let check = self.check(&canary, now).await?;
        if !input.force && !matches!(check.verdict, Verdict::Promote(_)) {
            return Err(ServiceError::Conflict(format!(
                "the statistics do not support promotion yet ({}); pass force: true to promote anyway",
                check.verdict.reason()
            )));
        }
        let mut next = canary.clone();
        analysis::promote(&mut next, Some(check.analysis.baseline.score_mean), now);
        next.updated_at = now;
        next.revision += 1;
        next.decided(decision(now, "promote", &reason, &check));
        let agent = self.agent(&canary.agent_id).await?;
        self.move_canary_alias(
            &agent,
            &canary,
            &next,
            DeploymentKind::CanaryPromoted,
            actor,
            &reason,
            Some(&check),
        )
        .await
    }

    /// Rolls an alias back at once: a canary's alias to its baseline, or any alias to
    /// `to_version` (default: what it served before its last move).
    ///
    /// # Errors
    /// `Invalid` naming `to_version` when there is nothing to roll back to or it is what the
    /// alias serves; `NotFound` for an unknown agent or alias.
    #[instrument(name = "rollback_agent", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn rollback(
        &self,
        input: RollbackAgent,
        actor: &Principal,
    ) -> Result<Moved, ServiceError> {
        let mut p = Problems::default();
        let alias = alias_name(&mut p, input.alias.as_deref());
        let reason = p.text("reason", &input.reason, 1, MAX_REASON);
        p.finish()?;
        self.retrying(|| async {
            let agent = self.agent(&input.agent_id).await?;
            let current = agent.alias(&alias).cloned().ok_or_else(|| {
                ServiceError::invalid(
                    "alias",
                    format!("agent '{}' has no alias '{alias}'", agent.agent_id),
                )
            })?;
            if let Some(canary) = self.store.latest_canary(&agent.agent_id, &alias).await?
                && (canary.status.is_live() || canary.status == CanaryStatus::Baking)
            {
                if let Some(to) = input.to_version
                    && to != canary.baseline
                {
                    return Err(ServiceError::invalid(
                        "to_version",
                        format!(
                            "canary '{}' on alias '{alias}' rolls back to its baseline, version {}",
                            canary.canary_id, canary.baseline
                        ),
                    ));
                }
                let now = self.clock.now_ms();
                let mut next = canary.clone();
                next.status = CanaryStatus::RolledBack;
                next.finished_at = Some(now);
                next.updated_at = now;
                next.revision += 1;
                next.decided(Decision {
                    at: now,
                    action: "roll_back".into(),
                    reason: reason.clone(),
                    analysis: serde_json::Value::Null,
                });
                return self
                    .move_canary_alias(
                        &agent,
                        &canary,
                        &next,
                        DeploymentKind::CanaryRolledBack,
                        actor,
                        &reason,
                        None,
                    )
                    .await;
            }
            let target = match input.to_version {
                Some(v) => v,
                None => {
                    self.previous_version(&agent.agent_id, &alias, &current)
                        .await?
                }
            };
            self.require_version(&agent, "to_version", target).await?;
            if current.routes.len() == 1 && current.routes[0].version == target {
                return Err(ServiceError::invalid(
                    "to_version",
                    format!("alias '{alias}' already serves version {target}"),
                ));
            }
            let routes = vec![AliasRoute {
                version: target,
                weight: 100,
            }];
            self.move_alias(
                &agent,
                &alias,
                routes,
                DeploymentKind::Rollback,
                actor,
                &reason,
                None,
                None,
                Vec::new(),
            )
            .await
        })
        .await
    }

    /// One controller check of a watched canary: decides by the rule and writes the outcome
    /// (compare-and-set: a second controller racing on the same canary changes nothing twice).
    ///
    /// # Errors
    /// `Store` when the store fails.
    #[instrument(name = "evaluate_canary", skip_all, fields(canary_id = %canary_id))]
    pub async fn evaluate(&self, canary_id: &CanaryId) -> Result<Evaluated, ServiceError> {
        let canary = self.canary(canary_id).await?;
        let now = self.clock.now_ms();
        let outcome = match canary.status {
            CanaryStatus::Running => self.decide_running(&canary, now).await,
            CanaryStatus::Baking => self.decide_baking(&canary, now).await,
            _ => return Ok(Evaluated::Skipped),
        };
        match outcome {
            Ok(canary) => Ok(Evaluated::Decided(Box::new(canary))),
            Err(ServiceError::Store(StoreError::Conflict(reason))) => {
                tracing::debug!(%reason, "another writer changed the canary first");
                Ok(Evaluated::Skipped)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks every watched canary whose last check is at least `min_interval_ms` old (the
    /// schedule's pass: time-based steps and timeouts when no traffic comes). Returns how many
    /// were decided.
    ///
    /// # Errors
    /// `Store` when the canaries cannot be listed; a failing canary is logged and skipped.
    pub async fn tick(&self, min_interval_ms: i64) -> Result<usize, ServiceError> {
        let now = self.clock.now_ms();
        let mut decided = 0;
        for canary in self.store.watched_canaries().await? {
            if !due(&canary, now, min_interval_ms) {
                continue;
            }
            match self.evaluate(&canary.canary_id).await {
                Ok(Evaluated::Decided(_)) => decided += 1,
                Ok(Evaluated::Skipped) => {}
                Err(e) => {
                    tracing::warn!(canary_id = %canary.canary_id, error = %e, "canary check failed")
                }
            }
        }
        Ok(decided)
    }

    /// The agents that have a watched canary.
    ///
    /// # Errors
    /// `Store` when the store fails.
    pub async fn watched_agents(&self) -> Result<std::collections::HashSet<AgentId>, ServiceError> {
        Ok(self
            .store
            .watched_canaries()
            .await?
            .into_iter()
            .map(|c| c.agent_id)
            .collect())
    }

    /// The watched canaries of one agent that are due for a check.
    ///
    /// # Errors
    /// `Store` when the store fails.
    pub async fn due_canaries(
        &self,
        agent_id: &AgentId,
        min_interval_ms: i64,
    ) -> Result<Vec<CanaryId>, ServiceError> {
        let now = self.clock.now_ms();
        Ok(self
            .store
            .watched_canaries()
            .await?
            .into_iter()
            .filter(|c| &c.agent_id == agent_id && due(c, now, min_interval_ms))
            .map(|c| c.canary_id)
            .collect())
    }

    async fn check(&self, canary: &Canary, now: i64) -> Result<Check, ServiceError> {
        let turns = self
            .store
            .turns_since(&canary.agent_id, canary.started_at)
            .await?;
        let (a, b) = analysis::arms(&turns, canary.baseline, canary.candidate, &canary.policy);
        let sessions = self
            .store
            .sessions_since(&canary.agent_id, &canary.alias, canary.step_started_at)
            .await?;
        let count = |v: u32| {
            sessions
                .iter()
                .find(|(version, _)| *version == v)
                .map_or(0, |(_, n)| *n)
        };
        Ok(analysis::decide(
            canary,
            &a,
            &b,
            [count(canary.baseline), count(canary.candidate)],
            now,
        ))
    }

    async fn decide_running(&self, canary: &Canary, now: i64) -> Result<Canary, ServiceError> {
        let check = self.check(canary, now).await?;
        let step = analysis::transition(canary, &check, now);
        let reason = check.verdict.reason().to_owned();
        match (step.routes, step.kind) {
            (Some(_), Some(kind)) => {
                let agent = self.agent(&canary.agent_id).await?;
                let moved = self
                    .move_canary_alias(
                        &agent,
                        canary,
                        &step.canary,
                        kind,
                        &Principal::controller(),
                        &reason,
                        Some(&check),
                    )
                    .await?;
                tracing::info!(action = check.verdict.action(), %reason, "canary decided");
                Ok(moved.canary.unwrap_or(step.canary))
            }
            _ => {
                let events: Vec<DomainEvent> = match check.verdict {
                    Verdict::Pause(_) => vec![DomainEvent::new(
                        &canary.agent_id,
                        now,
                        payload::CanaryPaused {
                            canary: step.canary.clone(),
                        },
                    )],
                    _ => Vec::new(),
                };
                self.save(canary, &step.canary, &events).await?;
                Ok(step.canary)
            }
        }
    }

    async fn decide_baking(&self, canary: &Canary, now: i64) -> Result<Canary, ServiceError> {
        let since = canary.promoted_at.unwrap_or(canary.updated_at);
        let turns = self.store.turns_since(&canary.agent_id, since).await?;
        let (_, candidate) =
            analysis::arms(&turns, canary.baseline, canary.candidate, &canary.policy);
        let verdict = analysis::bake(canary, &candidate, now);
        let mut next = canary.clone();
        next.updated_at = now;
        next.revision += 1;
        let (action, reason) = match &verdict {
            Bake::Watch(r) => ("hold", r.clone()),
            Bake::ImpactNegative { reason, .. } => ("impact_negative", reason.clone()),
            Bake::Baked(r) => ("baked", r.clone()),
        };
        next.decided(Decision {
            at: now,
            action: action.into(),
            reason: reason.clone(),
            analysis: serde_json::json!({
                "candidate": analysis::ArmReport::from(&candidate),
                "baseline_score": canary.baseline_score,
            }),
        });
        match verdict {
            Bake::Watch(_) => {
                self.save(canary, &next, &[]).await?;
                Ok(next)
            }
            Bake::Baked(_) => {
                next.status = CanaryStatus::Promoted;
                next.finished_at = Some(now);
                self.save(canary, &next, &[]).await?;
                Ok(next)
            }
            Bake::ImpactNegative { drop, .. } => {
                let rolled_back = canary.policy.auto_rollback;
                next.finished_at = Some(now);
                next.status = if rolled_back {
                    CanaryStatus::RolledBack
                } else {
                    CanaryStatus::Promoted
                };
                let impact = DomainEvent::new(
                    &canary.agent_id,
                    now,
                    payload::ImpactNegative {
                        canary: next.clone(),
                        change: drop,
                        rolled_back,
                    },
                );
                tracing::warn!(%reason, rolled_back, "negative impact after promotion");
                if rolled_back {
                    let agent = self.agent(&canary.agent_id).await?;
                    let routes = split(canary.baseline, canary.candidate, 0);
                    let moved = self
                        .move_alias(
                            &agent,
                            &canary.alias,
                            routes,
                            DeploymentKind::Rollback,
                            &Principal::controller(),
                            &format!("negative impact after promotion: {reason}"),
                            Some(CanaryWrite {
                                canary: &next,
                                expected_revision: Some(canary.revision),
                            }),
                            next.last_decision.as_ref().map(|d| d.analysis.clone()),
                            vec![impact.data],
                        )
                        .await?;
                    Ok(moved.canary.unwrap_or(next))
                } else {
                    self.save(canary, &next, &[impact]).await?;
                    Ok(next)
                }
            }
        }
    }

    /// Moves a canary's alias to the routes its new state stands for.
    #[allow(clippy::too_many_arguments)]
    async fn move_canary_alias(
        &self,
        agent: &Agent,
        canary: &Canary,
        next: &Canary,
        kind: DeploymentKind,
        actor: &Principal,
        reason: &str,
        check: Option<&Check>,
    ) -> Result<Moved, ServiceError> {
        let routes = match next.status {
            CanaryStatus::RolledBack => split(canary.baseline, canary.candidate, 0),
            _ => next.routes(),
        };
        let extra: EventData = match kind {
            DeploymentKind::CanaryStepAdvanced => payload::CanaryStepAdvanced {
                canary: next.clone(),
            }
            .into(),
            DeploymentKind::CanaryPromoted => payload::CanaryPromoted {
                canary: next.clone(),
            }
            .into(),
            _ => payload::CanaryRolledBack {
                canary: next.clone(),
            }
            .into(),
        };
        self.move_alias(
            agent,
            &canary.alias,
            routes,
            kind,
            actor,
            reason,
            Some(CanaryWrite {
                canary: next,
                expected_revision: Some(canary.revision),
            }),
            check.map(|c| serde_json::to_value(&c.analysis).unwrap_or_default()),
            vec![extra],
        )
        .await
    }

    /// Moves `alias` of `agent` to `routes`, compare-and-set, with its deployment record, the
    /// canary if given, `agent.deployed` and `extra` events.
    #[allow(clippy::too_many_arguments)]
    async fn move_alias(
        &self,
        agent: &Agent,
        alias: &str,
        routes: Vec<AliasRoute>,
        kind: DeploymentKind,
        actor: &Principal,
        reason: &str,
        canary: Option<CanaryWrite<'_>>,
        analysis: Option<serde_json::Value>,
        extra: Vec<EventData>,
    ) -> Result<Moved, ServiceError> {
        let now = self.clock.now_ms();
        let expected = agent.alias(alias).cloned();
        let moved = Alias {
            name: alias.to_owned(),
            routes: routes.clone(),
            follows_latest: false,
            since: now,
        };
        let deployment = Deployment {
            deployment_id: DeploymentId::generate(),
            agent_id: agent.agent_id.clone(),
            alias: alias.to_owned(),
            kind,
            from: expected
                .as_ref()
                .map(|a| a.routes.clone())
                .unwrap_or_default(),
            to: routes,
            actor: actor.clone(),
            reason: reason.to_owned(),
            canary_id: canary.map(|c| c.canary.canary_id.clone()),
            analysis,
            created_at: now,
        };
        let mut after = agent.clone();
        after.updated_at = now;
        match after.aliases.iter_mut().find(|a| a.name == alias) {
            Some(a) => *a = moved.clone(),
            None => after.aliases.push(moved.clone()),
        }
        let mut events = vec![DomainEvent::new(
            &agent.agent_id,
            now,
            payload::AgentDeployed {
                agent: after.clone(),
                deployment: deployment.clone(),
            },
        )];
        events.extend(
            extra
                .into_iter()
                .map(|data| DomainEvent::new(&agent.agent_id, now, data)),
        );
        let change = AliasMove {
            agent_id: agent.agent_id.clone(),
            expected,
            alias: moved,
            deployment: deployment.clone(),
        };
        self.store.move_alias(&change, canary, &events).await?;
        self.signal.notify();
        if let Some(c) = canary {
            self.observer.canary(None, c.canary);
        }
        tracing::debug!(alias, kind = kind.as_str(), actor = %actor, "alias moved");
        Ok(Moved {
            agent: after,
            deployment,
            canary: canary.map(|c| c.canary.clone()),
        })
    }

    async fn save(
        &self,
        before: &Canary,
        after: &Canary,
        events: &[DomainEvent],
    ) -> Result<(), ServiceError> {
        self.store
            .save_canary(
                CanaryWrite {
                    canary: after,
                    expected_revision: Some(before.revision),
                },
                events,
            )
            .await?;
        if !events.is_empty() {
            self.signal.notify();
        }
        self.observer.canary(Some(before), after);
        Ok(())
    }

    /// Runs a user's alias move again when another move got there first.
    async fn retrying<F, Fut>(&self, attempt: F) -> Result<Moved, ServiceError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Moved, ServiceError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Err(ServiceError::Store(StoreError::Conflict(_))) if tries < MOVE_ATTEMPTS => {}
                Err(ServiceError::Store(StoreError::Conflict(_))) => {
                    return Err(ServiceError::Conflict(
                        "the alias kept changing concurrently; read it again and retry".into(),
                    ));
                }
                other => return other,
            }
        }
    }

    /// The version an alias served before its last move.
    async fn previous_version(
        &self,
        agent_id: &AgentId,
        alias: &str,
        current: &Alias,
    ) -> Result<u32, ServiceError> {
        let mut page = PageRequest {
            after: None,
            limit: crate::page::MAX_PAGE_SIZE,
        };
        let mut last: Option<Deployment> = None;
        loop {
            let mut rows = self.store.list_deployments(agent_id, &page).await?;
            let more = rows.len() > page.limit as usize;
            rows.truncate(page.limit as usize);
            page.after = rows
                .last()
                .map(|d| crate::page::Cursor::after(d.deployment_id.to_string()));
            if let Some(d) = rows.into_iter().rev().find(|d| d.alias == alias) {
                last = Some(d);
            }
            if !more {
                break;
            }
        }
        let nothing = || {
            ServiceError::invalid(
                "to_version",
                format!(
                    "alias '{alias}' has nothing to roll back to: it never moved from another version; name one"
                ),
            )
        };
        let last = last.ok_or_else(nothing)?;
        match last.from.as_slice() {
            [only] if current.routes.len() != 1 || current.routes[0].version != only.version => {
                Ok(only.version)
            }
            _ => Err(nothing()),
        }
    }

    async fn refuse_live_canary(
        &self,
        agent_id: &AgentId,
        alias: &str,
    ) -> Result<(), ServiceError> {
        if let Some(c) = self.store.latest_canary(agent_id, alias).await?
            && (c.status.is_live() || c.status == CanaryStatus::Baking)
        {
            return Err(ServiceError::Conflict(format!(
                "canary '{}' ({}) holds alias '{alias}': promote or roll it back first",
                c.canary_id,
                c.status.as_str()
            )));
        }
        Ok(())
    }

    async fn require_version(
        &self,
        agent: &Agent,
        field: &str,
        version: u32,
    ) -> Result<(), ServiceError> {
        if version == 0
            || self
                .agents
                .get_version(&agent.agent_id, version)
                .await?
                .is_none()
        {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "agent '{}' has no version {version} (latest is {})",
                    agent.agent_id, agent.latest_version
                ),
            ));
        }
        Ok(())
    }

    async fn agent(&self, agent_id: &AgentId) -> Result<Agent, ServiceError> {
        self.agents
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| ServiceError::agent_not_found(agent_id))
    }

    async fn live_agent(&self, agent_id: &AgentId) -> Result<Agent, ServiceError> {
        let agent = self.agent(agent_id).await?;
        if agent.status == AgentStatus::Archived {
            return Err(ServiceError::Conflict(format!(
                "agent '{agent_id}' is archived and serves no traffic"
            )));
        }
        Ok(agent)
    }
}

fn due(canary: &Canary, now: i64, min_interval_ms: i64) -> bool {
    canary
        .last_decision
        .as_ref()
        .is_none_or(|d| now - d.at >= min_interval_ms)
}

fn decision(now: i64, action: &str, reason: &str, check: &Check) -> Decision {
    Decision {
        at: now,
        action: action.to_owned(),
        reason: reason.to_owned(),
        analysis: serde_json::to_value(&check.analysis).unwrap_or_default(),
    }
}

fn alias_name(p: &mut Problems, alias: Option<&str>) -> String {
    p.token("alias", alias.unwrap_or(PROD_ALIAS), 64)
}

fn reason(p: &mut Problems, reason: Option<&str>, default: &str) -> String {
    p.text("reason", reason.unwrap_or(default), 1, MAX_REASON)
}
