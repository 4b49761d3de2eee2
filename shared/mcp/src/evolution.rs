//! Evolution tools: evaluation cases, starting and watching runs, candidates. A run works in the
//! background (the evolution worker); `initialize_evolution` returns at once and
//! `get_evolution_status` can wait for progress, sending MCP progress notifications to a caller
//! that asked for them.

use std::time::{Duration, Instant};

use crate::structured::Json;
use aop_core::evolution::{Candidate, EvalCase, EvalCaseId, EvolutionId, EvolutionStatus};
use aop_core::page::Page;
use aop_core::services::evolution::{
    AddEvalCases, EvolutionView, InitializeEvolution, ListEvalCases, ListEvolutions,
    RemoveEvalCase, SelectCandidate, Selected,
};
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::args::Parameters;
use crate::errors::ToolFailure;
use crate::server::{AgentServer, principal};

/// The longest `get_evolution_status` waits: inside API Gateway's 29 s.
const MAX_WAIT_SECONDS: u32 = 25;
const POLL: Duration = Duration::from_millis(250);

/// What `add_eval_cases` stored.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AddedCases {
    pub added: usize,
    pub cases: Vec<EvalCase>,
}

/// What `remove_eval_case` removed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RemovedCase {
    pub removed: EvalCaseId,
}

/// Arguments of `get_evolution_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolutionStatusArgs {
    pub evolution_id: EvolutionId,
    /// Wait up to this many seconds (at most 25) for the run to move on (an iteration, or its
    /// end) before answering; progress notifications go to a caller that sent a progress token.
    #[serde(default)]
    pub wait_seconds: Option<u32>,
}

/// Arguments naming one run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvolutionIdArgs {
    pub evolution_id: EvolutionId,
}

/// What `list_candidates` answers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Candidates {
    pub evolution_id: EvolutionId,
    pub candidates: Vec<Candidate>,
}

// The routes derived from the Rust types, which the listing file is checked against (catalog.rs).
#[cfg_attr(not(test), allow(dead_code))]
#[tool_router(router = evolution_router, vis = "pub(crate)")]
impl AgentServer {
    #[tool(
        name = "add_eval_cases",
        description = "Add evaluation cases to an agent: an input and checks its answer must pass (equals, contains, not_contains, regex, json_schema, max_chars, or judge with a rubric), optionally a reference answer and tags. Evolutions score candidates on them.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn add_eval_cases(
        &self,
        Parameters(input): Parameters<AddEvalCases>,
    ) -> Result<Json<AddedCases>, ToolFailure> {
        let cases = self.evolutions.add_eval_cases(input).await?;
        Ok(Json(AddedCases {
            added: cases.len(),
            cases,
        }))
    }

    #[tool(
        name = "list_eval_cases",
        description = "An agent's evaluation cases, oldest first.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_eval_cases(
        &self,
        Parameters(input): Parameters<ListEvalCases>,
    ) -> Result<Json<Page<EvalCase>>, ToolFailure> {
        Ok(Json(self.evolutions.list_eval_cases(input).await?))
    }

    #[tool(
        name = "remove_eval_case",
        description = "Remove an evaluation case from an agent. Runs already started keep their copy.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn remove_eval_case(
        &self,
        Parameters(input): Parameters<RemoveEvalCase>,
    ) -> Result<Json<RemovedCase>, ToolFailure> {
        let removed = input.case_id.clone();
        self.evolutions.remove_eval_case(input).await?;
        Ok(Json(RemovedCase { removed }))
    }

    #[tool(
        name = "initialize_evolution",
        description = "Start evolving an agent from its feedback and evaluation cases (reflective prompt evolution, GEPA): the version serving the most traffic on the alias is the seed; each iteration a reflection model rewrites a candidate from its failures and the child is kept only if it scores higher. Returns at once; watch it with get_evolution_status. The winner becomes a proposal (mode review, default) or a canary (mode auto); no alias moves on its own. Budget: metric calls (300), cost (USD 5), time (3600 s).",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    pub(crate) async fn initialize_evolution(
        &self,
        Parameters(input): Parameters<InitializeEvolution>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<EvolutionView>, ToolFailure> {
        Ok(Json(
            self.evolutions
                .initialize(input, &principal(&context))
                .await?,
        ))
    }

    #[tool(
        name = "get_evolution_status",
        description = "An evolution run: status, iteration, budget used, best and seed validation scores, why it stopped and the winner. With wait_seconds (at most 25) it waits for the next iteration or the end, sending progress notifications when the request carries a progress token.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn get_evolution_status(
        &self,
        Parameters(args): Parameters<EvolutionStatusArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<EvolutionView>, ToolFailure> {
        let mut view = self.evolutions.status(&args.evolution_id).await?;
        let wait = args.wait_seconds.unwrap_or(0).min(MAX_WAIT_SECONDS);
        if wait == 0 || view.status != EvolutionStatus::Running {
            return Ok(Json(view));
        }
        let token = context.meta.get_progress_token();
        let until = Instant::now() + Duration::from_secs(u64::from(wait));
        let started_at = (view.iteration, view.spend.metric_calls);
        while Instant::now() < until && !context.ct.is_cancelled() {
            tokio::time::sleep(POLL).await;
            let next = self.evolutions.status(&args.evolution_id).await?;
            let moved = (next.iteration, next.spend.metric_calls)
                != (view.iteration, view.spend.metric_calls);
            view = next;
            if moved && let Some(token) = &token {
                let message = format!(
                    "iteration {}, {} of {} metric calls, best {}",
                    view.iteration,
                    view.spend.metric_calls,
                    view.budget.max_metric_calls,
                    view.best_score
                        .map_or_else(|| "-".to_owned(), |b| format!("{b:.3}"))
                );
                let _ = context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(
                            token.clone(),
                            f64::from(view.spend.metric_calls),
                        )
                        .with_total(f64::from(view.budget.max_metric_calls))
                        .with_message(message),
                    )
                    .await;
            }
            if view.status != EvolutionStatus::Running || view.iteration != started_at.0 {
                break;
            }
        }
        Ok(Json(view))
    }

    #[tool(
        name = "list_evolutions",
        description = "Evolution runs, newest first, optionally of one agent.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_evolutions(
        &self,
        Parameters(input): Parameters<ListEvolutions>,
    ) -> Result<Json<Page<EvolutionView>>, ToolFailure> {
        Ok(Json(self.evolutions.list(input).await?))
    }

    #[tool(
        name = "cancel_evolution",
        description = "Stop a running evolution. Nothing it found goes out; its candidates stay readable.",
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    pub(crate) async fn cancel_evolution(
        &self,
        Parameters(args): Parameters<EvolutionIdArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<EvolutionView>, ToolFailure> {
        Ok(Json(
            self.evolutions
                .cancel(&args.evolution_id, &principal(&context))
                .await?,
        ))
    }

    #[tool(
        name = "list_candidates",
        description = "Every candidate of an evolution in the order made: parents, operator (seed, reflection, merge), the minibatch scores that accepted or rejected it, validation scores, and the reflection's rationale.",
        annotations(read_only_hint = true)
    )]
    pub(crate) async fn list_candidates(
        &self,
        Parameters(args): Parameters<EvolutionIdArgs>,
    ) -> Result<Json<Candidates>, ToolFailure> {
        let candidates = self.evolutions.candidates(&args.evolution_id).await?;
        Ok(Json(Candidates {
            evolution_id: args.evolution_id,
            candidates,
        }))
    }

    #[tool(
        name = "select_evolution_candidate",
        description = "Make any candidate of an evolution (not only the winner) a version and a proposal for review.",
        annotations(destructive_hint = false, idempotent_hint = true)
    )]
    pub(crate) async fn select_evolution_candidate(
        &self,
        Parameters(input): Parameters<SelectCandidate>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<Selected>, ToolFailure> {
        Ok(Json(
            self.evolutions.select(input, &principal(&context)).await?,
        ))
    }
}

/// `initialize_evolution` as an MCP task (the `io.modelcontextprotocol/tasks` extension) for a
/// client that declared it: the task is the run, its id the evolution id, so `tasks/get` works
/// from any instance (the run is in the store) and `tasks/cancel` cancels the run.
pub(crate) mod tasks {
    use aop_core::evolution::{EvolutionId, EvolutionStatus};
    use aop_core::services::evolution::EvolutionView;
    use aop_core::time::rfc3339;
    use aop_core::{EvolutionService, ServiceError};
    use rmcp::ErrorData;
    use rmcp::model::{
        CallToolResponse, CallToolResult, CancelTaskParams, CreateTaskResult, DetailedTask,
        GetTaskParams, GetTaskResult, JsonObject, Task, TaskPayload, TaskStatus,
    };

    use crate::errors::client_message;

    /// The tool answered as a task.
    pub(crate) const TOOL: &str = "initialize_evolution";
    /// How often a client should poll.
    const POLL_MS: u64 = 2_000;

    fn task_of(view: &EvolutionView) -> Task {
        let status = match view.status {
            EvolutionStatus::Running => TaskStatus::Working,
            EvolutionStatus::Completed => TaskStatus::Completed,
            EvolutionStatus::Failed => TaskStatus::Failed,
            EvolutionStatus::Cancelled => TaskStatus::Cancelled,
        };
        let message = format!(
            "iteration {}, {} of {} metric calls, best {}",
            view.iteration,
            view.spend.metric_calls,
            view.budget.max_metric_calls,
            view.best_score
                .map_or_else(|| "-".to_owned(), |b| format!("{b:.3}"))
        );
        Task::new(
            view.evolution_id.to_string(),
            status,
            rfc3339(view.started_at),
            rfc3339(view.updated_at),
        )
        .with_status_message(message)
        .with_poll_interval_ms(POLL_MS)
    }

    /// A successful `initialize_evolution` result as a task handle; anything else as it was.
    pub(crate) fn handle(response: CallToolResponse) -> CallToolResponse {
        let CallToolResponse::Complete(result) = &response else {
            return response;
        };
        if result.is_error == Some(true) {
            return response;
        }
        match result
            .structured_content
            .clone()
            .map(serde_json::from_value::<Started>)
        {
            Some(Ok(started)) => {
                let task = Task::new(
                    started.evolution_id,
                    TaskStatus::Working,
                    rfc3339(started.started_at),
                    rfc3339(started.updated_at),
                )
                .with_poll_interval_ms(POLL_MS);
                CallToolResponse::Task(CreateTaskResult::new(task))
            }
            _ => response,
        }
    }

    /// The fields of the started run a task handle needs.
    #[derive(serde::Deserialize)]
    struct Started {
        evolution_id: String,
        started_at: i64,
        updated_at: i64,
    }

    fn parse(task_id: &str) -> Result<EvolutionId, ErrorData> {
        EvolutionId::parse("taskId", task_id)
            .map_err(|e| ErrorData::invalid_params(e.to_string(), None))
    }

    fn not_found(e: &ServiceError, task_id: &str) -> ErrorData {
        match e {
            ServiceError::NotFound { .. } => {
                ErrorData::invalid_params(format!("unknown task {task_id}"), None)
            }
            other => ErrorData::internal_error(client_message(other), None),
        }
    }

    /// `tasks/get`: the run's state; once it ended, the tool result (the run as structured
    /// content) or the reason it failed.
    pub(crate) async fn get(
        evolutions: &EvolutionService,
        params: GetTaskParams,
    ) -> Result<GetTaskResult, ErrorData> {
        let id = parse(&params.task_id)?;
        let view = evolutions
            .status(&id)
            .await
            .map_err(|e| not_found(&e, &params.task_id))?;
        let task = task_of(&view);
        let payload = match view.status {
            EvolutionStatus::Running => TaskPayload::Working,
            EvolutionStatus::Cancelled => TaskPayload::Cancelled,
            EvolutionStatus::Completed => {
                let value = serde_json::to_value(&view).unwrap_or_default();
                let result = CallToolResult::structured(value);
                let object: JsonObject = match serde_json::to_value(result) {
                    Ok(serde_json::Value::Object(o)) => o,
                    _ => JsonObject::new(),
                };
                TaskPayload::Completed { result: object }
            }
            EvolutionStatus::Failed => {
                let mut error = JsonObject::new();
                error.insert("code".into(), (-32603).into());
                error.insert(
                    "message".into(),
                    view.error
                        .clone()
                        .unwrap_or_else(|| "the evolution failed".into())
                        .into(),
                );
                TaskPayload::Failed { error }
            }
        };
        Ok(GetTaskResult::new(DetailedTask::new(task, payload)))
    }

    /// `tasks/cancel`: cancels the run; a run that already ended is left as it is.
    pub(crate) async fn cancel(
        evolutions: &EvolutionService,
        params: CancelTaskParams,
        caller: &aop_core::principal::Principal,
    ) -> Result<(), ErrorData> {
        let id = parse(&params.task_id)?;
        match evolutions.cancel(&id, caller).await {
            Ok(_) | Err(ServiceError::Conflict(_)) => Ok(()),
            Err(e) => Err(not_found(&e, &params.task_id)),
        }
    }
}
