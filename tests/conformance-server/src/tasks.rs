//! Fixtures for the Tasks extension (SEP-2663): tools a client that declared the extension gets
//! as tasks to poll, answer and cancel, next to the platform's own task (`initialize_evolution`).

use std::future::Future;
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
    CreateTaskResult, InputRequests, InputRequiredResult, JsonObject, Tool,
};
use rmcp::task_manager::{TaskExit, TaskManager, TaskOptions};
use serde_json::{Value, json};

/// Whether a fixture may or must run as a task.
#[derive(Clone, Copy, PartialEq)]
enum Support {
    /// Always answers synchronously.
    Never,
    /// A task when the client declared the extension, synchronous otherwise.
    Optional,
    /// Refused (-32021) unless the client declared the extension.
    Required,
}

const FIXTURES: [(&str, Support, &str); 7] = [
    ("greet", Support::Never, "Greets synchronously"),
    (
        "slow_compute",
        Support::Optional,
        "Waits `seconds`, then answers; stops early when cancelled",
    ),
    (
        "failing_job",
        Support::Required,
        "Ends with a tool error after a second",
    ),
    (
        "protocol_error_job",
        Support::Optional,
        "Ends with a protocol error",
    ),
    (
        "confirm_delete",
        Support::Required,
        "Asks the client to confirm, from inside the task",
    ),
    (
        "multi_input",
        Support::Required,
        "Asks the client for two values at once, from inside the task",
    ),
    (
        "test_tool_with_task",
        Support::Required,
        "Asks for a name first, then runs as a task",
    ),
];

pub fn is_task_fixture(name: &str) -> bool {
    FIXTURES.iter().any(|(n, ..)| *n == name)
}

pub fn tools() -> Vec<Tool> {
    FIXTURES
        .iter()
        .map(|(name, _, description)| {
            let properties = match *name {
                "greet" => json!({"name": {"type": "string"}}),
                "slow_compute" => {
                    json!({"seconds": {"type": "number"}, "label": {"type": "string"}})
                }
                "confirm_delete" => json!({"filename": {"type": "string"}}),
                _ => json!({}),
            };
            let Value::Object(schema) = json!({"type": "object", "properties": properties}) else {
                unreachable!("a JSON object literal")
            };
            Tool::new(*name, *description, schema)
        })
        .collect()
}

use crate::fixtures::form_request as ask;

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

fn content_field(answer: &Value, field: &str) -> Option<Value> {
    answer.get("content")?.get(field).cloned()
}

async fn failing_job() -> Result<CallToolResult, ErrorData> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(CallToolResult::error(vec![ContentBlock::text(
        "failing_job ended with a tool error, as it always does",
    )]))
}

async fn protocol_error_job() -> Result<CallToolResult, ErrorData> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Err(ErrorData::internal_error(
        "protocol_error_job ended with a protocol error, as it always does",
        None,
    ))
}

/// The fixture tasks of one server.
#[derive(Clone, Default)]
pub struct Tasks {
    pub manager: TaskManager,
}

impl Tasks {
    fn spawn<F>(&self, work: F) -> CallToolResponse
    where
        F: Future<Output = Result<CallToolResult, TaskExit>> + Send + 'static,
    {
        let task = self
            .manager
            .spawn(TaskOptions::default(), move |_| Box::pin(work));
        CreateTaskResult::new(task).into()
    }

    /// Runs one of the fixtures; `client_has_tasks` says whether the client declared the extension.
    pub async fn call(
        &self,
        request: CallToolRequestParams,
        client_has_tasks: bool,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let support = FIXTURES
            .iter()
            .find(|(n, ..)| *n == name)
            .map_or(Support::Never, |(_, s, _)| *s);
        if support == Support::Required && !client_has_tasks {
            return Err(ErrorData::missing_required_client_capability(
                ClientCapabilities::builder().enable_tasks().build(),
            ));
        }
        let as_task = client_has_tasks && support != Support::Never;
        let arguments: JsonObject = request.arguments.clone().unwrap_or_default();
        let argument = |key: &str| arguments.get(key).cloned().unwrap_or(Value::Null);
        match name {
            "greet" => Ok(text(format!(
                "Hello, {}!",
                argument("name").as_str().unwrap_or("friend")
            ))
            .into()),
            "slow_compute" => {
                let seconds = argument("seconds").as_f64().unwrap_or(1.0).clamp(0.0, 60.0);
                let label = argument("label").as_str().unwrap_or("compute").to_owned();
                let answer = format!("slow_compute({label}) finished after {seconds} s");
                let wait = Duration::from_secs_f64(seconds);
                if !as_task {
                    tokio::time::sleep(wait).await;
                    return Ok(text(answer).into());
                }
                let task = self.manager.spawn(TaskOptions::default(), move |context| {
                    Box::pin(async move {
                        tokio::select! {
                            () = context.cancelled() => Err(TaskExit::Cancelled),
                            () = tokio::time::sleep(wait) => Ok(text(answer)),
                        }
                    })
                });
                Ok(CreateTaskResult::new(task).into())
            }
            "failing_job" => Ok(self.spawn(async { failing_job().await.map_err(TaskExit::Error) })),
            "protocol_error_job" if as_task => {
                Ok(self.spawn(async { protocol_error_job().await.map_err(TaskExit::Error) }))
            }
            "protocol_error_job" => protocol_error_job().await.map(Into::into),
            "confirm_delete" => {
                let file = argument("filename")
                    .as_str()
                    .unwrap_or("file.txt")
                    .to_owned();
                let task = self.manager.spawn(TaskOptions::default(), move |context| {
                    Box::pin(async move {
                        let question = ask(&format!("Delete {file}?"), "confirm", "boolean");
                        let answer = context.request_input("confirm", question).await?;
                        let confirmed = content_field(&answer, "confirm")
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false);
                        Ok(text(format!(
                            "confirm_delete({file}): confirmed = {confirmed}"
                        )))
                    })
                });
                Ok(CreateTaskResult::new(task).into())
            }
            "multi_input" => {
                let task = self.manager.spawn(TaskOptions::default(), |context| {
                    Box::pin(async move {
                        let (a, b) = tokio::join!(
                            context.request_input("input-a", ask("Value A?", "value", "string")),
                            context.request_input("input-b", ask("Value B?", "value", "string")),
                        );
                        let value = |answer: &Value| {
                            content_field(answer, "value")
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        };
                        Ok(text(format!(
                            "multi_input: a = {}, b = {}",
                            value(&a?),
                            value(&b?)
                        )))
                    })
                });
                Ok(CreateTaskResult::new(task).into())
            }
            "test_tool_with_task" => {
                let name = request
                    .input_responses
                    .as_ref()
                    .and_then(|r| r.get("user_name"))
                    .and_then(|answer| content_field(answer, "name"))
                    .and_then(|v| v.as_str().map(str::to_owned));
                let Some(name) = name else {
                    let requests = InputRequests::from([(
                        "user_name".to_owned(),
                        ask("What is your name?", "name", "string"),
                    )]);
                    return Ok(InputRequiredResult::from_input_requests(requests).into());
                };
                Ok(self.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(text(format!("Hello, {name}! (from a task)")))
                }))
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }
}
