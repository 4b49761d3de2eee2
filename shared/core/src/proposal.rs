//! Reviewed proposals: a change to an agent that people approve or reject before it becomes a
//! version, and then goes live by a canary (default) or a deployment.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::{AgentId, Capability, ModelParameters};
use crate::ids::prefixed_id;
use crate::principal::Principal;

prefixed_id!(ProposalId, "prop_", "proposal");

/// What a proposal changes; every field given replaces the base version's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<ModelParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_sources: Option<Vec<String>>,
}

impl VersionChanges {
    pub fn is_empty(&self) -> bool {
        self.instructions.is_none()
            && self.model.is_none()
            && self.parameters.is_none()
            && self.capabilities.is_none()
            && self.knowledge_sources.is_none()
    }
}

/// How an approved proposal goes live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rollout {
    /// A canary on `prod` with the configured policy.
    #[default]
    Canary,
    /// `prod` serves the new version at once.
    Deploy,
}

/// Where a proposal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Pending,
    /// A reviewer asked for changes: a new proposal is needed.
    ChangesRequested,
    Rejected,
    Expired,
    /// Approved and made a version, which went live by its rollout.
    Applied,
}

impl ProposalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::ChangesRequested => "changes_requested",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Applied => "applied",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::ChangesRequested,
            Self::Rejected,
            Self::Expired,
            Self::Applied,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    Approve,
    Reject,
    RequestChanges,
}

/// One review, by the authenticated principal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Review {
    pub reviewer: Principal,
    pub decision: ReviewDecision,
    pub comment: String,
    pub created_at: i64,
}

/// A proposed change to an agent, with its reviews.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Proposal {
    pub proposal_id: ProposalId,
    pub agent_id: AgentId,
    /// The version the changes apply to.
    pub base_version: u32,
    pub changes: VersionChanges,
    pub rationale: String,
    pub proposer: Principal,
    pub status: ProposalStatus,
    pub required_approvals: u32,
    pub rollout: Rollout,
    pub reviews: Vec<Review>,
    pub created_at: i64,
    pub expires_at: i64,
    pub updated_at: i64,
    /// The version it became, once applied; set from the start for a version that exists
    /// already (an evolution's winner), which approval only puts live.
    pub version: Option<u32>,
    /// The alias it goes live on.
    #[serde(default = "prod_alias")]
    pub alias: String,
    /// What made it when not a person: `evolution:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Incremented by every change; writes compare it.
    pub revision: u64,
}

fn prod_alias() -> String {
    crate::agent::PROD_ALIAS.to_owned()
}

impl Proposal {
    pub fn approvals(&self) -> u32 {
        u32::try_from(
            self.reviews
                .iter()
                .filter(|r| r.decision == ReviewDecision::Approve)
                .count(),
        )
        .unwrap_or(u32::MAX)
    }
}
