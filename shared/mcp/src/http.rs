//! The HTTP surface: `/mcp` (MCP Streamable HTTP), `/health` and `/metrics`, with request ids,
//! request metrics and bearer authentication. The same Router serves locally and on Lambda.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aop_core::AgentStore;
use aop_core::principal::Principal;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::ServerHandler;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::ApiKeys;
use crate::metrics::Metrics;
use crate::oauth::{OAuthConfig, TokenVerifier};
use crate::request_id::{self, REQUEST_ID_HEADER};
use crate::scopes::{Scope, Scopes};

/// Largest MCP request body accepted.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How the HTTP surface behaves. Built from configuration by the runtime crate.
#[derive(Clone)]
pub struct HttpOptions {
    /// `Host` values accepted on `/mcp` (`host` or `host:port`); DNS-rebinding protection.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted on `/mcp`; a request with any other `Origin` gets 403.
    pub allowed_origins: Vec<String>,
    /// Bearer keys; empty turns authentication off.
    pub api_keys: Vec<SecretString>,
    /// Serve without sessions (every request stands alone), as on Lambda.
    pub stateless: bool,
    /// Answer simple requests with `application/json` rather than an SSE stream.
    pub json_response: bool,
    /// Serve `GET /metrics`.
    pub expose_metrics: bool,
    /// Time a client has to send an MCP request's body once its headers are in; 408 after.
    pub body_timeout: Duration,
    /// Sessions of the `initialize` era: how many, and how long idle.
    pub sessions: crate::sessions::SessionLimits,
    /// The scopes of each named API key; a key not named here has every scope.
    pub key_scopes: HashMap<String, Scopes>,
    /// Bearer tokens from an OAuth issuer, next to (or instead of) API keys.
    pub oauth: Option<OAuthConfig>,
    /// Requests per caller on `/mcp`.
    pub rate_limit: RateLimit,
    /// Refuse requests without a verified caller even when neither keys nor OAuth are
    /// configured (on Lambda, where the entry point passes the JWT authorizer's subject).
    pub require_caller: bool,
    /// Cancelled at shutdown; ends open sessions and streams.
    pub shutdown: CancellationToken,
}

impl Default for HttpOptions {
    fn default() -> Self {
        crate::ServerSettings::default().http_options(CancellationToken::new())
    }
}

/// What the layers share; behind an `Arc`, so a layer's copy is one reference count.
struct AppState {
    store: Arc<dyn AgentStore>,
    metrics: Arc<Metrics>,
    keys: ApiKeys,
    allowed_hosts: Arc<[String]>,
    allowed_origins: Arc<[String]>,
    key_scopes: Arc<HashMap<String, Scopes>>,
    oauth: Option<Arc<TokenVerifier>>,
    limiter: Option<Arc<Limiter>>,
    require_caller: bool,
    body_timeout: Duration,
}

type Shared = State<Arc<AppState>>;

type Limiter = governor::DefaultKeyedRateLimiter<Principal>;

/// Requests per caller: a sustained rate and a burst on top (a token bucket).
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Requests a minute; 0 turns the limit off.
    pub per_minute: u32,
    /// Requests a caller may make at once beyond the rate.
    pub burst: u32,
}

impl RateLimit {
    fn limiter(self) -> Option<Limiter> {
        let per_minute = std::num::NonZeroU32::new(self.per_minute)?;
        let burst = std::num::NonZeroU32::new(self.burst).unwrap_or(std::num::NonZeroU32::MIN);
        Some(governor::RateLimiter::hashmap(
            governor::Quota::per_minute(per_minute).allow_burst(burst),
        ))
    }
}

/// Builds the Router. `make_server` makes the MCP handler: once per session, or once per request
/// when stateless.
pub fn router<S, F>(
    make_server: F,
    options: HttpOptions,
    metrics: Arc<Metrics>,
    store: Arc<dyn AgentStore>,
) -> Router
where
    S: ServerHandler + Send + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(options.allowed_hosts.clone())
        .with_allowed_origins(options.allowed_origins.clone())
        .enforce_origin_validation()
        .with_legacy_session_mode(!options.stateless)
        .with_json_response(options.json_response)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        .with_cancellation_token(options.shutdown.clone());
    let sessions = crate::sessions::Sessions::new(options.sessions);
    let mcp: StreamableHttpService<S, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(make_server()), sessions.manager.clone(), config);
    let state = Arc::new(AppState {
        store,
        metrics,
        keys: ApiKeys::new(options.api_keys.clone()),
        allowed_hosts: options.allowed_hosts.clone().into(),
        allowed_origins: options.allowed_origins.clone().into(),
        key_scopes: Arc::new(options.key_scopes.clone()),
        oauth: options
            .oauth
            .clone()
            .map(|config| Arc::new(TokenVerifier::new(config))),
        limiter: options.rate_limit.limiter().map(Arc::new),
        require_caller: options.require_caller,
        body_timeout: options.body_timeout,
    });
    let mut mcp_routes = Router::new().nest_service("/mcp", mcp);
    if !options.stateless {
        mcp_routes = mcp_routes.layer(middleware::from_fn_with_state(
            sessions,
            crate::sessions::limit,
        ));
    }
    let mcp_routes = mcp_routes.layer(middleware::from_fn_with_state(state.clone(), admit));
    let mut app = Router::new().route("/health", get(health));
    if let Some(config) = &options.oauth {
        // RFC 9728: at the well-known path, and with the resource's path after it.
        let path = config.metadata_path();
        app = app.route(crate::oauth::METADATA_PATH, get(resource_metadata));
        if path != crate::oauth::METADATA_PATH {
            app = app.route(&path, get(resource_metadata));
        }
    }
    if options.expose_metrics {
        // Metrics name every agent and its spend: behind the same keys as /mcp.
        app = app.merge(
            Router::new()
                .route("/metrics", get(metrics_text))
                .layer(middleware::from_fn_with_state(state.clone(), authenticate)),
        );
    }
    // The Host and Origin rules rmcp applies to /mcp, for the routes beside it.
    let app = app.layer(middleware::from_fn_with_state(state.clone(), same_site));
    app.merge(mcp_routes)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// An MCP request's body, read whole by [`read_body`], for the layers inside it.
#[derive(Clone)]
pub(crate) struct BodyBytes(pub(crate) axum::body::Bytes);

/// A client error as the JSON body the other refusals use.
pub(crate) fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "message": message})),
    )
        .into_response()
}

/// Reads an authenticated request's body before the MCP handler sees it, within `deadline` and
/// [`MAX_BODY_BYTES`]: a client that stops sending gets 408, a body cut short (the connection
/// closed, a chunk malformed) 400 and an oversized one 413, instead of a handler waiting on it.
async fn read_body(deadline: Duration, request: Request) -> Result<Request, Response> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};

    let (parts, body) = request.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    let bytes = match tokio::time::timeout(deadline, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return Err(refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("an MCP request body is at most {MAX_BODY_BYTES} bytes"),
            ));
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "request body cut short");
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "incomplete_body",
                "the request body ended before its declared length or was malformed",
            ));
        }
        Err(_) => {
            return Err(refusal(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {} s",
                    deadline.as_secs()
                ),
            ));
        }
    };
    let mut request = Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
    request.extensions_mut().insert(BodyBytes(bytes));
    Ok(request)
}

/// The checks an MCP request passes, in order and in one layer: who is calling, at what rate,
/// its body within its deadline, and whether the caller's scopes allow what it asks for.
async fn admit(State(state): Shared, mut request: Request, next: Next) -> Response {
    if let Err(refused) = identify(&state, &mut request).await {
        return refused;
    }
    if let Some(refused) = within_rate(&state, &request) {
        return refused;
    }
    let request = match read_body(state.body_timeout, request).await {
        Ok(request) => request,
        Err(refused) => return refused,
    };
    if let Some(refused) = permitted(&state, &request) {
        return refused;
    }
    next.run(request).await
}

/// `/metrics`: the caller must be known, as on `/mcp`.
async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    match identify(&state, &mut request).await {
        Ok(()) => next.run(request).await,
        Err(refused) => refused,
    }
}

/// What the MCP handler tells the access line about the call it served: the tool and how the
/// call ended; and which span is the request's. Travels in the request's extensions, which
/// rmcp hands to the handler.
#[derive(Clone)]
pub(crate) struct CallNote(Arc<NoteInner>);

struct NoteInner {
    call: OnceLock<(Cow<'static, str>, &'static str)>,
    span: Option<tracing::Id>,
}

impl CallNote {
    fn new(span: &tracing::Span) -> Self {
        Self(Arc::new(NoteInner {
            call: OnceLock::new(),
            span: span.id(),
        }))
    }

    pub(crate) fn record(&self, tool: Cow<'static, str>, outcome: &'static str) {
        let _ = self.0.call.set((tool, outcome));
    }

    /// Whether the code running now is inside this request's span (which carries its id).
    pub(crate) fn in_request_span(&self) -> bool {
        self.0.span.is_some() && tracing::Span::current().id() == self.0.span
    }
}

/// The method as a metrics label: a fixed set, so no caller can grow the label space.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        _ => "other",
    }
}

/// The `Mcp-Method` header as the access line shows it: a method name as MCP spells them
/// (`tools/call`, `notifications/initialized`), anything else `other`, so a caller cannot
/// write what it likes into the log.
fn rpc_label(method: &str) -> String {
    let plausible = method.len() <= 64
        && !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_');
    if plausible { method } else { "other" }.to_owned()
}

/// Request id, span, request metrics and one access line for every request: at `info` (`warn`
/// for a server error) with the method, route, status, duration and, for a tool call, the tool
/// and its outcome. The line is written when the response body has been sent (or dropped), so
/// a streamed (SSE) answer is logged complete, with its tool.
async fn observe(State(state): Shared, mut request: Request, next: Next) -> Response {
    let id = request_id::ensure(&mut request);
    let method = method_label(request.method());
    let route = match request.uri().path() {
        "/mcp" => "/mcp",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let rpc = request
        .headers()
        .get("mcp-method")
        .and_then(|v| v.to_str().ok())
        .map(rpc_label);
    let span = tracing::info_span!("http_request", request_id = id.as_str());
    let note = CallNote::new(&span);
    request.extensions_mut().insert(note.clone());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    state
        .metrics
        .observe_http(route, method, status, started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let line = AccessLine {
        span,
        started,
        method,
        route,
        rpc,
        status,
        note,
    };
    response.map(|body| axum::body::Body::new(Logged { body, _line: line }))
}

/// The access line of one request, written when it is dropped with the response body.
struct AccessLine {
    span: tracing::Span,
    started: Instant,
    method: &'static str,
    route: &'static str,
    rpc: Option<String>,
    status: u16,
    note: CallNote,
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (tool, outcome) = self
            .note
            .0
            .call
            .get()
            .map_or((None, None), |(t, o)| (Some(t.as_ref()), Some(*o)));
        let (method, route, rpc, status) =
            (self.method, self.route, self.rpc.as_deref(), self.status);
        self.span.in_scope(|| {
            if status >= 500 {
                tracing::warn!(
                    method,
                    route,
                    rpc,
                    tool,
                    outcome,
                    status,
                    duration_ms,
                    "request failed"
                );
            } else {
                tracing::info!(
                    method,
                    route,
                    rpc,
                    tool,
                    outcome,
                    status,
                    duration_ms,
                    "request"
                );
            }
        });
    }
}

/// A response body that carries its request's access line.
struct Logged {
    body: axum::body::Body,
    _line: AccessLine,
}

impl http_body::Body for Logged {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Requires a bearer credential on `/mcp` and `/metrics` when keys or OAuth are configured, and
/// records who the caller is ([`Principal`]) and what it may do ([`Scopes`]) in the request: a
/// key's name and configured scopes, or a token's subject and `scope` claim. With neither
/// configured the caller is anonymous with every scope, unless the entry point has put a
/// principal there already (a JWT's subject on Lambda).
async fn identify(state: &AppState, request: &mut Request) -> Result<(), Response> {
    if !state.keys.enabled() && state.oauth.is_none() {
        if request.extensions().get::<Principal>().is_none() {
            if state.require_caller {
                return Err(refusal(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "no verified caller: this server has no API keys (AOP_API_KEYS) or OAuth issuer (AOP_OAUTH_ISSUER), and the request did not pass a JWT authorizer",
                ));
            }
            request.extensions_mut().insert(Principal::anonymous());
        }
        request.extensions_mut().insert(Scopes::all());
        return Ok(());
    }
    let mut presented = request.headers().get_all(header::AUTHORIZATION).iter();
    let given = presented.next().and_then(|v| v.to_str().ok());
    if presented.next().is_some() {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "send one Authorization header, not several",
        ));
    }
    if let Some(principal) = state.keys.principal(given) {
        let scopes = state
            .key_scopes
            .get(principal.as_str())
            .copied()
            .unwrap_or_else(Scopes::all);
        request.extensions_mut().insert(principal);
        request.extensions_mut().insert(scopes);
        return Ok(());
    }
    let token = given.and_then(crate::auth::bearer_token);
    let mut why = None;
    if let (Some(verifier), Some(token)) = (&state.oauth, token) {
        match verifier.verify(token).await {
            Ok(caller) => {
                request.extensions_mut().insert(caller.principal);
                request.extensions_mut().insert(caller.scopes);
                return Ok(());
            }
            Err(e) => why = Some(e),
        }
    }
    let reason = if given.is_some() {
        "invalid_token"
    } else {
        "missing_token"
    };
    tracing::debug!(reason, token_error = ?why, "rejected unauthenticated MCP request");
    let message = match (&why, state.oauth.is_some()) {
        (Some(e), _) => e.to_string(),
        (None, true) => {
            "send an API key or an access token as `Authorization: Bearer <credential>`".to_owned()
        }
        (None, false) => "send an API key as `Authorization: Bearer <key>`".to_owned(),
    };
    let mut challenge = String::from("Bearer realm=\"aop\"");
    if given.is_some() {
        challenge.push_str(", error=\"invalid_token\"");
        if let Some(e) = &why {
            challenge.push_str(&format!(", error_description=\"{e}\""));
        }
    }
    Err(challenged(
        refusal(StatusCode::UNAUTHORIZED, reason, &message),
        challenge,
        state,
    ))
}

/// `response` with `WWW-Authenticate: <challenge>`, pointing OAuth clients at this server's
/// protected-resource metadata when there is an issuer.
fn challenged(mut response: Response, mut challenge: String, state: &AppState) -> Response {
    if let Some(verifier) = &state.oauth {
        challenge.push_str(&format!(
            ", resource_metadata=\"{}\"",
            verifier.config().metadata_url()
        ));
    }
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The 429 (with `Retry-After`) for a caller beyond its rate, checked before the body is read.
fn within_rate(state: &AppState, request: &Request) -> Option<Response> {
    let limiter = state.limiter.as_ref()?;
    let anonymous = Principal::anonymous();
    let caller = request
        .extensions()
        .get::<Principal>()
        .unwrap_or(&anonymous);
    if let Err(not_until) = limiter.check_key(caller) {
        use governor::clock::Clock;
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::debug!(caller = caller.as_str(), seconds, "rate limited");
        let mut response = refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!("too many requests from this caller; try again in {seconds} s"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return Some(response);
    }
    // Callers that stopped calling are forgotten now and then, so the table stays small.
    if limiter.len() > 10_000 {
        limiter.retain_recent();
    }
    None
}

/// The 403 naming the scope a tool call or read needs when the caller's scopes lack it, before
/// it reaches the tool.
fn permitted(state: &AppState, request: &Request) -> Option<Response> {
    let held = request
        .extensions()
        .get::<Scopes>()
        .copied()
        .unwrap_or_else(Scopes::all);
    if held.is_all() {
        return None;
    }
    let needed = request
        .extensions()
        .get::<BodyBytes>()
        .map(|body| crate::scopes::for_request(&body.0))
        .unwrap_or_default();
    needed
        .into_iter()
        .find(|scope| !held.allows(*scope))
        .map(|missing| insufficient_scope(state, missing))
}

fn insufficient_scope(state: &AppState, missing: Scope) -> Response {
    challenged(
        refusal(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            &format!("this request needs the scope {missing}, which the credential does not carry"),
        ),
        format!("Bearer realm=\"aop\", error=\"insufficient_scope\", scope=\"{missing}\""),
        state,
    )
}

/// The protected-resource metadata (RFC 9728) that points MCP clients to the issuer.
async fn resource_metadata(State(state): Shared) -> Response {
    match &state.oauth {
        Some(verifier) => Json(verifier.config().metadata()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Refuses a request whose `Host` or `Origin` is not allowed (403), as rmcp does on `/mcp`.
async fn same_site(State(state): Shared, request: Request, next: Next) -> Response {
    let refused = crate::origin::refusal(
        request.uri(),
        request.headers(),
        &state.allowed_hosts,
        &state.allowed_origins,
    );
    match refused {
        None => next.run(request).await,
        Some(reason) => {
            tracing::debug!(reason, "refused a request from another site");
            refusal(StatusCode::FORBIDDEN, "forbidden", reason)
        }
    }
}

/// Whether the process and its store are up. Says what kind of store, never where it is: the
/// detail (a path, a URI or why it is down) goes to the log.
async fn health(State(state): Shared) -> Response {
    let store = state.store.health().await;
    let status = if store.up {
        StatusCode::OK
    } else {
        tracing::warn!(store = store.kind, detail = %store.detail, "health check: the store is down");
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if store.up { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "store": {"kind": store.kind, "up": store.up},
    });
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): Shared, request: Request) -> Response {
    let held = request.extensions().get::<Scopes>().copied();
    if held.is_some_and(|scopes| !scopes.is_all()) {
        return insufficient_scope(&state, Scope::Admin);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
