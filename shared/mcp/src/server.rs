//! The MCP server: agent registry tools over `AgentService`, and the agent resources.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::structured::Json;
use aop_core::services::conversation::{RunAgent, SendMessage, StartSession};
use aop_core::services::feedback::{MetricsQuery, SubmitFeedback};
use aop_core::session::SessionId;
use aop_core::{
    AgentId, AgentService, ConversationService, CreateAgent, DeploymentService, EvolutionService,
    FeedbackService, ListAgents, ProposalService, UpdateAgent,
};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ContentBlock, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tracing::Instrument;

use crate::args::{DESERIALIZE_PREFIX, Parameters};
use crate::catalog::ToolCatalog;
use crate::errors::ToolFailure;
use crate::evolution;
use crate::http::CallNote;
use crate::metrics::Metrics;
use crate::request_id;
use crate::resources;

const INSTRUCTIONS: &str = "Agent orchestration platform. Create agents with create_agent; every \
update_agent makes a new immutable version. Talk to an agent with start_session and send_message \
(or run_agent for one turn); rate turns with submit_feedback. A version serves traffic once \
deployed: deploy_version, or start_canary to try it on a share of new sessions (promoted or \
rolled back on live feedback); propose_version and review_proposal for reviewed changes. \
initialize_evolution evolves an agent from its feedback and add_eval_cases cases; its winner \
becomes a proposal or a canary. Read agents, lineage and deployments as agent:// resources, \
canaries as canary:// and evolutions as evolution://.";

/// Arguments naming one agent and optionally one of its versions.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetAgentArgs {
    pub agent_id: AgentId,
    /// A version number; the latest when absent.
    #[serde(default)]
    pub version: Option<u32>,
}

/// Arguments of `list_agent_versions`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListVersionsArgs {
    pub agent_id: AgentId,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Arguments naming one agent.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentIdArgs {
    pub agent_id: AgentId,
}

/// Arguments of `get_messages`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetMessagesArgs {
    pub session_id: SessionId,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Arguments of `end_session`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndSessionArgs {
    pub session_id: SessionId,
    /// What the conversation achieved.
    #[serde(default)]
    pub summary: Option<String>,
}

/// Arguments of `list_interactions`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInteractionsArgs {
    pub agent_id: AgentId,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// When the current request must be answered by, set by the entry point (on Lambda: the
/// invocation's deadline minus a margin). Travels in the HTTP request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub std::time::Instant);

/// The services the tools call.
#[derive(Clone)]
pub struct Services {
    pub agents: AgentService,
    pub conversations: ConversationService,
    pub feedback: FeedbackService,
    pub deployments: DeploymentService,
    pub proposals: ProposalService,
    pub evolutions: EvolutionService,
}

/// The platform's MCP server. Cheap to clone (one reference count): rmcp takes a copy for
/// every stateless request.
#[derive(Clone)]
pub struct AgentServer(Arc<ServerParts>);

/// What every copy of an [`AgentServer`] shares.
pub struct ServerParts {
    pub(crate) agents: AgentService,
    pub(crate) conversations: ConversationService,
    pub(crate) feedback: FeedbackService,
    pub(crate) deployments: DeploymentService,
    pub(crate) proposals: ProposalService,
    pub(crate) evolutions: EvolutionService,
    metrics: Arc<Metrics>,
    tools: ToolCatalog,
}

impl std::ops::Deref for AgentServer {
    type Target = ServerParts;

    fn deref(&self) -> &ServerParts {
        &self.0
    }
}

impl AgentServer {
    /// A server over `services` offering the tools of `catalog`.
    pub fn new(services: Services, metrics: Arc<Metrics>, catalog: ToolCatalog) -> Self {
        Self(Arc::new(ServerParts {
            agents: services.agents,
            conversations: services.conversations,
            feedback: services.feedback,
            deployments: services.deployments,
            proposals: services.proposals,
            evolutions: services.evolutions,
            metrics,
            tools: catalog,
        }))
    }

    pub fn agents(&self) -> &AgentService {
        &self.agents
    }
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = agent_router, vis = "pub(crate)")]
impl AgentServer {
    /// Creates an agent and its first version; `prod` points at it.
    #[tool(
        name = "create_agent",
        description = "Create an agent with its first immutable version (v1). The `prod` alias points at the newest version until a deployment moves it.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn create_agent(
        &self,
        Parameters(mut input): Parameters<CreateAgent>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<aop_core::AgentDetail>, ToolFailure> {
        input.created_by = Some(principal(&context).to_string());
        Ok(Json(self.agents.create(input).await?))
    }

    #[tool(
        name = "get_agent",
        description = "Get an agent and its latest version, or a given version.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn get_agent(
        &self,
        Parameters(args): Parameters<GetAgentArgs>,
    ) -> Result<Json<aop_core::AgentDetail>, ToolFailure> {
        Ok(Json(self.agents.get(&args.agent_id, args.version).await?))
    }

    #[tool(
        name = "list_agents",
        description = "List agents, filtered by domain, capability name, status (active by default, archived, all) or text in the name or description. Pages with `cursor`/`next_cursor`.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_agents(
        &self,
        Parameters(args): Parameters<ListAgents>,
    ) -> Result<Json<aop_core::Page<aop_core::Agent>>, ToolFailure> {
        Ok(Json(self.agents.list(args).await?))
    }

    #[tool(
        name = "update_agent",
        description = "Create the next version of an agent from its latest one with the given changes. Versions are immutable; nothing is edited in place.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn update_agent(
        &self,
        Parameters(mut input): Parameters<UpdateAgent>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<aop_core::AgentDetail>, ToolFailure> {
        input.created_by = Some(principal(&context).to_string());
        Ok(Json(self.agents.update(input).await?))
    }

    #[tool(
        name = "list_agent_versions",
        description = "List an agent's versions, oldest first. Pages with `cursor`/`next_cursor`.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_agent_versions(
        &self,
        Parameters(args): Parameters<ListVersionsArgs>,
    ) -> Result<Json<aop_core::Page<aop_core::AgentVersion>>, ToolFailure> {
        Ok(Json(
            self.agents
                .list_versions(&args.agent_id, args.cursor.as_deref(), args.limit)
                .await?,
        ))
    }

    #[tool(
        name = "archive_agent",
        description = "Archive an agent: it keeps its history but takes no new versions and leaves default listings. Archiving twice changes nothing.",
        annotations(destructive_hint = true, idempotent_hint = true)
    )]
    pub(crate) async fn archive_agent(
        &self,
        Parameters(args): Parameters<AgentIdArgs>,
    ) -> Result<Json<aop_core::Agent>, ToolFailure> {
        Ok(Json(self.agents.archive(&args.agent_id).await?))
    }
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = session_router, vis = "pub(crate)")]
impl AgentServer {
    #[tool(
        name = "start_session",
        description = "Open a conversation with an agent alias (default `prod`). The alias is resolved to one version for the whole session.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn start_session(
        &self,
        Parameters(input): Parameters<StartSession>,
    ) -> Result<Json<aop_core::session::Session>, ToolFailure> {
        Ok(Json(self.conversations.start_session(input).await?))
    }

    #[tool(
        name = "send_message",
        description = "Say something in a session and get the agent's reply. The turn is recorded as an interaction with tokens, cost and latency.",
        annotations(
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    pub(crate) async fn send_message(
        &self,
        Parameters(mut input): Parameters<SendMessage>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<aop_core::services::conversation::TurnReply>, ToolFailure> {
        let deadline = request_deadline(&context);
        input.caller = Some(principal(&context));
        Ok(Json(
            self.conversations.send_message(input, deadline).await?,
        ))
    }

    #[tool(
        name = "run_agent",
        description = "Run one turn of an agent without a session and get its reply.",
        annotations(
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    pub(crate) async fn run_agent(
        &self,
        Parameters(mut input): Parameters<RunAgent>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<aop_core::services::conversation::TurnReply>, ToolFailure> {
        let deadline = request_deadline(&context);
        input.caller = Some(principal(&context));
        Ok(Json(self.conversations.run_agent(input, deadline).await?))
    }

    #[tool(
        name = "get_messages",
        description = "The messages of a session in order. Pages with `cursor`/`next_cursor`.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn get_messages(
        &self,
        Parameters(args): Parameters<GetMessagesArgs>,
    ) -> Result<Json<aop_core::Page<aop_core::session::Message>>, ToolFailure> {
        Ok(Json(
            self.conversations
                .get_messages(&args.session_id, args.cursor.as_deref(), args.limit)
                .await?,
        ))
    }

    #[tool(
        name = "end_session",
        description = "End a session, optionally with a summary. It keeps its messages and takes no more.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn end_session(
        &self,
        Parameters(args): Parameters<EndSessionArgs>,
    ) -> Result<Json<aop_core::session::Session>, ToolFailure> {
        Ok(Json(
            self.conversations
                .end_session(&args.session_id, args.summary.as_deref())
                .await?,
        ))
    }

    #[tool(
        name = "list_interactions",
        description = "Recorded turns of an agent, oldest first: version, input, output, model, tokens, cost, latency, tool calls, status and error.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_interactions(
        &self,
        Parameters(args): Parameters<ListInteractionsArgs>,
    ) -> Result<Json<aop_core::Page<aop_core::session::Interaction>>, ToolFailure> {
        Ok(Json(
            self.conversations
                .list_interactions(&args.agent_id, args.cursor.as_deref(), args.limit)
                .await?,
        ))
    }
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = feedback_router, vis = "pub(crate)")]
impl AgentServer {
    #[tool(
        name = "submit_feedback",
        description = "Rate an agent, one of its sessions or one interaction: `ratings` as {metric: value} on a `scale` (default 1-5), with optional comments and categories. Fitness statistics follow.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn submit_feedback(
        &self,
        Parameters(mut input): Parameters<SubmitFeedback>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<aop_core::feedback::Feedback>, ToolFailure> {
        input.caller = Some(principal(&context));
        Ok(Json(self.feedback.submit(input).await?))
    }

    #[tool(
        name = "get_feedback_metrics",
        description = "Statistics per agent version and metric (count, mean, sample variance, on 0..1 for feedback): running totals, or over `from`/`to` (epoch ms). Turn statistics are `interaction.error`, `interaction.latency_ms`, `interaction.tokens`.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn get_feedback_metrics(
        &self,
        Parameters(query): Parameters<MetricsQuery>,
    ) -> Result<Json<aop_core::services::feedback::MetricsReport>, ToolFailure> {
        Ok(Json(self.feedback.metrics(query).await?))
    }
}

/// Who is calling: the principal authentication put in the HTTP request; anonymous when there
/// is none (an in-process caller).
pub(crate) fn principal(context: &RequestContext<RoleServer>) -> aop_core::principal::Principal {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<aop_core::principal::Principal>())
        .cloned()
        .unwrap_or_else(aop_core::principal::Principal::anonymous)
}

/// The deadline the entry point attached to the HTTP request, if any.
fn request_deadline(context: &RequestContext<RoleServer>) -> Option<std::time::Instant> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<RequestDeadline>())
        .map(|d| d.0)
}

impl AgentServer {
    /// Server identity and capabilities, shared with wrappers such as the conformance fixture.
    pub fn server_config() -> ServerConfig {
        Self::config(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
    }

    /// As [`AgentServer::server_config`], offering `initialize_evolution` as an MCP task to
    /// clients that declare the tasks extension.
    pub fn server_config_with_tasks() -> ServerConfig {
        Self::config(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
    }

    fn config(capabilities: ServerCapabilities) -> ServerConfig {
        ServerConfig::new(capabilities)
            .with_server_info(
                Implementation::new("agent-orchestration-platform", env!("CARGO_PKG_VERSION"))
                    .with_title("Agent Orchestration Platform"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    pub fn tool_list(&self) -> Vec<rmcp::model::Tool> {
        self.tools.tools().to_vec()
    }

    pub fn find_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tools.get(name).cloned()
    }

    /// Runs a tool call with metrics and a request-scoped span.
    pub async fn call_tool_instrumented(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        let call_note = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|p| p.extensions.get::<CallNote>())
            .cloned();
        // The tool's own log lines carry the request id. A stateless call already runs inside
        // the HTTP request's span (rmcp's tasks inherit the span they were started in); a
        // session's calls run in the session's task, under the span of the request that opened
        // it, so they get a span of their own with this request's id.
        let span = if call_note.as_ref().is_some_and(CallNote::in_request_span) {
            tracing::Span::none()
        } else {
            let request_id = request_id::from_context(&context);
            tracing::info_span!("execute_tool", request_id = request_id.as_str())
        };
        let started = Instant::now();
        // A known tool's name as the catalog holds it (borrowed, static): the metrics' label.
        let known = self.tools.get(&tool).map(|t| t.name.clone());
        let result = self
            .tools
            .router()
            .call(ToolCallContext::new(self, request, context))
            .instrument(span.clone())
            .await
            .map(|response| span.in_scope(|| without_deserialize_prefix(response)));
        let outcome = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(_) => "protocol_error",
        };
        if let Some(note) = call_note {
            // A name no tool has is the caller's text: the access line says `unknown` instead.
            note.record(known.clone().unwrap_or(Cow::Borrowed("unknown")), outcome);
        }
        if let Some(name) = known {
            self.metrics
                .observe_tool(name, outcome, started.elapsed().as_secs_f64());
        }
        result
    }
}

/// Arguments that do not fit a tool come back from rmcp as a tool error whose text starts with
/// its marker; the client sees only our explanation (see [`crate::args`]).
fn without_deserialize_prefix(response: CallToolResponse) -> CallToolResponse {
    let CallToolResponse::Complete(mut result) = response else {
        return response;
    };
    if result.is_error == Some(true) && result.structured_content.is_none() {
        for block in &mut result.content {
            if let Some(text) = block.as_text()
                && let Some(message) = text.text.strip_prefix(DESERIALIZE_PREFIX)
            {
                tracing::debug!(%message, "rejected tool arguments");
                *block = ContentBlock::text(message.to_owned());
            }
        }
    }
    result.into()
}

impl ServerHandler for AgentServer {
    fn get_info(&self) -> ServerConfig {
        Self::server_config_with_tasks()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let as_task = request.name == evolution::tasks::TOOL
            && context
                .client_capabilities()
                .is_some_and(|caps| caps.supports_tasks());
        let response = self.call_tool_instrumented(request, context).await?;
        Ok(if as_task {
            evolution::tasks::handle(response)
        } else {
            response
        })
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        evolution::tasks::get(&self.evolutions, request).await
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        evolution::tasks::cancel(&self.evolutions, request, &principal(&context)).await
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        Ok(rmcp::model::ListToolsResult::with_all_items(
            self.tool_list(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.find_tool(name)
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        resources::list(&self.agents, request.and_then(|r| r.cursor)).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let span = tracing::info_span!(
            "read_resource",
            request_id = %request_id::from_context(&context),
            uri = %request.uri,
        );
        resources::read(
            &self.agents,
            &self.deployments,
            &self.evolutions,
            &request.uri,
        )
        .instrument(span)
        .await
    }
}
