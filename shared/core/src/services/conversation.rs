//! Agents answering: sessions, turns through the model port, delegation between agents, and the
//! interaction record of every turn.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, instrument};

use crate::agent::{Agent, AgentId, AgentStatus, AgentVersion, PROD_ALIAS};
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::error::StoreError;
use crate::events::{DomainEvent, payload};
use crate::llm::{ChatMessage, ChatModel, ChatRequest, LlmError, ToolCall, ToolSpec};
use crate::page::{Page, PageRequest};
use crate::ports::{AgentStore, NoSignal, OutboxSignal, SessionStore};
use crate::pricing::PriceTable;
use crate::principal::Principal;
use crate::session::{
    Interaction, InteractionId, InteractionStatus, Message, Role, Session, SessionId,
    SessionStatus, TokenUsage, ToolCallRecord,
};
use crate::spend::{SpendCaps, Spender, day_start};
use crate::validate::Problems;

/// How often a turn tries again to record itself after losing a race with another turn of its
/// session.
const RECORD_ATTEMPTS: u32 = 5;
const MAX_MESSAGE: usize = 100_000;
const MAX_USER_ID: usize = 200;
const MAX_CONTEXT_BYTES: usize = 16 * 1024;
const MAX_SUMMARY: usize = 4_000;
/// Messages read back to build a turn's history before the token budget trims them.
const HISTORY_WINDOW: u32 = 200;

/// Bounds on one turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLimits {
    /// How many agents deep delegation may go below the agent the user talks to.
    pub max_delegation_depth: usize,
    /// Tool calls the model may make in one turn.
    pub max_tool_calls: usize,
    /// Approximate tokens of session history sent with a turn (oldest messages drop first).
    pub history_budget_tokens: usize,
    /// Deadline of a whole turn, delegations included.
    pub turn_timeout: Duration,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            max_delegation_depth: 3,
            max_tool_calls: 8,
            history_budget_tokens: 8_000,
            turn_timeout: Duration::from_secs(60),
        }
    }
}

/// Told about every recorded interaction (metrics).
pub trait InteractionObserver: Send + Sync {
    fn recorded(&self, interaction: &Interaction);
}

/// An observer that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl InteractionObserver for NoObserver {
    fn recorded(&self, _interaction: &Interaction) {}
}

/// Input of `start_session`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    pub agent_id: AgentId,
    /// The alias to talk to; default `prod`. It is resolved to one version for the whole session.
    #[serde(default)]
    pub alias: Option<String>,
    /// Who is talking. Default `anonymous`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Any JSON object to keep with the session.
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// Input of `send_message`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub session_id: SessionId,
    /// What the user says.
    pub content: String,
    /// The authenticated caller, set by the entry point (never an argument); recorded as the
    /// interaction's `invoked_by` and charged against its daily spend cap.
    #[serde(skip)]
    #[schemars(skip)]
    pub caller: Option<Principal>,
}

/// Input of `run_agent`: one turn without a session.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAgent {
    pub agent_id: AgentId,
    /// Default `prod`.
    #[serde(default)]
    pub alias: Option<String>,
    pub input: String,
    #[serde(default)]
    pub user_id: Option<String>,
    /// The authenticated caller, set by the entry point (never an argument); recorded as the
    /// interaction's `invoked_by` and charged against its daily spend cap.
    #[serde(skip)]
    #[schemars(skip)]
    pub caller: Option<Principal>,
}

/// What a turn produced.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TurnReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    pub interaction_id: InteractionId,
    pub agent_id: AgentId,
    pub version: u32,
    pub reply: String,
    pub model: String,
    pub usage: TokenUsage,
    /// US dollars; absent when the model has no configured price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    pub latency_ms: u64,
    pub tool_calls: Vec<ToolCallRecord>,
}

impl TurnReply {
    fn from_interaction(i: &Interaction) -> Self {
        Self {
            session_id: i.session_id.clone(),
            interaction_id: i.interaction_id.clone(),
            agent_id: i.agent_id.clone(),
            version: i.version,
            reply: i.output.clone().unwrap_or_default(),
            model: i.model.clone(),
            usage: i.usage,
            cost_usd: i.cost_usd,
            latency_ms: i.latency_ms,
            tool_calls: i.tool_calls.clone(),
        }
    }
}

/// Where a turn runs: which agent version, for whom, within which chain of delegations.
struct Turn {
    agent: Agent,
    version: AgentVersion,
    session_id: Option<SessionId>,
    history: Vec<ChatMessage>,
    input: String,
    deadline: Instant,
    /// Agents from the one the user talks to down to this one.
    chain: Vec<AgentId>,
    parent: Option<InteractionId>,
    interaction_id: InteractionId,
    /// Who asked for the turn; a delegation inherits it.
    caller: Option<Principal>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sessions and turns.
#[derive(Clone)]
pub struct ConversationService {
    agents: Arc<dyn AgentStore>,
    sessions: Arc<dyn SessionStore>,
    model: Arc<dyn ChatModel>,
    clock: Arc<dyn Clock>,
    prices: Arc<PriceTable>,
    limits: TurnLimits,
    observer: Arc<dyn InteractionObserver>,
    signal: Arc<dyn OutboxSignal>,
    caps: Arc<SpendCaps>,
}

/// The event of a recorded interaction.
fn interaction_event(i: &Interaction) -> DomainEvent {
    let time = i.created_at + i64::try_from(i.latency_ms).unwrap_or(0);
    let interaction = i.clone();
    match i.status {
        InteractionStatus::Completed => DomainEvent::new(
            &i.agent_id,
            time,
            payload::InteractionCompleted { interaction },
        ),
        InteractionStatus::Failed => DomainEvent::new(
            &i.agent_id,
            time,
            payload::InteractionFailed { interaction },
        ),
    }
}

impl ConversationService {
    pub fn new(
        agents: Arc<dyn AgentStore>,
        sessions: Arc<dyn SessionStore>,
        model: Arc<dyn ChatModel>,
        clock: Arc<dyn Clock>,
        prices: PriceTable,
        limits: TurnLimits,
        observer: Arc<dyn InteractionObserver>,
    ) -> Self {
        Self {
            agents,
            sessions,
            model,
            clock,
            prices: Arc::new(prices),
            limits,
            observer,
            signal: Arc::new(NoSignal),
            caps: Arc::new(SpendCaps::default()),
        }
    }

    /// Refuses turns once an agent or a caller has spent its daily cap.
    #[must_use]
    pub fn with_spend_caps(mut self, caps: SpendCaps) -> Self {
        self.caps = Arc::new(caps);
        self
    }

    /// Wakes `signal` after every commit that wrote events.
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    pub fn limits(&self) -> TurnLimits {
        self.limits
    }

    /// Opens a session with an agent alias, pinned to the version the alias resolves to now.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent or alias; `Conflict` for an archived agent; `Invalid` for
    /// bad input.
    #[instrument(name = "start_session", skip_all, fields(agent_id = %input.agent_id, session_id))]
    pub async fn start_session(&self, input: StartSession) -> Result<Session, ServiceError> {
        let mut p = Problems::default();
        let alias = p.text("alias", input.alias.as_deref().unwrap_or(PROD_ALIAS), 1, 64);
        let user_id = p.text(
            "user_id",
            input.user_id.as_deref().unwrap_or("anonymous"),
            1,
            MAX_USER_ID,
        );
        let context = input.context.unwrap_or_else(|| serde_json::json!({}));
        if !context.is_object() {
            p.push("context", "must be a JSON object");
        } else if context.to_string().len() > MAX_CONTEXT_BYTES {
            p.push(
                "context",
                format!("must be at most {MAX_CONTEXT_BYTES} bytes of JSON"),
            );
        }
        p.finish()?;
        let agent = self.active_agent(&input.agent_id).await?;
        let session_id = SessionId::generate();
        tracing::Span::current().record("session_id", session_id.as_str());
        let version = resolve_alias(&agent, &alias, session_id.as_str())?;
        let session = Session {
            session_id,
            agent_id: agent.agent_id,
            alias,
            version,
            user_id,
            context,
            status: SessionStatus::Active,
            summary: None,
            created_at: self.clock.now_ms(),
            ended_at: None,
        };
        let events = [DomainEvent::new(
            &session.agent_id,
            session.created_at,
            payload::SessionStarted {
                session: session.clone(),
            },
        )];
        self.sessions.insert_session(&session, &events).await?;
        self.signal.notify();
        tracing::debug!(version, "session started");
        Ok(session)
    }

    /// One turn in a session: the agent answers with the session's history in view.
    ///
    /// # Errors
    /// `NotFound` for an unknown session; `Conflict` for an ended session or a concurrent turn;
    /// `Model` when the model failed (the interaction is recorded as failed).
    #[instrument(name = "send_message", skip_all, fields(session_id = %input.session_id, agent_id))]
    pub async fn send_message(
        &self,
        input: SendMessage,
        deadline: Option<Instant>,
    ) -> Result<TurnReply, ServiceError> {
        let mut p = Problems::default();
        let content = p.text("content", &input.content, 1, MAX_MESSAGE);
        p.finish()?;
        let session = self.session(&input.session_id).await?;
        tracing::Span::current().record("agent_id", session.agent_id.as_str());
        if session.status != SessionStatus::Active {
            return Err(ServiceError::Conflict(format!(
                "session '{}' has ended; start a new session",
                session.session_id
            )));
        }
        let agent = self.active_agent(&session.agent_id).await?;
        let version = self.version(&agent.agent_id, session.version).await?;
        let recent = self
            .sessions
            .recent_messages(&session.session_id, HISTORY_WINDOW)
            .await?;
        let next_seq = recent.last().map_or(1, |m| m.seq + 1);
        let history = trim_history(&recent, self.limits.history_budget_tokens);
        let turn = Turn {
            chain: vec![agent.agent_id.clone()],
            agent,
            version,
            session_id: Some(session.session_id.clone()),
            history,
            input: content.clone(),
            deadline: self.deadline(deadline),
            parent: None,
            interaction_id: InteractionId::generate(),
            caller: input.caller,
        };
        let interaction = self.run_turn(turn).await?;
        let mut messages = match &interaction.output {
            Some(output) if interaction.status == InteractionStatus::Completed => {
                let now = self.clock.now_ms();
                vec![
                    Message {
                        session_id: session.session_id.clone(),
                        seq: next_seq,
                        role: Role::User,
                        content,
                        interaction_id: interaction.interaction_id.clone(),
                        created_at: interaction.created_at,
                    },
                    Message {
                        session_id: session.session_id.clone(),
                        seq: next_seq + 1,
                        role: Role::Assistant,
                        content: output.clone(),
                        interaction_id: interaction.interaction_id.clone(),
                        created_at: now,
                    },
                ]
            }
            _ => Vec::new(),
        };
        let events = [interaction_event(&interaction)];
        // The model call was paid for: a turn that loses a race for its message numbers, or
        // whose session ended while the model worked, is still recorded.
        let mut attempts = 0;
        loop {
            match self
                .sessions
                .record_turn(&interaction, &messages, &events)
                .await
            {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) if attempts < RECORD_ATTEMPTS => {
                    attempts += 1;
                    let current = self.session(&session.session_id).await?;
                    if current.status != SessionStatus::Active {
                        self.sessions
                            .record_turn(&interaction, &[], &events)
                            .await?;
                        self.signal.notify();
                        self.observer.recorded(&interaction);
                        return Err(ServiceError::Conflict(format!(
                            "session '{}' ended while the agent was answering; the turn is \
                             recorded as interaction '{}' but not added to the session",
                            session.session_id, interaction.interaction_id
                        )));
                    }
                    // Another turn of the session committed first: this one goes after it.
                    let last = self
                        .sessions
                        .recent_messages(&session.session_id, 1)
                        .await?;
                    let next = last.last().map_or(1, |m| m.seq + 1);
                    for (offset, m) in (0u32..).zip(messages.iter_mut()) {
                        m.seq = next + offset;
                    }
                }
                Err(StoreError::Conflict(_)) => {
                    return Err(ServiceError::Conflict(format!(
                        "session '{}' is too busy: other messages kept arriving while this one \
                         was recorded; send again",
                        session.session_id
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.signal.notify();
        self.observer.recorded(&interaction);
        finish(interaction)
    }

    /// One turn without a session.
    ///
    /// # Errors
    /// As `send_message`, without the session errors.
    #[instrument(name = "run_agent", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn run_agent(
        &self,
        input: RunAgent,
        deadline: Option<Instant>,
    ) -> Result<TurnReply, ServiceError> {
        let mut p = Problems::default();
        let content = p.text("input", &input.input, 1, MAX_MESSAGE);
        let alias = p.text("alias", input.alias.as_deref().unwrap_or(PROD_ALIAS), 1, 64);
        p.finish()?;
        let agent = self.active_agent(&input.agent_id).await?;
        let interaction_id = InteractionId::generate();
        let version = resolve_alias(&agent, &alias, interaction_id.as_str())?;
        let version = self.version(&agent.agent_id, version).await?;
        let turn = Turn {
            chain: vec![agent.agent_id.clone()],
            agent,
            version,
            session_id: None,
            history: Vec::new(),
            input: content,
            deadline: self.deadline(deadline),
            parent: None,
            interaction_id,
            caller: input.caller,
        };
        let interaction = self.run_turn(turn).await?;
        self.sessions
            .record_turn(&interaction, &[], &[interaction_event(&interaction)])
            .await?;
        self.signal.notify();
        self.observer.recorded(&interaction);
        finish(interaction)
    }

    /// Messages of a session in order, one page at a time.
    ///
    /// # Errors
    /// `NotFound` for an unknown session; `Invalid` for a bad cursor or limit.
    pub async fn get_messages(
        &self,
        session_id: &SessionId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Message>, ServiceError> {
        let page = PageRequest::parse(cursor, limit)?;
        if let Some(after) = &page.after
            && after.key().parse::<u32>().is_err()
        {
            return Err(ServiceError::invalid(
                "cursor",
                "not a cursor returned by a previous page of messages",
            ));
        }
        self.session(session_id).await?;
        let rows = self.sessions.list_messages(session_id, &page).await?;
        Ok(crate::services::agents::paginate(rows, page.limit, |m| {
            m.seq.to_string()
        }))
    }

    /// Ends a session; it keeps its messages and takes no more.
    ///
    /// # Errors
    /// `NotFound` for an unknown session; `Conflict` when it has already ended.
    #[instrument(name = "end_session", skip_all, fields(session_id = %session_id))]
    pub async fn end_session(
        &self,
        session_id: &SessionId,
        summary: Option<&str>,
    ) -> Result<Session, ServiceError> {
        let mut p = Problems::default();
        let summary = summary.map(|s| p.text("summary", s, 1, MAX_SUMMARY));
        p.finish()?;
        let mut session = self.session(session_id).await?;
        if session.status == SessionStatus::Ended {
            return Err(ServiceError::Conflict(format!(
                "session '{session_id}' has already ended"
            )));
        }
        let now = self.clock.now_ms();
        session.status = SessionStatus::Ended;
        session.summary.clone_from(&summary);
        session.ended_at = Some(now);
        let events = [DomainEvent::new(
            &session.agent_id,
            now,
            payload::SessionEnded {
                session: session.clone(),
            },
        )];
        match self
            .sessions
            .end_session(session_id, summary.as_deref(), now, &events)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::Conflict(format!(
                    "session '{session_id}' has already ended"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.signal.notify();
        Ok(session)
    }

    /// Interactions of an agent, oldest first.
    ///
    /// # Errors
    /// `Invalid` for a bad cursor or limit.
    pub async fn list_interactions(
        &self,
        agent_id: &AgentId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Interaction>, ServiceError> {
        let page = PageRequest::parse(cursor, limit)?;
        let rows = self.sessions.list_interactions(agent_id, &page).await?;
        Ok(crate::services::agents::paginate(rows, page.limit, |i| {
            i.interaction_id.to_string()
        }))
    }

    fn deadline(&self, given: Option<Instant>) -> Instant {
        let own = Instant::now() + self.limits.turn_timeout;
        given.map_or(own, |d| d.min(own))
    }

    async fn session(&self, id: &SessionId) -> Result<Session, ServiceError> {
        self.sessions
            .get_session(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "session",
                id: id.to_string(),
            })
    }

    async fn active_agent(&self, id: &AgentId) -> Result<Agent, ServiceError> {
        let agent = self
            .agents
            .get_agent(id)
            .await?
            .ok_or_else(|| ServiceError::agent_not_found(id))?;
        if agent.status == AgentStatus::Archived {
            return Err(ServiceError::Conflict(format!(
                "agent '{id}' is archived and takes no new work"
            )));
        }
        Ok(agent)
    }

    async fn version(&self, id: &AgentId, version: u32) -> Result<AgentVersion, ServiceError> {
        self.agents
            .get_version(id, version)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "agent version",
                id: format!("{id} v{version}"),
            })
    }

    /// Refuses a turn whose agent or caller has spent its cap today (UTC).
    async fn within_caps(&self, turn: &Turn) -> Result<(), ServiceError> {
        let agent = &turn.agent.agent_id;
        let mut caps = Vec::with_capacity(2);
        if let Some(cap) = self.caps.agent(agent) {
            caps.push((Spender::Agent(agent), cap));
        }
        if let Some(caller) = &turn.caller
            && let Some(cap) = self.caps.caller(caller)
        {
            caps.push((Spender::Caller(caller), cap));
        }
        if caps.is_empty() {
            return Ok(());
        }
        let since = day_start(self.clock.now_ms());
        for (spender, cap) in caps {
            let spent = self.sessions.spent_since(spender, since).await?;
            if spent >= cap {
                let (who, resume) = match spender {
                    Spender::Agent(id) => (format!("agent '{id}'"), "it takes new turns"),
                    Spender::Caller(c) => (format!("caller '{c}'"), "its turns resume"),
                };
                return Err(ServiceError::SpendCapReached(format!(
                    "{who} has spent USD {spent:.4} today (UTC) of its daily cap of USD {cap:.2}; \
                     {resume} after 00:00 UTC"
                )));
            }
        }
        Ok(())
    }

    /// Runs one turn (and any delegations under it) and returns its interaction, completed or
    /// failed. Only a missing model configuration is an error here: it is not an interaction.
    fn run_turn(&self, turn: Turn) -> BoxFuture<'_, Result<Interaction, ServiceError>> {
        let span = tracing::info_span!(
            "invoke_agent",
            agent_id = %turn.agent.agent_id,
            version = turn.version.version,
            interaction_id = %turn.interaction_id,
        );
        Box::pin(
            async move {
                self.within_caps(&turn).await?;
                let started = Instant::now();
                let created_at = self.clock.now_ms();
                let mut usage = TokenUsage::default();
                let mut records = Vec::new();
                let mut model_name = turn.version.model.clone();
                let outcome = self
                    .converse(&turn, &mut usage, &mut records, &mut model_name)
                    .await;
                if let Err(LlmError::NotConfigured(hint)) = &outcome {
                    return Err(ServiceError::ModelNotConfigured(hint.clone()));
                }
                let (status, output, error) = match outcome {
                    Ok(text) => (InteractionStatus::Completed, Some(text), None),
                    Err(e) => {
                        tracing::warn!(error = %e, "turn failed");
                        (InteractionStatus::Failed, None, Some(e.to_string()))
                    }
                };
                let cost_usd = self
                    .prices
                    .cost(&model_name, usage.prompt_tokens, usage.completion_tokens)
                    .or_else(|| {
                        self.prices.cost(
                            &turn.version.model,
                            usage.prompt_tokens,
                            usage.completion_tokens,
                        )
                    });
                if cost_usd.is_none() && (usage.prompt_tokens + usage.completion_tokens) > 0 {
                    note_unpriced(&model_name);
                }
                Ok(Interaction {
                    interaction_id: turn.interaction_id.clone(),
                    agent_id: turn.agent.agent_id.clone(),
                    version: turn.version.version,
                    session_id: turn.session_id.clone(),
                    parent_interaction_id: turn.parent.clone(),
                    input: turn.input.clone(),
                    output,
                    model: model_name,
                    usage,
                    cost_usd,
                    latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    tool_calls: records,
                    status,
                    error,
                    created_at,
                    invoked_by: turn.caller.clone(),
                })
            }
            .instrument(span),
        )
    }

    /// The model loop: call, run requested tools, call again, until the model answers.
    async fn converse(
        &self,
        turn: &Turn,
        usage: &mut TokenUsage,
        records: &mut Vec<ToolCallRecord>,
        model_name: &mut String,
    ) -> Result<String, LlmError> {
        let v = &turn.version;
        let mut messages = Vec::with_capacity(turn.history.len() + 2);
        messages.push(ChatMessage::new(Role::System, v.instructions.clone()));
        messages.extend(turn.history.iter().cloned());
        messages.push(ChatMessage::new(Role::User, turn.input.clone()));
        let tools = delegation_tools(v);
        let mut calls = 0usize;
        loop {
            let offer_tools = calls < self.limits.max_tool_calls;
            let request = ChatRequest {
                model: v.model.clone(),
                messages: messages.clone(),
                tools: if offer_tools {
                    tools.clone()
                } else {
                    Vec::new()
                },
                temperature: v.parameters.temperature,
                top_p: v.parameters.top_p,
                max_tokens: v.parameters.max_tokens,
            };
            let response = self.model.complete(request, turn.deadline).await?;
            usage.add(response.usage);
            if !response.model.is_empty() {
                model_name.clone_from(&response.model);
            }
            if response.tool_calls.is_empty() {
                return response
                    .content
                    .filter(|c| !c.trim().is_empty())
                    .ok_or_else(|| LlmError::Invalid("the model answered with no text".into()));
            }
            let mut assistant =
                ChatMessage::new(Role::Assistant, response.content.unwrap_or_default());
            assistant.tool_calls = response.tool_calls.clone();
            messages.push(assistant);
            for call in response.tool_calls {
                calls += 1;
                let record = if calls > self.limits.max_tool_calls {
                    refused(
                        &call,
                        format!(
                            "tool call limit of {} per turn reached; answer without tools",
                            self.limits.max_tool_calls
                        ),
                    )
                } else {
                    self.run_tool(turn, &call).await
                };
                messages.push(ChatMessage::tool_result(&call.id, record.result.clone()));
                records.push(record);
            }
        }
    }

    /// Runs a tool the model called: a delegation to another agent.
    async fn run_tool(&self, turn: &Turn, call: &ToolCall) -> ToolCallRecord {
        let Some(target) = turn
            .version
            .capabilities
            .iter()
            .find(|c| c.name == call.name)
            .and_then(|c| c.delegate_to.clone())
        else {
            return refused(call, format!("there is no tool named '{}'", call.name));
        };
        if let Some(at) = turn.chain.iter().position(|a| a == &target) {
            let cycle: Vec<String> = turn.chain[at..]
                .iter()
                .chain(std::iter::once(&target))
                .map(ToString::to_string)
                .collect();
            return refused(
                call,
                format!("delegation cycle refused: {}", cycle.join(" -> ")),
            );
        }
        if turn.chain.len() > self.limits.max_delegation_depth {
            return refused(
                call,
                format!(
                    "delegation depth limit of {} reached",
                    self.limits.max_delegation_depth
                ),
            );
        }
        let input = delegated_input(&call.arguments);
        let interaction_id = InteractionId::generate();
        let prepared = async {
            let agent = self.active_agent(&target).await?;
            let number = resolve_alias(&agent, PROD_ALIAS, interaction_id.as_str())?;
            let version = self.version(&target, number).await?;
            Ok::<_, ServiceError>((agent, version))
        }
        .await;
        let (agent, version) = match prepared {
            Ok(found) => found,
            Err(e) => return refused(call, format!("cannot delegate to '{target}': {e}")),
        };
        let mut chain = turn.chain.clone();
        chain.push(target.clone());
        let sub = Turn {
            agent,
            version,
            session_id: turn.session_id.clone(),
            history: Vec::new(),
            input,
            deadline: turn.deadline,
            chain,
            parent: Some(turn.interaction_id.clone()),
            interaction_id,
            caller: turn.caller.clone(),
        };
        let delegated = match self.run_turn(sub).await {
            Ok(i) => i,
            Err(e) => return refused(call, format!("delegation to '{target}' failed: {e}")),
        };
        let events = [interaction_event(&delegated)];
        if let Err(e) = self.sessions.record_turn(&delegated, &[], &events).await {
            tracing::error!(error = %e, "cannot record a delegated interaction");
        } else {
            self.signal.notify();
            self.observer.recorded(&delegated);
        }
        let (result, is_error) = match (&delegated.output, &delegated.error) {
            (Some(out), _) => (out.clone(), false),
            (None, err) => (
                format!(
                    "delegation to '{target}' failed: {}",
                    err.as_deref().unwrap_or("unknown error")
                ),
                true,
            ),
        };
        ToolCallRecord {
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            delegate_agent_id: Some(target),
            delegate_interaction_id: Some(delegated.interaction_id),
            result,
            is_error,
        }
    }
}

fn refused(call: &ToolCall, reason: String) -> ToolCallRecord {
    tracing::debug!(tool = %call.name, %reason, "tool call refused");
    ToolCallRecord {
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        delegate_agent_id: None,
        delegate_interaction_id: None,
        result: reason,
        is_error: true,
    }
}

/// A completed interaction becomes a reply; a failed one becomes the error the caller sees.
fn finish(interaction: Interaction) -> Result<TurnReply, ServiceError> {
    match interaction.status {
        InteractionStatus::Completed => Ok(TurnReply::from_interaction(&interaction)),
        InteractionStatus::Failed => Err(ServiceError::TurnFailed {
            interaction_id: interaction.interaction_id.to_string(),
            reason: interaction.error.unwrap_or_default(),
        }),
    }
}

/// Capabilities that delegate become function tools.
pub(crate) fn delegation_tools(version: &AgentVersion) -> Vec<ToolSpec> {
    version
        .capabilities
        .iter()
        .filter(|c| c.delegate_to.is_some())
        .map(|c| ToolSpec {
            name: c.name.clone(),
            description: if c.description.is_empty() {
                format!("Hand this request to the agent behind '{}'", c.name)
            } else {
                c.description.clone()
            },
            parameters: c.parameters.clone().unwrap_or_else(|| {
                serde_json::json!({
                    "type": "object",
                    "properties": {"input": {"type": "string", "description": "What to ask the agent"}},
                    "required": ["input"]
                })
            }),
        })
        .collect()
}

/// The text a delegate receives: the `input` argument, or the whole argument object.
fn delegated_input(arguments: &str) -> String {
    serde_json::from_str::<serde_json::Value>(arguments)
        .ok()
        .and_then(|v| v.get("input").and_then(|i| i.as_str()).map(str::to_owned))
        .unwrap_or_else(|| arguments.to_owned())
}

/// Picks the version an alias routes a key to: weighted, and the same for the same key.
///
/// # Errors
/// `NotFound` when the agent has no such alias.
pub fn resolve_alias(agent: &Agent, alias: &str, key: &str) -> Result<u32, ServiceError> {
    let found = agent.alias(alias).ok_or_else(|| ServiceError::NotFound {
        kind: "alias",
        id: format!("{alias} of agent {}", agent.agent_id),
    })?;
    let total: u32 = found.routes.iter().map(|r| r.weight).sum();
    let bucket = fnv1a(key.as_bytes()) % u64::from(total.max(1));
    let mut acc = 0u64;
    for route in &found.routes {
        acc += u64::from(route.weight);
        if bucket < acc {
            return Ok(route.version);
        }
    }
    Ok(found
        .routes
        .last()
        .map_or(agent.latest_version, |r| r.version))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The newest messages that fit the budget (about four characters a token), oldest first.
fn trim_history(messages: &[Message], budget_tokens: usize) -> Vec<ChatMessage> {
    let mut used = 0usize;
    let mut kept: Vec<ChatMessage> = Vec::new();
    for m in messages.iter().rev() {
        let cost = m.content.len() / 4 + 4;
        if used + cost > budget_tokens {
            break;
        }
        used += cost;
        kept.push(ChatMessage::new(m.role, m.content.clone()));
    }
    kept.reverse();
    kept
}

/// Says once per process and model that the model has no price: every turn would repeat it.
fn note_unpriced(model: &str) {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let first = SEEN
        .lock()
        .map(|mut seen| seen.insert(model.to_owned()))
        .unwrap_or(false);
    if first {
        tracing::info!(model = %model, "model has no configured price; its turns record their cost as unknown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Alias, AliasRoute};

    fn agent_with(routes: Vec<AliasRoute>) -> Agent {
        Agent {
            agent_id: AgentId::parse("agent_id", "agt_x").unwrap(),
            name: "x".into(),
            domain: "general".into(),
            description: String::new(),
            status: AgentStatus::Active,
            created_at: 0,
            updated_at: 0,
            latest_version: 2,
            aliases: vec![Alias {
                name: PROD_ALIAS.into(),
                routes,
                follows_latest: false,
                since: 0,
            }],
        }
    }

    #[test]
    fn weighted_aliases_split_by_weight_and_stick_per_key() {
        let agent = agent_with(vec![
            AliasRoute {
                version: 1,
                weight: 90,
            },
            AliasRoute {
                version: 2,
                weight: 10,
            },
        ]);
        let picks: Vec<u32> = (0..2000)
            .map(|i| resolve_alias(&agent, PROD_ALIAS, &format!("ses_{i}")).unwrap())
            .collect();
        let canary = picks.iter().filter(|v| **v == 2).count();
        assert!(
            (120..=280).contains(&canary),
            "about 10% canary, got {canary}/2000"
        );
        for i in 0..50 {
            let key = format!("ses_{i}");
            assert_eq!(
                resolve_alias(&agent, PROD_ALIAS, &key).unwrap(),
                resolve_alias(&agent, PROD_ALIAS, &key).unwrap()
            );
        }
        let err = resolve_alias(&agent, "beta", "k").unwrap_err().to_string();
        assert_eq!(err, "alias 'beta of agent agt_x' not found");
    }

    #[test]
    fn history_keeps_the_newest_messages_within_budget() {
        let session_id = SessionId::generate();
        let msg = |seq: u32, text: &str| Message {
            session_id: session_id.clone(),
            seq,
            role: if seq % 2 == 1 {
                Role::User
            } else {
                Role::Assistant
            },
            content: text.into(),
            interaction_id: InteractionId::generate(),
            created_at: 0,
        };
        let all = vec![msg(1, &"a".repeat(400)), msg(2, "short"), msg(3, "newest")];
        let kept = trim_history(&all, 20);
        assert_eq!(
            kept.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["short", "newest"]
        );
        assert_eq!(trim_history(&all, 1_000).len(), 3);
    }

    #[test]
    fn delegates_receive_the_input_argument_or_the_raw_arguments() {
        assert_eq!(
            delegated_input(r#"{"input":"find flights"}"#),
            "find flights"
        );
        assert_eq!(delegated_input(r#"{"city":"Oslo"}"#), r#"{"city":"Oslo"}"#);
        assert_eq!(delegated_input("not json"), "not json");
    }
}
