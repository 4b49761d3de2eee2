//! Turns core errors into what an MCP client should see: a tool error it can act on, or a
//! protocol error. Internal details stay in the log.

use aop_core::{ServiceError, StoreError};
use rmcp::ErrorData;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ContentBlock};

/// A failed tool call, shown to the client as a result with `isError: true`.
#[derive(Debug)]
pub struct ToolFailure(pub String);

impl From<ServiceError> for ToolFailure {
    fn from(error: ServiceError) -> Self {
        Self(client_message(&error))
    }
}

impl IntoCallToolResult for ToolFailure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::error(vec![ContentBlock::text(self.0)]).into())
    }
}

/// The message a client sees for a service error. Store failures are logged with their source
/// chain and reported without internals.
pub fn client_message(error: &ServiceError) -> String {
    match error {
        ServiceError::Store(store) => {
            tracing::error!(error = %store, source = ?std::error::Error::source(store), "store failure");
            match store {
                // Adapters word this message for operators and keep credentials out of it: it
                // names the backend and where it is, which is what the caller needs to report.
                StoreError::Unavailable { message, .. } => {
                    format!("the store is temporarily unavailable ({message}); retry shortly")
                }
                StoreError::Conflict(_) => {
                    "the change conflicted with a concurrent one; read again and retry".to_owned()
                }
                StoreError::Permanent { .. } => {
                    "internal error while accessing the store; see the server log".to_owned()
                }
            }
        }
        other => other.to_string(),
    }
}

/// Maps a service error onto a JSON-RPC error, for requests that have no tool result
/// (resources).
pub fn protocol_error(error: &ServiceError, uri: &str) -> ErrorData {
    match error {
        ServiceError::NotFound { .. } => {
            ErrorData::resource_not_found(format!("{error} (resource {uri})"), None)
        }
        ServiceError::Invalid(_)
        | ServiceError::Conflict(_)
        | ServiceError::Forbidden(_)
        | ServiceError::SpendCapReached(_) => ErrorData::invalid_params(error.to_string(), None),
        ServiceError::Store(_) => ErrorData::internal_error(client_message(error), None),
        ServiceError::ModelNotConfigured(_) | ServiceError::TurnFailed { .. } => {
            ErrorData::internal_error(error.to_string(), None)
        }
    }
}
