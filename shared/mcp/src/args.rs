//! Tool arguments. [`Parameters`] stands in for rmcp's extractor of the same name (the tool macro
//! finds the input type by that name): arguments that do not fit the tool's input type become a
//! tool error naming the field path and the reason, for every tool, with no list to keep.

use rmcp::ErrorData;
use rmcp::handler::server::common::FromContextPart;
use rmcp::handler::server::tool::ToolCallContext;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// The start of the message rmcp turns into a tool error (`isError: true`) rather than a
/// JSON-RPC error; [`crate::server`] removes it before the client sees the message.
pub(crate) const DESERIALIZE_PREFIX: &str = "failed to deserialize parameters: ";

/// A tool's arguments, deserialized into `T`.
pub struct Parameters<T>(pub T);

impl<T: JsonSchema> JsonSchema for Parameters<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<S, T: DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Parameters<T> {
    fn from_context_part(context: &mut ToolCallContext<'_, S>) -> Result<Self, ErrorData> {
        let arguments = serde_json::Value::Object(context.arguments.take().unwrap_or_default());
        serde_path_to_error::deserialize(arguments)
            .map(Parameters)
            .map_err(|e| {
                ErrorData::invalid_params(
                    format!("{DESERIALIZE_PREFIX}{}", explain(context.name(), &e)),
                    None,
                )
            })
    }
}

/// `invalid arguments for create_agent: parameters.temperature: invalid type: ...`
fn explain(tool: &str, error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let inner = error.inner();
    if path == "." || path.is_empty() {
        format!("invalid arguments for {tool}: {inner}")
    } else {
        format!("invalid arguments for {tool}: {path}: {inner}")
    }
}
