//! Our chat types to the Chat Completions wire types and back. Answers are parsed leniently
//! (unknown finish reasons, tool calls without `type`) because compatible servers differ.

use aop_core::llm::{ChatMessage, ChatRequest, ChatResponse, LlmError, ToolCall};
use aop_core::session::{Role, TokenUsage};
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestToolMessageArgs,
    ChatCompletionRequestUserMessageArgs, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FunctionCall, FunctionObjectArgs,
};
use serde::Deserialize;

fn message(m: &ChatMessage) -> Result<ChatCompletionRequestMessage, OpenAIError> {
    Ok(match m.role {
        Role::System => ChatCompletionRequestSystemMessageArgs::default()
            .content(m.content.clone())
            .build()?
            .into(),
        Role::User => ChatCompletionRequestUserMessageArgs::default()
            .content(m.content.clone())
            .build()?
            .into(),
        Role::Assistant => {
            let mut args = ChatCompletionRequestAssistantMessageArgs::default();
            if !m.content.is_empty() {
                args.content(m.content.clone());
            }
            if !m.tool_calls.is_empty() {
                args.tool_calls(
                    m.tool_calls
                        .iter()
                        .map(|c| {
                            ChatCompletionMessageToolCalls::Function(
                                ChatCompletionMessageToolCall {
                                    id: c.id.clone(),
                                    function: FunctionCall {
                                        name: c.name.clone(),
                                        arguments: c.arguments.clone(),
                                    },
                                },
                            )
                        })
                        .collect::<Vec<_>>(),
                );
            }
            args.build()?.into()
        }
        Role::Tool => ChatCompletionRequestToolMessageArgs::default()
            .tool_call_id(m.tool_call_id.clone().unwrap_or_default())
            .content(m.content.clone())
            .build()?
            .into(),
    })
}

/// The wire request.
///
/// # Errors
/// When a message cannot be expressed (a builder refuses it).
#[allow(deprecated)] // `max_tokens`: what most OpenAI-compatible servers understand.
pub(crate) fn to_request(r: &ChatRequest) -> Result<CreateChatCompletionRequest, OpenAIError> {
    let messages = r
        .messages
        .iter()
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(r.model.clone()).messages(messages);
    if !r.tools.is_empty() {
        let tools = r
            .tools
            .iter()
            .map(|t| {
                Ok(ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObjectArgs::default()
                        .name(t.name.clone())
                        .description(t.description.clone())
                        .parameters(t.parameters.clone())
                        .build()?,
                }))
            })
            .collect::<Result<Vec<_>, OpenAIError>>()?;
        args.tools(tools);
    }
    if let Some(t) = r.temperature {
        args.temperature(t as f32);
    }
    if let Some(p) = r.top_p {
        args.top_p(p as f32);
    }
    let mut request = args.build()?;
    request.max_tokens = r.max_tokens;
    Ok(request)
}

/// A completion as any compatible server sends it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LenientResponse {
    #[serde(default)]
    model: String,
    #[serde(default)]
    choices: Vec<LenientChoice>,
    #[serde(default)]
    usage: Option<LenientUsage>,
}

#[derive(Debug, Clone, Deserialize)]
struct LenientChoice {
    message: LenientMessage,
}

#[derive(Debug, Clone, Deserialize)]
struct LenientMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<LenientToolCall>>,
}

#[derive(Debug, Clone, Deserialize)]
struct LenientToolCall {
    id: String,
    function: FunctionCall,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct LenientUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

pub(crate) fn from_response(r: LenientResponse) -> Result<ChatResponse, LlmError> {
    let choice = r
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| LlmError::Invalid("the answer has no choices".into()))?;
    let usage = r.usage.unwrap_or_default();
    Ok(ChatResponse {
        content: choice.message.content,
        tool_calls: choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect(),
        usage: TokenUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        },
        model: r.model,
    })
}
