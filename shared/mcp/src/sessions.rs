//! Limits on the sessions of the `initialize` era: how many are open at once in all and per
//! caller, and how long one may sit idle. Each open session holds a worker and its buffers, so an
//! unlimited number of `initialize` calls is a way to exhaust the server's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aop_core::principal::Principal;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

const SESSION_HEADER: &str = "mcp-session-id";

/// The session limits, from the `server` settings.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Sessions open at once, all callers together.
    pub max: usize,
    /// Sessions open at once for one caller (an API key's name, or everyone when keys are off).
    pub max_per_principal: usize,
    /// A session without any request for this long is closed; the client initializes again.
    pub idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max: 1000,
            max_per_principal: 100,
            idle: Duration::from_secs(120),
        }
    }
}

/// The session manager with the limits applied around it.
pub(crate) struct Sessions {
    pub(crate) manager: Arc<LocalSessionManager>,
    limits: SessionLimits,
    /// Who opened each session; entries of closed sessions are dropped as they are found.
    owners: Mutex<HashMap<String, Principal>>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Arc<Self> {
        let mut manager = LocalSessionManager::default();
        manager.session_config.keep_alive = Some(limits.idle);
        Arc::new(Self {
            manager: Arc::new(manager),
            limits,
            owners: Mutex::default(),
        })
    }

    /// Why `principal` may not open another session now, if it may not.
    async fn refusal(&self, principal: &Principal) -> Option<(StatusCode, &'static str)> {
        let open = self.manager.sessions.read().await;
        if open.len() >= self.limits.max {
            return Some((
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has as many sessions open as it allows; try again shortly",
            ));
        }
        let mut owners = self
            .owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        owners.retain(|id, _| open.contains_key(id.as_str()));
        let mine = owners.values().filter(|p| *p == principal).count();
        (mine >= self.limits.max_per_principal).then_some((
            StatusCode::TOO_MANY_REQUESTS,
            "this caller has as many sessions open as it may; close one (DELETE /mcp) or wait for one to idle out",
        ))
    }

    fn opened(&self, id: &str, principal: Principal) {
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), principal);
    }
}

/// Whether the (already read) body is an `initialize` request: the one that opens a session.
fn is_initialize(request: &Request) -> bool {
    #[derive(serde::Deserialize)]
    struct Method<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
    }
    let Some(body) = request.extensions().get::<crate::http::BodyBytes>() else {
        return false;
    };
    serde_json::from_slice::<Method<'_>>(&body.0).is_ok_and(|m| m.method == Some("initialize"))
}

/// Refuses an `initialize` over the limits (503 when the server is full, 429 when the caller
/// is), and notes who opened each session it lets through.
pub(crate) async fn limit(
    State(sessions): State<Arc<Sessions>>,
    request: Request,
    next: Next,
) -> Response {
    // A request in a session, or a 2026-07-28 request (which names its method in a header),
    // opens nothing.
    let opening = request.method() == Method::POST
        && !request.headers().contains_key(SESSION_HEADER)
        && !request.headers().contains_key("mcp-method")
        && is_initialize(&request);
    if !opening {
        return next.run(request).await;
    }
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous);
    if let Some((status, message)) = sessions.refusal(&principal).await {
        tracing::debug!(principal = principal.as_str(), %status, "session refused");
        let mut response = crate::http::refusal(status, "too_many_sessions", message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    let response = next.run(request).await;
    if let Some(id) = response
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        sessions.opened(id, principal);
    }
    response
}
