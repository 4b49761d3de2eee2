//! What the conformance suite calls: `test_*` tools, `test://` resources and `test_*` prompts,
//! with the contents its scenarios expect.

use rmcp::model::{
    AudioContent, CallToolResult, ContentBlock, ElicitRequest, ElicitRequestParams,
    GetPromptResult, InputRequest, JsonObject, Prompt, PromptArgument, PromptMessage,
    ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role, Tool,
};
use serde_json::{Value, json};

/// A 1x1 PNG.
pub const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV file with one silent sample.
pub const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";

fn schema(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

fn no_arguments() -> JsonObject {
    schema(json!({"type": "object", "properties": {}}))
}

fn one_string(name: &str, description: &str) -> JsonObject {
    schema(json!({
        "type": "object",
        "properties": {name: {"type": "string", "description": description}},
        "required": [name]
    }))
}

/// Every fixture tool, with a description (the suite requires one).
pub fn tools() -> Vec<Tool> {
    let plain = [
        ("test_simple_text", "Returns a simple text response"),
        ("test_image_content", "Returns a PNG image"),
        ("test_audio_content", "Returns a WAV clip"),
        (
            "test_embedded_resource",
            "Returns an embedded text resource",
        ),
        (
            "test_multiple_content_types",
            "Returns text, an image and a resource",
        ),
        (
            "test_tool_with_logging",
            "Sends three log notifications while it runs",
        ),
        (
            "test_tool_with_progress",
            "Reports progress 0, 50 and 100 of 100",
        ),
        ("test_error_handling", "Always fails with a tool error"),
        ("test_reconnection", "Answers after a short pause"),
        (
            "test_elicitation_sep1034_defaults",
            "Elicits a form whose fields have defaults",
        ),
        (
            "test_elicitation_sep1330_enums",
            "Elicits a form with every enum style",
        ),
        (
            "test_trigger_tool_change",
            "Tells every subscription that the tool list changed",
        ),
        (
            "test_trigger_prompt_change",
            "Tells every subscription that the prompt list changed",
        ),
        (
            "test_missing_capability",
            "Needs the client's sampling capability",
        ),
        (
            "test_streaming_elicitation",
            "Answers with an input-required result holding an elicitation",
        ),
        (
            "test_logging_tool",
            "Sends a log notification only when the request asks for a log level",
        ),
    ];
    let mut tools: Vec<Tool> = plain
        .iter()
        .chain(&crate::input::TOOLS)
        .map(|(name, description)| Tool::new(*name, *description, no_arguments()))
        .chain(crate::tasks::tools())
        .collect();
    tools.push(Tool::new(
        "test_custom_header",
        "Echoes `value`, which clients also send as the Mcp-Param-Value header (SEP-2243)",
        schema(json!({
            "type": "object",
            "properties": {"value": {"type": "string", "x-mcp-header": "Value"}},
            "required": ["value"]
        })),
    ));
    tools.push(Tool::new(
        "test_sampling",
        "Asks the client's model to complete a prompt",
        one_string("prompt", "The prompt to send to the model"),
    ));
    tools.push(Tool::new(
        "test_elicitation",
        "Asks the user for a username and an email address",
        one_string("message", "The message shown to the user"),
    ));
    tools.push(Tool::new(
        "json_schema_2020_12_tool",
        "Takes arguments described with JSON Schema 2020-12",
        schema(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"address": {"type": "object", "properties": {
                "street": {"type": "string"}, "city": {"type": "string"}}}},
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": false
        })),
    ));
    tools
}

pub fn is_fixture_tool(name: &str) -> bool {
    name.starts_with("test_")
        || name == "json_schema_2020_12_tool"
        || crate::tasks::is_task_fixture(name)
}

fn text_resource(uri: &str, mime: &str, text: &str) -> ResourceContents {
    ResourceContents::text(text, uri).with_mime_type(mime)
}

/// Results of the fixture tools that need nothing from the client.
pub fn simple_tool_result(name: &str, arguments: &JsonObject) -> Option<CallToolResult> {
    let result = match name {
        "test_simple_text" => CallToolResult::success(vec![ContentBlock::text(
            "This is a simple text response for testing.",
        )]),
        "test_image_content" => {
            CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")])
        }
        "test_audio_content" => CallToolResult::success(vec![ContentBlock::Audio(
            AudioContent::new(WAV, "audio/wav"),
        )]),
        "test_embedded_resource" => {
            CallToolResult::success(vec![ContentBlock::resource(text_resource(
                "test://embedded-resource",
                "text/plain",
                "This is an embedded resource content.",
            ))])
        }
        "test_multiple_content_types" => CallToolResult::success(vec![
            ContentBlock::text("Multiple content types test:"),
            ContentBlock::image(PNG, "image/png"),
            ContentBlock::resource(text_resource(
                "test://mixed-content-resource",
                "application/json",
                r#"{"test":"data","value":123}"#,
            )),
        ]),
        "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
            "This tool intentionally returns an error for testing",
        )]),
        "test_custom_header" => CallToolResult::success(vec![ContentBlock::text(
            arguments
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )]),
        "json_schema_2020_12_tool" => CallToolResult::success(vec![ContentBlock::text(format!(
            "received {}",
            Value::Object(arguments.clone())
        ))]),
        _ => return None,
    };
    Some(result)
}

/// A request for a one-field form (`field` of JSON type `kind`), as input-required results and
/// tasks ask for input.
pub fn form_request(message: &str, field: &str, kind: &str) -> InputRequest {
    let schema = json!({
        "type": "object",
        "properties": {field: {"type": kind}},
        "required": [field],
    });
    InputRequest::Elicitation(ElicitRequest::new(
        ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.to_owned(),
            requested_schema: serde_json::from_value(schema)
                .expect("a one-field form is an elicitation schema"),
        },
    ))
}

/// The form `test_elicitation` asks for.
pub fn user_form() -> Value {
    json!({"type": "object", "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"}},
        "required": ["username", "email"]})
}

/// A form whose fields carry defaults (SEP-1034).
pub fn defaults_form() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {"type": "string", "description": "User status",
                   "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "description": "Verification status", "default": true}}})
}

/// A form with every enum style (SEP-1330).
pub fn enums_form() -> Value {
    let titled = |prefix: &str, word: &str| {
        json!([
            {"const": format!("{prefix}1"), "title": format!("First {word}")},
            {"const": format!("{prefix}2"), "title": format!("Second {word}")},
            {"const": format!("{prefix}3"), "title": format!("Third {word}")}
        ])
    };
    json!({"type": "object", "properties": {
        "untitledSingle": {"type": "string", "description": "Pick one",
                           "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "description": "Pick one (titled)",
                         "oneOf": titled("value", "Option")},
        "legacyEnum": {"type": "string", "description": "Pick one (legacy names)",
                       "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "description": "Pick several", "minItems": 1,
                          "maxItems": 3,
                          "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "description": "Pick several (titled)", "minItems": 1,
                        "maxItems": 3, "items": {"anyOf": titled("value", "Choice")}}}})
}

pub fn resources() -> Vec<Resource> {
    vec![
        Resource::new("test://static-text", "static-text")
            .with_description("Static text")
            .with_mime_type("text/plain"),
        Resource::new("test://static-binary", "static-binary")
            .with_description("A static PNG image")
            .with_mime_type("image/png"),
        Resource::new("test://watched-resource", "watched-resource")
            .with_description("A resource clients can subscribe to")
            .with_mime_type("text/plain"),
    ]
}

pub fn resource_templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new("test://template/{id}/data", "template-data")
            .with_description("Data for an id")
            .with_mime_type("application/json"),
    ]
}

/// Reads a `test://` resource; `None` when there is no such resource.
pub fn read_resource(uri: &str) -> Option<ReadResourceResult> {
    let contents = match uri {
        "test://static-text" => text_resource(
            uri,
            "text/plain",
            "This is the content of the static text resource.",
        ),
        "test://watched-resource" => text_resource(uri, "text/plain", "Watched resource content"),
        "test://static-binary" => ResourceContents::blob(PNG, uri).with_mime_type("image/png"),
        _ => {
            let id = uri
                .strip_prefix("test://template/")?
                .strip_suffix("/data")
                .filter(|id| !id.is_empty() && !id.contains('/'))?;
            let body =
                json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
            text_resource(uri, "application/json", &body.to_string())
        }
    };
    Some(ReadResourceResult::new(vec![contents]))
}

pub fn prompts() -> Vec<Prompt> {
    let required = |name: &str, description: &str| {
        PromptArgument::new(name)
            .with_description(description)
            .with_required(true)
    };
    vec![
        Prompt::new(
            "test_simple_prompt",
            Some("A prompt without arguments"),
            None,
        ),
        Prompt::new(
            "test_prompt_with_arguments",
            Some("A prompt with two required arguments"),
            Some(vec![
                required("arg1", "First argument"),
                required("arg2", "Second argument"),
            ]),
        ),
        Prompt::new(
            "test_prompt_with_embedded_resource",
            Some("A prompt that embeds a resource"),
            Some(vec![required(
                "resourceUri",
                "URI of the resource to embed",
            )]),
        ),
        Prompt::new(
            "test_prompt_with_image",
            Some("A prompt with an image"),
            None,
        ),
        Prompt::new(
            crate::input::PROMPT,
            Some("A prompt that asks for its context first"),
            None,
        ),
    ]
}

/// A fixture prompt's messages; `None` for an unknown prompt.
pub fn prompt(name: &str, arguments: &JsonObject) -> Option<GetPromptResult> {
    let arg = |key: &str| {
        arguments
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let messages = match name {
        "test_simple_prompt" => vec![PromptMessage::new_text(
            Role::User,
            "This is a simple prompt for testing.",
        )],
        "test_prompt_with_arguments" => vec![PromptMessage::new_text(
            Role::User,
            format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1"),
                arg("arg2")
            ),
        )],
        "test_prompt_with_embedded_resource" => vec![
            PromptMessage::new_resource(
                Role::User,
                arg("resourceUri"),
                Some("text/plain".into()),
                Some("Embedded resource content for testing.".into()),
                None,
                None,
                None,
            ),
            PromptMessage::new_text(Role::User, "Please process the embedded resource above."),
        ],
        "test_prompt_with_image" => vec![
            PromptMessage::new(Role::User, ContentBlock::image(PNG, "image/png")),
            PromptMessage::new_text(Role::User, "Please analyze the image above."),
        ],
        _ => return None,
    };
    Some(GetPromptResult::new(messages))
}
