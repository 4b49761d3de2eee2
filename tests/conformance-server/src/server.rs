//! The fixture handler: the platform's `AgentServer` plus the conformance fixtures, with the
//! logging, completion and subscription capabilities the suite exercises.

#![allow(deprecated)] // resources/subscribe is a legacy-era method the suite still calls.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aop_mcp::AgentServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ClientCapabilities,
    CompleteRequestParams, CompleteResult, ContentBlock, CreateMessageRequestParams,
    ElicitRequestParams, ElicitationSchema, GetPromptRequestParams, GetPromptResponse,
    GetTaskParams, GetTaskResult, InputRequests, InputRequiredResult, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, SamplingMessage, ServerCapabilities,
    ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams, UpdateTaskParams,
};
use rmcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::fixtures;
use crate::input::{self, Inputs};
use crate::tasks::{self, Tasks};

/// Pause between the notifications a fixture tool sends.
const STEP: Duration = Duration::from_millis(50);

/// What the fixtures share across requests (one per process: stateless requests each get a new
/// handler).
#[derive(Default)]
pub struct Shared {
    inputs: Inputs,
    tasks: Tasks,
    /// Open `subscriptions/listen` streams (2026-07-28).
    listeners: Mutex<HashMap<u64, SubscriptionSink>>,
    next_listener: AtomicU64,
}

#[derive(Clone)]
pub struct ConformanceServer {
    platform: AgentServer,
    shared: Arc<Shared>,
    /// Resources subscribed to with the legacy `resources/subscribe`.
    subscriptions: Arc<Mutex<HashSet<String>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConformanceServer {
    pub fn new(platform: AgentServer, shared: Arc<Shared>) -> Self {
        Self {
            platform,
            shared,
            subscriptions: Arc::default(),
        }
    }

    fn listeners(&self) -> Vec<SubscriptionSink> {
        lock(&self.shared.listeners).values().cloned().collect()
    }

    async fn fixture_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if input::TOOLS.iter().any(|(n, _)| *n == request.name) {
            return self
                .shared
                .inputs
                .call(&request, context.meta.client_capabilities());
        }
        if tasks::is_task_fixture(&request.name) {
            let client_has_tasks = context
                .client_capabilities()
                .is_some_and(|caps| caps.supports_tasks());
            return self.shared.tasks.call(request, client_has_tasks).await;
        }
        let arguments = request.arguments.unwrap_or_default();
        let name = request.name.as_ref();
        if let Some(result) = fixtures::simple_tool_result(name, &arguments) {
            return Ok(result.into());
        }
        let text_arg = |key: &str| {
            arguments
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let result = match name {
            "test_tool_with_logging" => {
                for step in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ] {
                    let note =
                        LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(step));
                    if let Err(e) = context.peer.notify_logging_message(note).await {
                        tracing::warn!(error = %e, "cannot send a log notification");
                    }
                    tokio::time::sleep(STEP).await;
                }
                success("Tool with logging executed successfully")
            }
            "test_tool_with_progress" => {
                let token = context.meta.get_progress_token();
                for done in [0.0, 50.0, 100.0] {
                    if let Some(token) = &token {
                        let note = ProgressNotificationParam::new(token.clone(), done)
                            .with_total(100.0)
                            .with_message(format!("{done} of 100"));
                        if let Err(e) = context.peer.notify_progress(note).await {
                            tracing::warn!(error = %e, "cannot send a progress notification");
                        }
                    }
                    tokio::time::sleep(STEP).await;
                }
                success("Progress tool finished")
            }
            "test_reconnection" => {
                tokio::time::sleep(2 * STEP).await;
                success("Reconnection test completed")
            }
            "test_sampling" => {
                let request = CreateMessageRequestParams::new(
                    vec![SamplingMessage::user_text(text_arg("prompt"))],
                    100,
                );
                match context.peer.create_message(request).await {
                    Ok(reply) => {
                        let text = reply
                            .message
                            .content
                            .first()
                            .and_then(|c| c.as_text())
                            .map(|t| t.text.clone())
                            .unwrap_or_default();
                        success(&format!("LLM response: {text}"))
                    }
                    Err(e) => failure(&format!("sampling failed: {e}")),
                }
            }
            "test_elicitation" => {
                elicit(&context, &text_arg("message"), fixtures::user_form()).await
            }
            "test_elicitation_sep1034_defaults" => {
                elicit(
                    &context,
                    "Please review and update the form fields with defaults",
                    fixtures::defaults_form(),
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                elicit(
                    &context,
                    "Please select options from the enum fields",
                    fixtures::enums_form(),
                )
                .await
            }
            "test_trigger_tool_change" | "test_trigger_prompt_change" => {
                for listener in self.listeners() {
                    let sent = if name == "test_trigger_tool_change" {
                        listener.notify_tool_list_changed().await
                    } else {
                        listener.notify_prompt_list_changed().await
                    };
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "cannot notify a subscription");
                    }
                }
                success("Change notified")
            }
            "test_missing_capability" => {
                let declared = context.meta.client_capabilities().unwrap_or_default();
                if declared.sampling.is_none() {
                    return Err(ErrorData::missing_required_client_capability(
                        ClientCapabilities::builder().enable_sampling().build(),
                    ));
                }
                success("The client declared sampling")
            }
            "test_streaming_elicitation" => {
                let requests = InputRequests::from([(
                    "streaming_elicitation".to_owned(),
                    fixtures::form_request("Provide a value", "value", "string"),
                )]);
                return Ok(InputRequiredResult::from_input_requests(requests).into());
            }
            "test_logging_tool" => {
                if let Some(level) = context.meta.log_level() {
                    let note = LoggingMessageNotificationParam::new(
                        level,
                        json!("the request asked for log messages"),
                    )
                    .with_logger("aop-conformance-server");
                    if let Err(e) = context.peer.notify_logging_message(note).await {
                        tracing::warn!(error = %e, "cannot send a log notification");
                    }
                }
                success("Logging tool finished")
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }
}

fn success(text: &str) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn failure(text: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

async fn elicit(
    context: &RequestContext<RoleServer>,
    message: &str,
    form: Value,
) -> CallToolResult {
    let schema: ElicitationSchema = match serde_json::from_value(form) {
        Ok(s) => s,
        Err(e) => return failure(&format!("fixture form is not an elicitation schema: {e}")),
    };
    let request = ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.to_owned(),
        requested_schema: schema,
    };
    match context.peer.create_elicitation(request).await {
        Ok(reply) => success(&format!(
            "Elicitation completed: action={:?}, content={}",
            reply.action,
            reply.content.map(|c| c.to_string()).unwrap_or_default()
        )),
        Err(e) => failure(&format!("elicitation failed: {e}")),
    }
}

impl ServerHandler for ConformanceServer {
    fn get_info(&self) -> ServerConfig {
        let mut config = AgentServer::server_config();
        config.capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_logging()
            .enable_completions()
            .enable_tasks()
            .build();
        config
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let key = self.shared.next_listener.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.listeners).insert(key, context.sink().clone());
        context.cancelled().await;
        lock(&self.shared.listeners).remove(&key);
        Ok(())
    }

    /// Fixture tasks first, then the platform's own (evolutions).
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        match self.shared.tasks.manager.get_task(&request.task_id) {
            Ok(task) => Ok(GetTaskResult::new(task)),
            Err(_) => self.platform.get_task(request, context).await,
        }
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.shared
            .tasks
            .manager
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        match self.shared.tasks.manager.cancel_task(&request.task_id) {
            Ok(()) => Ok(()),
            Err(_) => self.platform.cancel_task(request, context).await,
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = self.platform.tool_list();
        tools.extend(fixtures::tools());
        Ok(ListToolsResult::with_all_items(tools))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.platform
            .find_tool(name)
            .or_else(|| fixtures::tools().into_iter().find(|t| t.name == name))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if fixtures::is_fixture_tool(&request.name) {
            self.fixture_tool(request, context).await
        } else {
            self.platform.call_tool_instrumented(request, context).await
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut listed = self.platform.list_resources(request, context).await?;
        let mut all = fixtures::resources();
        all.append(&mut listed.resources);
        listed.resources = all;
        Ok(listed)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let mut listed = self
            .platform
            .list_resource_templates(request, context)
            .await?;
        listed
            .resource_templates
            .extend(fixtures::resource_templates());
        Ok(listed)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri.starts_with("test://") {
            return fixtures::read_resource(&request.uri)
                .map(Into::into)
                .ok_or_else(|| {
                    ErrorData::resource_not_found(
                        format!("resource {} not found", request.uri),
                        Some(json!({"uri": request.uri})),
                    )
                });
        }
        self.platform.read_resource(request, context).await
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.subscriptions).insert(request.uri.to_string());
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.subscriptions).remove(request.uri.as_str());
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(fixtures::prompts()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name == input::PROMPT {
            return Ok(self.shared.inputs.prompt(&request));
        }
        let arguments = request.arguments.clone().unwrap_or_default();
        fixtures::prompt(&request.name, &arguments)
            .map(Into::into)
            .ok_or_else(|| {
                ErrorData::invalid_params(format!("prompt {} not found", request.name), None)
            })
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        Ok(CompleteResult::default())
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tracing::info!(level = ?request.level, "client set the log level");
        Ok(())
    }
}
