//! A request id for every HTTP request: taken from the caller's `x-request-id` when it is sane,
//! generated otherwise, echoed in the response and carried into tool spans.

use axum::extract::Request;
use axum::http::HeaderValue;
use rmcp::RoleServer;
use rmcp::service::RequestContext;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Ensures the request carries a usable request id and returns it.
pub fn ensure(request: &mut Request) -> String {
    let given = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        })
        .map(str::to_owned);
    let id = given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    id
}

/// The request id of the HTTP request an MCP request arrived in.
pub fn from_context(context: &RequestContext<RoleServer>) -> String {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.headers.get(REQUEST_ID_HEADER))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}
