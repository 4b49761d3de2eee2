//! Deployment and proposal tools. The caller's principal (from authentication) is who deploys,
//! proposes and reviews; it is never an argument.

use crate::structured::Json;
use aop_core::AgentId;
use aop_core::deployment::{Canary, CanaryId, Deployment};
use aop_core::page::Page;
use aop_core::proposal::Proposal;
use aop_core::services::deployments::{
    DeployVersion, Moved, PromoteCanary, RollbackAgent, StartCanary,
};
use aop_core::services::proposals::{ListProposals, ProposeVersion, ReviewProposal, Reviewed};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::args::Parameters;
use crate::errors::ToolFailure;
use crate::server::{AgentServer, principal};

/// Arguments of `get_canary`: a canary id, or an agent (and alias) for its newest canary.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetCanaryArgs {
    #[serde(default)]
    pub canary_id: Option<CanaryId>,
    #[serde(default)]
    pub agent_id: Option<AgentId>,
    /// With `agent_id`; default `prod`.
    #[serde(default)]
    pub alias: Option<String>,
}

/// Arguments of `list_deployments`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListDeploymentsArgs {
    pub agent_id: AgentId,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = deployment_router, vis = "pub(crate)")]
impl AgentServer {
    #[tool(
        name = "deploy_version",
        description = "Point an alias (default `prod`) at one version, all traffic. The alias stops following new versions. Refused while a canary holds the alias.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn deploy_version(
        &self,
        Parameters(input): Parameters<DeployVersion>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Moved>, ToolFailure> {
        Ok(Json(
            self.deployments.deploy(input, &principal(&context)).await?,
        ))
    }

    #[tool(
        name = "start_canary",
        description = "Try a version on a growing share of an alias's new sessions (steps, default 5/10/25/50%). The controller promotes it when live feedback shows it better with high probability and low expected loss, and rolls it back when it is worse or a guardrail (errors, latency, cost) fails. One canary per alias.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn start_canary(
        &self,
        Parameters(input): Parameters<StartCanary>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Moved>, ToolFailure> {
        Ok(Json(
            self.deployments
                .start_canary(input, &principal(&context))
                .await?,
        ))
    }

    #[tool(
        name = "get_canary",
        description = "A canary: its split, step, status and the last decision with the statistics behind it. By `canary_id`, or the newest of an agent's alias.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn get_canary(
        &self,
        Parameters(args): Parameters<GetCanaryArgs>,
    ) -> Result<Json<Canary>, ToolFailure> {
        let canary = match (&args.canary_id, &args.agent_id) {
            (Some(id), _) => self.deployments.canary(id).await?,
            (None, Some(agent)) => {
                self.deployments
                    .latest_canary(agent, args.alias.as_deref())
                    .await?
            }
            (None, None) => {
                return Err(ToolFailure(
                    "invalid input: canary_id: give canary_id, or agent_id (and alias)".into(),
                ));
            }
        };
        Ok(Json(canary))
    }

    #[tool(
        name = "list_deployments",
        description = "Every move of an agent's aliases, oldest first: from and to which versions, who or what moved it, why, and the analysis that decided it.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_deployments(
        &self,
        Parameters(args): Parameters<ListDeploymentsArgs>,
    ) -> Result<Json<Page<Deployment>>, ToolFailure> {
        Ok(Json(
            self.deployments
                .list(&args.agent_id, args.cursor.as_deref(), args.limit)
                .await?,
        ))
    }

    #[tool(
        name = "promote_canary",
        description = "Give a canary's candidate all traffic now, when the statistics support it (or with `force`). A bake period then watches it against the old baseline.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn promote_canary(
        &self,
        Parameters(input): Parameters<PromoteCanary>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Moved>, ToolFailure> {
        Ok(Json(
            self.deployments
                .promote(input, &principal(&context))
                .await?,
        ))
    }

    #[tool(
        name = "rollback_agent",
        description = "Roll an alias back at once: a canary's alias to its baseline, any other alias to `to_version` or what it served before its last move.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn rollback_agent(
        &self,
        Parameters(input): Parameters<RollbackAgent>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Moved>, ToolFailure> {
        Ok(Json(
            self.deployments
                .rollback(input, &principal(&context))
                .await?,
        ))
    }
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = proposal_router, vis = "pub(crate)")]
impl AgentServer {
    #[tool(
        name = "propose_version",
        description = "Propose a change to an agent (new instructions, model, parameters, capabilities) for review. Approved by enough reviewers, it becomes a version and goes live by its rollout (`canary` default, or `deploy`).",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn propose_version(
        &self,
        Parameters(input): Parameters<ProposeVersion>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Proposal>, ToolFailure> {
        Ok(Json(
            self.proposals.propose(input, &principal(&context)).await?,
        ))
    }

    #[tool(
        name = "list_proposals",
        description = "Proposals, oldest first, optionally of one agent and in one status (pending, changes_requested, rejected, expired, applied), with their reviews.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_proposals(
        &self,
        Parameters(input): Parameters<ListProposals>,
    ) -> Result<Json<Page<Proposal>>, ToolFailure> {
        Ok(Json(self.proposals.list(input).await?))
    }

    #[tool(
        name = "review_proposal",
        description = "Approve, reject or request changes to a proposal as the authenticated caller. A proposer cannot approve their own proposal. The last required approval makes the version and starts its rollout.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn review_proposal(
        &self,
        Parameters(input): Parameters<ReviewProposal>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Reviewed>, ToolFailure> {
        Ok(Json(
            self.proposals.review(input, &principal(&context)).await?,
        ))
    }
}
