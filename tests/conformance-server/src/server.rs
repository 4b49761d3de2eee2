//! The fixture handler: the platform's `AgentServer` plus the conformance fixtures, with the
//! logging, completion and subscription capabilities the suite exercises.

#![allow(deprecated)] // resources/subscribe is a legacy-era method the suite still calls.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aop_mcp::AgentServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, CreateMessageRequestParams, ElicitRequestParams, ElicitationSchema,
    GetPromptRequestParams, GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, LoggingMessageNotificationParam,
    PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, SamplingMessage, ServerCapabilities, ServerConfig, SetLevelRequestParams,
    SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};

use crate::fixtures;

/// Pause between the notifications a fixture tool sends.
const STEP: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct ConformanceServer {
    platform: AgentServer,
    subscriptions: Arc<Mutex<HashSet<String>>>,
}

impl ConformanceServer {
    pub fn new(platform: AgentServer) -> Self {
        Self {
            platform,
            subscriptions: Arc::default(),
        }
    }

    async fn fixture_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
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
            .enable_resources()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_logging()
            .enable_completions()
            .build();
        config
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
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(request.uri.to_string());
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(request.uri.as_str());
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
