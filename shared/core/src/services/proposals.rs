//! Reviewed proposals (human in the loop): a proposed change becomes a version only when enough
//! reviewers approve it, and then goes live through a canary or a deployment. Reviewers are the
//! authenticated principals, never a name the caller types; a proposer cannot approve their own
//! proposal.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::{AgentId, PROD_ALIAS};
use crate::clock::Clock;
use crate::error::{ServiceError, StoreError};
use crate::events::{DomainEvent, payload};
use crate::page::{Page, PageRequest};
use crate::ports::{NoSignal, OutboxSignal, ProposalStore};
use crate::principal::Principal;
use crate::proposal::{
    Proposal, ProposalId, ProposalStatus, Review, ReviewDecision, Rollout, VersionChanges,
};
use crate::services::agents::{AgentDetail, AgentService, NewVersion, paginate};
use crate::services::deployments::{DeployVersion, DeploymentService, Moved, StartCanary};
use crate::validate::Problems;

const MAX_RATIONALE: usize = 4_000;
const MAX_COMMENT: usize = 4_000;

/// Who reviews and how many approvals a proposal needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewRules {
    /// Principals allowed to review; empty lets any authenticated principal review.
    pub reviewers: Vec<Principal>,
    /// Approvals a proposal needs; default min(2, number of reviewers), 1 with no list.
    pub required_approvals: Option<u32>,
    /// How long a proposal waits for reviews, in milliseconds.
    pub ttl_ms: i64,
}

impl Default for ReviewRules {
    fn default() -> Self {
        Self {
            reviewers: Vec::new(),
            required_approvals: None,
            ttl_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl ReviewRules {
    pub fn required(&self) -> u32 {
        self.required_approvals.unwrap_or_else(|| {
            if self.reviewers.is_empty() {
                1
            } else {
                u32::try_from(self.reviewers.len().min(2)).unwrap_or(2)
            }
        })
    }
}

/// Input of `propose_version`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeVersion {
    pub agent_id: AgentId,
    /// The version the changes apply to.
    pub base_version: u32,
    pub changes: VersionChanges,
    /// Why the change should be made.
    pub rationale: String,
    /// How the approved version goes live: `canary` (default) or `deploy`.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// A version that exists already, proposed for review.
#[derive(Debug, Clone)]
pub struct ExistingVersion {
    pub agent_id: AgentId,
    pub version: u32,
    /// The version it was made from.
    pub base_version: u32,
    /// What it changes from the base, for reviewers.
    pub changes: VersionChanges,
    pub rationale: String,
    pub alias: String,
    pub rollout: Rollout,
    /// What made it: `evolution:<id>`.
    pub source: String,
}

/// Input of `list_proposals`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProposals {
    #[serde(default)]
    pub agent_id: Option<AgentId>,
    /// `pending`, `changes_requested`, `rejected`, `expired` or `applied`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Input of `review_proposal`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewProposal {
    pub proposal_id: ProposalId,
    /// `approve`, `reject` or `request_changes`.
    pub decision: ReviewDecision,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What a review did: the proposal after it and, once approved, the version it became and how
/// it went live.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Reviewed {
    pub proposal: Proposal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<AgentDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Moved>,
    /// Why the rollout did not happen, when the version was made but could not go live (a
    /// canary holds `prod`, say): start it by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_error: Option<String>,
}

/// Proposals and reviews.
#[derive(Clone)]
pub struct ProposalService {
    agents: AgentService,
    deployments: DeploymentService,
    store: Arc<dyn ProposalStore>,
    clock: Arc<dyn Clock>,
    rules: ReviewRules,
    signal: Arc<dyn OutboxSignal>,
}

impl ProposalService {
    pub fn new(
        agents: AgentService,
        deployments: DeploymentService,
        store: Arc<dyn ProposalStore>,
        clock: Arc<dyn Clock>,
        rules: ReviewRules,
    ) -> Self {
        Self {
            agents,
            deployments,
            store,
            clock,
            rules,
            signal: Arc::new(NoSignal),
        }
    }

    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    /// Proposes a change to an agent for review.
    ///
    /// # Errors
    /// `Invalid` naming `base_version`, `changes` or `rationale`; `NotFound` for an unknown
    /// agent.
    #[instrument(name = "propose_version", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn propose(
        &self,
        input: ProposeVersion,
        proposer: &Principal,
    ) -> Result<Proposal, ServiceError> {
        let mut p = Problems::default();
        let rationale = p.text("rationale", &input.rationale, 1, MAX_RATIONALE);
        if input.changes.is_empty() {
            p.push(
                "changes",
                "give at least one of instructions, model, parameters, capabilities, knowledge_sources",
            );
        }
        p.finish()?;
        let detail = self.agents.get(&input.agent_id, None).await?;
        if input.base_version == 0 || input.base_version > detail.agent.latest_version {
            return Err(ServiceError::invalid(
                "base_version",
                format!(
                    "agent '{}' has no version {} (latest is {})",
                    input.agent_id, input.base_version, detail.agent.latest_version
                ),
            ));
        }
        let now = self.clock.now_ms();
        let proposal = Proposal {
            proposal_id: ProposalId::generate(),
            agent_id: input.agent_id,
            base_version: input.base_version,
            changes: input.changes,
            rationale,
            proposer: proposer.clone(),
            status: ProposalStatus::Pending,
            required_approvals: self.rules.required(),
            rollout: input.rollout.unwrap_or_default(),
            reviews: Vec::new(),
            created_at: now,
            expires_at: now + self.rules.ttl_ms,
            updated_at: now,
            version: None,
            alias: PROD_ALIAS.into(),
            source: None,
            revision: 0,
        };
        let events = [DomainEvent::new(
            &proposal.agent_id,
            now,
            payload::ProposalCreated {
                proposal: proposal.clone(),
            },
        )];
        self.store.insert_proposal(&proposal, &events).await?;
        self.signal.notify();
        Ok(proposal)
    }

    /// Proposes a version that exists already (an evolution's winner): approval puts it live
    /// on `alias` without making another version.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent or version; `Store` when it cannot be written.
    pub async fn propose_existing(
        &self,
        made: ExistingVersion,
        proposer: &Principal,
    ) -> Result<Proposal, ServiceError> {
        let detail = self.agents.get(&made.agent_id, Some(made.version)).await?;
        let now = self.clock.now_ms();
        let proposal = Proposal {
            proposal_id: ProposalId::generate(),
            agent_id: made.agent_id,
            base_version: made.base_version,
            changes: made.changes,
            rationale: made.rationale.chars().take(MAX_RATIONALE).collect(),
            proposer: proposer.clone(),
            status: ProposalStatus::Pending,
            required_approvals: self.rules.required(),
            rollout: made.rollout,
            reviews: Vec::new(),
            created_at: now,
            expires_at: now + self.rules.ttl_ms,
            updated_at: now,
            version: Some(detail.version.version),
            alias: made.alias,
            source: Some(made.source),
            revision: 0,
        };
        let events = [DomainEvent::new(
            &proposal.agent_id,
            now,
            payload::ProposalCreated {
                proposal: proposal.clone(),
            },
        )];
        self.store.insert_proposal(&proposal, &events).await?;
        self.signal.notify();
        Ok(proposal)
    }

    /// The pending proposal of an existing version made by `source`, if there is one.
    ///
    /// # Errors
    /// `Store` when proposals cannot be listed.
    pub async fn find_by_source(
        &self,
        agent_id: &AgentId,
        source: &str,
    ) -> Result<Option<Proposal>, ServiceError> {
        let mut page = PageRequest {
            after: None,
            limit: 100,
        };
        loop {
            let rows = self
                .store
                .list_proposals(Some(agent_id), None, &page)
                .await?;
            if let Some(found) = rows.iter().find(|p| p.source.as_deref() == Some(source)) {
                return Ok(Some(found.clone()));
            }
            if rows.len() <= page.limit as usize {
                return Ok(None);
            }
            let last = &rows[page.limit as usize - 1];
            page.after = Some(crate::page::Cursor::after(last.proposal_id.to_string()));
        }
    }

    /// A proposal by id.
    ///
    /// # Errors
    /// `NotFound` naming the id.
    pub async fn get(&self, proposal_id: &ProposalId) -> Result<Proposal, ServiceError> {
        self.store
            .proposal(proposal_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "proposal",
                id: proposal_id.to_string(),
            })
    }

    /// Proposals, oldest first.
    ///
    /// # Errors
    /// `Invalid` naming `status`, `cursor` or `limit`.
    pub async fn list(&self, input: ListProposals) -> Result<Page<Proposal>, ServiceError> {
        let status = match input.status.as_deref() {
            None => None,
            Some(text) => Some(ProposalStatus::parse(text).ok_or_else(|| {
                ServiceError::invalid(
                    "status",
                    format!(
                        "'{}' is not one of pending, changes_requested, rejected, expired, applied",
                        text.escape_debug()
                    ),
                )
            })?),
        };
        let page = PageRequest::parse(input.cursor.as_deref(), input.limit)?;
        let rows = self
            .store
            .list_proposals(input.agent_id.as_ref(), status, &page)
            .await?;
        Ok(paginate(rows, page.limit, |p| p.proposal_id.to_string()))
    }

    /// Records a review by `reviewer`. Enough approvals make the proposal a version (parents:
    /// the base) that goes live by its rollout; a rejection or a request for changes closes it.
    ///
    /// # Errors
    /// `Forbidden` for an unauthenticated caller, a reviewer not on the list, or a proposer
    /// approving their own proposal; `Conflict` when the proposal is no longer pending (or
    /// expired) or the reviewer reviewed it already.
    #[instrument(name = "review_proposal", skip_all, fields(proposal_id = %input.proposal_id))]
    pub async fn review(
        &self,
        input: ReviewProposal,
        reviewer: &Principal,
    ) -> Result<Reviewed, ServiceError> {
        let mut p = Problems::default();
        let comment = input
            .comment
            .as_deref()
            .map(|c| p.text("comment", c, 0, MAX_COMMENT))
            .unwrap_or_default();
        p.finish()?;
        if reviewer.is_anonymous() {
            return Err(ServiceError::Forbidden(
                "reviews need an authenticated caller: configure API keys (AOP_API_KEYS) or tokens"
                    .into(),
            ));
        }
        if !self.rules.reviewers.is_empty() && !self.rules.reviewers.contains(reviewer) {
            return Err(ServiceError::Forbidden(format!(
                "'{reviewer}' is not one of the configured reviewers"
            )));
        }
        let proposal = self.get(&input.proposal_id).await?;
        let now = self.clock.now_ms();
        if proposal.status == ProposalStatus::Pending && proposal.expires_at <= now {
            self.expire_one(&proposal, now).await?;
            return Err(ServiceError::Conflict(format!(
                "proposal '{}' expired",
                proposal.proposal_id
            )));
        }
        if proposal.status != ProposalStatus::Pending {
            return Err(ServiceError::Conflict(format!(
                "proposal '{}' is {}; only pending proposals take reviews",
                proposal.proposal_id,
                proposal.status.as_str()
            )));
        }
        if input.decision == ReviewDecision::Approve && &proposal.proposer == reviewer {
            return Err(ServiceError::Forbidden(format!(
                "'{reviewer}' proposed '{}' and cannot approve it",
                proposal.proposal_id
            )));
        }
        if proposal.reviews.iter().any(|r| &r.reviewer == reviewer) {
            return Err(ServiceError::Conflict(format!(
                "'{reviewer}' reviewed proposal '{}' already",
                proposal.proposal_id
            )));
        }
        let review = Review {
            reviewer: reviewer.clone(),
            decision: input.decision,
            comment,
            created_at: now,
        };
        let mut next = proposal.clone();
        next.reviews.push(review.clone());
        next.updated_at = now;
        next.revision += 1;
        next.status = match input.decision {
            ReviewDecision::Reject => ProposalStatus::Rejected,
            ReviewDecision::RequestChanges => ProposalStatus::ChangesRequested,
            ReviewDecision::Approve => ProposalStatus::Pending,
        };
        let approved = input.decision == ReviewDecision::Approve
            && next.approvals() >= next.required_approvals;
        let mut version = None;
        if approved && let Some(existing) = next.version {
            version = Some(self.agents.get(&next.agent_id, Some(existing)).await?);
            next.status = ProposalStatus::Applied;
        } else if approved {
            let detail = self
                .agents
                .derive(NewVersion {
                    agent_id: next.agent_id.clone(),
                    base: Some(next.base_version),
                    expected_latest: None,
                    changes: next.changes.clone(),
                    change_summary: Some(next.rationale.clone()),
                    created_by: format!("proposal:{}", next.proposal_id),
                    generation_step: 0,
                    moves_aliases: false,
                    origin: None,
                })
                .await?;
            next.status = ProposalStatus::Applied;
            next.version = Some(detail.version.version);
            version = Some(detail);
        }
        let mut events = vec![DomainEvent::new(
            &next.agent_id,
            now,
            payload::ProposalReviewed {
                proposal: next.clone(),
                review,
            },
        )];
        match next.status {
            ProposalStatus::Applied => events.push(DomainEvent::new(
                &next.agent_id,
                now,
                payload::ProposalApproved {
                    proposal: next.clone(),
                },
            )),
            ProposalStatus::Rejected | ProposalStatus::ChangesRequested => {
                events.push(DomainEvent::new(
                    &next.agent_id,
                    now,
                    payload::ProposalRejected {
                        proposal: next.clone(),
                    },
                ));
            }
            _ => {}
        }
        match self
            .store
            .save_proposal(&next, proposal.revision, &events)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::Conflict(format!(
                    "proposal '{}' was reviewed concurrently; read it again and retry",
                    proposal.proposal_id
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        let (rollout, rollout_error) = match (&version, next.rollout) {
            (Some(detail), rollout) => match self.go_live(&next, detail, rollout, reviewer).await {
                Ok(moved) => (Some(moved), None),
                Err(e) => {
                    tracing::warn!(error = %e, "approved version could not go live");
                    (None, Some(e.to_string()))
                }
            },
            (None, _) => (None, None),
        };
        Ok(Reviewed {
            proposal: next,
            version,
            rollout,
            rollout_error,
        })
    }

    /// Marks pending proposals whose time ran out as expired; returns how many.
    ///
    /// # Errors
    /// `Store` when they cannot be listed; a failing proposal is logged and skipped.
    pub async fn expire(&self) -> Result<usize, ServiceError> {
        let now = self.clock.now_ms();
        let mut expired = 0;
        for proposal in self.store.expiring_proposals(now).await? {
            match self.expire_one(&proposal, now).await {
                Ok(()) => expired += 1,
                Err(e) => {
                    tracing::warn!(proposal_id = %proposal.proposal_id, error = %e, "cannot expire a proposal")
                }
            }
        }
        Ok(expired)
    }

    async fn expire_one(&self, proposal: &Proposal, now: i64) -> Result<(), ServiceError> {
        let mut next = proposal.clone();
        next.status = ProposalStatus::Expired;
        next.updated_at = now;
        next.revision += 1;
        let events = [DomainEvent::new(
            &next.agent_id,
            now,
            payload::ProposalExpired {
                proposal: next.clone(),
            },
        )];
        match self
            .store
            .save_proposal(&next, proposal.revision, &events)
            .await
        {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        Ok(())
    }

    async fn go_live(
        &self,
        proposal: &Proposal,
        detail: &AgentDetail,
        rollout: Rollout,
        reviewer: &Principal,
    ) -> Result<Moved, ServiceError> {
        let reason = format!("proposal {} approved", proposal.proposal_id);
        match rollout {
            Rollout::Deploy => {
                self.deployments
                    .deploy(
                        DeployVersion {
                            agent_id: proposal.agent_id.clone(),
                            version: detail.version.version,
                            alias: Some(proposal.alias.clone()),
                            reason: Some(reason),
                        },
                        reviewer,
                    )
                    .await
            }
            Rollout::Canary => {
                self.deployments
                    .start_canary(
                        StartCanary {
                            agent_id: proposal.agent_id.clone(),
                            version: detail.version.version,
                            alias: Some(proposal.alias.clone()),
                            steps: None,
                            policy: None,
                            reason: Some(reason),
                        },
                        reviewer,
                    )
                    .await
            }
        }
    }
}
