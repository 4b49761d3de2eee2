//! Structured tool results, serialised once per form.
//!
//! rmcp's own `Json<T>` turns `T` into a `serde_json::Value` and then prints that tree through
//! `Display` for the text block, piece by piece through the formatting machinery; on a point read
//! such as `get_agent` that print was a tenth of the server's CPU per call. This `Json<T>` writes
//! the text straight from `T` (one pass into one buffer) and builds the tree for
//! `structuredContent` once. The tool macros see the same name and derive the same output schema
//! from `T`; the client sees the same two forms of the same object (the text's keys in the
//! type's order, the tree's sorted, as JSON objects are unordered).

use rmcp::ErrorData;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Serialize;

/// A tool's result as structured content and its text copy.
pub struct Json<T>(pub T);

impl<T: JsonSchema> JsonSchema for Json<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl<T: Serialize + JsonSchema + 'static> IntoCallToolResult for Json<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let failed = |e: serde_json::Error| {
            ErrorData::internal_error(format!("cannot serialise the result: {e}"), None)
        };
        let text = serde_json::to_string(&self.0).map_err(failed)?;
        let value = serde_json::to_value(&self.0).map_err(failed)?;
        let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
        result.structured_content = Some(value);
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, JsonSchema)]
    struct Shown {
        name: &'static str,
        count: u32,
        tags: Vec<&'static str>,
    }

    #[test]
    fn text_and_structured_content_are_the_same_object() {
        let shown = Shown {
            name: "a \"quoted\" name",
            count: 3,
            tags: vec!["x", "y"],
        };
        let CallToolResponse::Complete(result) =
            Json(shown).into_call_tool_result().expect("serialises")
        else {
            panic!("a complete result")
        };
        assert_eq!(result.is_error, Some(false));
        let structured = result.structured_content.expect("structured content");
        assert_eq!(
            structured,
            serde_json::json!({"name": "a \"quoted\" name", "count": 3, "tags": ["x", "y"]})
        );
        let text = result.content[0]
            .as_text()
            .expect("a text block")
            .text
            .clone();
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("the text is JSON");
        assert_eq!(parsed, structured);
    }
}
