//! Fixtures that ask the client for more input in the 2026-07-28 style (SEP-2322): instead of
//! sending a request over a session, the tool answers with an `InputRequiredResult` and the client
//! calls again with `inputResponses` (and the sealed `requestState` it was given).

#![allow(deprecated)] // Sampling and roots are deprecated by SEP-2577, but the suite still asks for them.

use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities, ContentBlock,
    CreateMessageRequest, CreateMessageRequestParams, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, InputRequest, InputRequests, InputRequiredResult, InputResponses, JsonObject,
    ListRootsRequest, PromptMessage, RequestStateCodec, Role, SamplingMessage,
};
use serde_json::{Value, json};

/// The tools of this module, each taking no arguments.
pub const TOOLS: [(&str, &str); 8] = [
    (
        "test_input_required_result_elicitation",
        "Asks for the user's name through an input-required result",
    ),
    (
        "test_input_required_result_sampling",
        "Asks the client's model a question through an input-required result",
    ),
    (
        "test_input_required_result_list_roots",
        "Asks for the client's roots through an input-required result",
    ),
    (
        "test_input_required_result_request_state",
        "Seals its progress in requestState and checks it on the retry",
    ),
    (
        "test_input_required_result_multiple_inputs",
        "Asks for an elicitation, a sampling and the roots in one round",
    ),
    (
        "test_input_required_result_multi_round",
        "Asks for input over two rounds, its state sealed between them",
    ),
    (
        "test_input_required_result_tampered_state",
        "Refuses a requestState that fails verification",
    ),
    (
        "test_input_required_result_capabilities",
        "Asks only for the inputs the client declared it can give",
    ),
];

/// The prompt that asks for input before it can be rendered.
pub const PROMPT: &str = "test_input_required_result_prompt";

/// Seals and opens `requestState`. The key is the fixture's own; a deployment keeps its key secret.
pub struct Inputs {
    codec: RequestStateCodec,
}

impl Default for Inputs {
    fn default() -> Self {
        Self {
            codec: RequestStateCodec::new(*b"aop-conformance-request-state-key"),
        }
    }
}

fn ask(message: &str, field: &str) -> InputRequest {
    crate::fixtures::form_request(message, field, "string")
}

fn sample(prompt: &str) -> InputRequest {
    InputRequest::CreateMessage(CreateMessageRequest::new(CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(prompt)],
        100,
    )))
}

fn roots() -> InputRequest {
    InputRequest::ListRoots(ListRootsRequest::default())
}

/// The client's answer under `key`, if it is a result object (anything else counts as missing,
/// so the input is asked for again).
fn answer<'a>(responses: Option<&'a InputResponses>, key: &str) -> Option<&'a JsonObject> {
    responses?.get(key)?.as_object()
}

/// A string inside an answer: `content.{field}` for elicitations, `content.text` for sampling.
fn answered_text<'a>(answer: &'a JsonObject, field: &str) -> Option<&'a str> {
    answer.get("content")?.get(field)?.as_str()
}

fn requests<const N: usize>(entries: [(&str, InputRequest); N]) -> InputRequests {
    entries
        .into_iter()
        .map(|(key, request)| (key.to_owned(), request))
        .collect()
}

fn done(text: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
}

fn input_required(
    requests: InputRequests,
    state: Option<String>,
) -> Result<CallToolResponse, ErrorData> {
    Ok(InputRequiredResult::new(Some(requests), state).into())
}

fn tampered() -> ErrorData {
    ErrorData::invalid_params("requestState failed verification", None)
}

impl Inputs {
    fn seal(&self, state: Value) -> Result<String, ErrorData> {
        self.codec
            .seal_json(&state)
            .map_err(|e| ErrorData::internal_error(format!("cannot seal requestState: {e}"), None))
    }

    fn open(&self, sealed: &str) -> Result<Value, ErrorData> {
        self.codec.open_json(sealed).map_err(|_| tampered())
    }

    /// Answers one of [`TOOLS`]; `capabilities` are those the client declared in the request.
    pub fn call(
        &self,
        request: &CallToolRequestParams,
        capabilities: Option<ClientCapabilities>,
    ) -> Result<CallToolResponse, ErrorData> {
        let responses = request.input_responses.as_ref();
        let state = request.request_state.as_deref();
        match request.name.as_ref() {
            "test_input_required_result_elicitation" => match answer(responses, "user_name") {
                Some(a) => done(format!(
                    "Hello, {}!",
                    answered_text(a, "name").unwrap_or("friend")
                )),
                None => input_required(
                    requests([("user_name", ask("What is your name?", "name"))]),
                    None,
                ),
            },
            "test_input_required_result_sampling" => match answer(responses, "capital_question") {
                Some(a) => done(format!(
                    "Sampling response: {}",
                    answered_text(a, "text").unwrap_or_default()
                )),
                None => input_required(
                    requests([("capital_question", sample("What is the capital of France?"))]),
                    None,
                ),
            },
            "test_input_required_result_list_roots" => match answer(responses, "client_roots") {
                Some(a) => {
                    let uris: Vec<&str> = a
                        .get("roots")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|root| root.get("uri")?.as_str())
                        .collect();
                    done(format!("Client roots: [{}]", uris.join(", ")))
                }
                None => input_required(requests([("client_roots", roots())]), None),
            },
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => match state {
                None => input_required(
                    requests([("confirm", ask("Please confirm", "ok"))]),
                    Some(self.seal(json!({"stage": "confirm"}))?),
                ),
                Some(sealed) => {
                    self.open(sealed)?;
                    done("Confirmed: state-ok")
                }
            },
            "test_input_required_result_multiple_inputs" => {
                if let Some(sealed) = state {
                    self.open(sealed)?;
                }
                let keys = ["user_name", "greeting", "client_roots"];
                if state.is_some() && keys.iter().all(|k| answer(responses, k).is_some()) {
                    return done("All inputs received");
                }
                input_required(
                    requests([
                        ("user_name", ask("What is your name?", "name")),
                        ("greeting", sample("Write a one-line greeting")),
                        ("client_roots", roots()),
                    ]),
                    Some(self.seal(json!({"stage": "gather"}))?),
                )
            }
            "test_input_required_result_multi_round" => {
                let round = match state {
                    None => 0,
                    Some(sealed) => self.open(sealed)?["round"].as_u64().unwrap_or(0),
                };
                match round {
                    0 => input_required(
                        requests([("step1", ask("Step 1: what is your name?", "name"))]),
                        Some(self.seal(json!({"round": 1}))?),
                    ),
                    1 => input_required(
                        requests([(
                            "step2",
                            ask("Step 2: what is your favourite colour?", "color"),
                        )]),
                        Some(self.seal(json!({"round": 2}))?),
                    ),
                    _ => done("Multi-round flow complete"),
                }
            }
            "test_input_required_result_capabilities" => {
                if responses.is_some() {
                    return done("Capability-aware flow complete");
                }
                let declared = capabilities.unwrap_or_default();
                let mut wanted = InputRequests::new();
                if declared.elicitation.is_some() {
                    wanted.insert("user_name".into(), ask("What is your name?", "name"));
                }
                if declared.sampling.is_some() {
                    wanted.insert("greeting".into(), sample("Write a one-line greeting"));
                }
                if declared.roots.is_some() {
                    wanted.insert("client_roots".into(), roots());
                }
                if wanted.is_empty() {
                    done("The client declared no capability to answer with")
                } else {
                    input_required(wanted, None)
                }
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }

    /// Renders [`PROMPT`] once the client has said what context to use.
    pub fn prompt(&self, request: &GetPromptRequestParams) -> GetPromptResponse {
        match answer(request.input_responses.as_ref(), "user_context") {
            Some(a) => GetPromptResult::new(vec![PromptMessage::new_text(
                Role::User,
                format!(
                    "Prompt with elicited context: {}",
                    answered_text(a, "context").unwrap_or_default()
                ),
            )])
            .into(),
            None => InputRequiredResult::from_input_requests(requests([(
                "user_context",
                ask("What context should the prompt use?", "context"),
            )]))
            .into(),
        }
    }
}
