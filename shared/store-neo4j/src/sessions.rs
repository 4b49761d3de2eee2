//! Sessions, messages and interactions:
//! `(:Session)-[:WITH_AGENT]->(:AgentVersion)`, `(:Session)-[:HAS_MESSAGE]->(:Message)`,
//! `(:Interaction)-[:HANDLED_BY]->(:AgentVersion)`, `(:Interaction)-[:IN_SESSION]->(:Session)`,
//! `(:Interaction)-[:DELEGATED_TO]->(:Interaction)`.

use aop_core::principal::Principal;
use aop_core::session::{
    Interaction, InteractionId, InteractionStatus, Message, Role, Session, SessionId,
    SessionStatus, TokenUsage,
};
use aop_core::spend::Spender;
use aop_core::{AgentId, DomainEvent, PageRequest, SessionStore, StoreError};
use async_trait::async_trait;
use neo4rs::{BoltType, Row, Txn, query};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::corrupt;
use crate::params::{bolt, event_rows, json_text, version_key};
use crate::{Failure, Neo4jStore, Work, column, outbox, rows, run};

pub(crate) fn session_status(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Active => "active",
        SessionStatus::Ended => "ended",
    }
}

fn interaction_status(s: InteractionStatus) -> &'static str {
    match s {
        InteractionStatus::Completed => "completed",
        InteractionStatus::Failed => "failed",
    }
}

#[derive(Deserialize)]
struct RawSession {
    session_id: String,
    agent_id: String,
    alias: String,
    version: u32,
    user_id: String,
    context: String,
    status: String,
    summary: Option<String>,
    created_at: i64,
    ended_at: Option<i64>,
}

pub(crate) fn decode_session(row: &Row) -> Result<Session, StoreError> {
    let s: RawSession = column(row, "session", "session")?;
    Ok(Session {
        session_id: SessionId::try_from(s.session_id).map_err(|e| corrupt("session id", e))?,
        agent_id: AgentId::try_from(s.agent_id).map_err(|e| corrupt("agent id", e))?,
        alias: s.alias,
        version: s.version,
        user_id: s.user_id,
        context: serde_json::from_str(&s.context).map_err(|e| corrupt("session context", e))?,
        status: match s.status.as_str() {
            "active" => SessionStatus::Active,
            "ended" => SessionStatus::Ended,
            other => return Err(corrupt("session status", other)),
        },
        summary: s.summary,
        created_at: s.created_at,
        ended_at: s.ended_at,
    })
}

#[derive(Deserialize)]
struct RawMessage {
    session_id: String,
    seq: u32,
    role: String,
    content: String,
    interaction_id: String,
    created_at: i64,
}

pub(crate) fn decode_message(row: &Row) -> Result<Message, StoreError> {
    let m: RawMessage = column(row, "message", "message")?;
    Ok(Message {
        session_id: SessionId::try_from(m.session_id).map_err(|e| corrupt("session id", e))?,
        seq: m.seq,
        role: Role::parse(&m.role).ok_or_else(|| corrupt("message role", &m.role))?,
        content: m.content,
        interaction_id: InteractionId::try_from(m.interaction_id)
            .map_err(|e| corrupt("interaction id", e))?,
        created_at: m.created_at,
    })
}

#[derive(Deserialize)]
struct RawInteraction {
    interaction_id: String,
    agent_id: String,
    version: u32,
    session_id: Option<String>,
    parent_interaction_id: Option<String>,
    input: String,
    output: Option<String>,
    model: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: Option<f64>,
    latency_ms: u64,
    tool_calls: String,
    status: String,
    error: Option<String>,
    created_at: i64,
    #[serde(default)]
    invoked_by: Option<String>,
}

pub(crate) fn decode_interaction(row: &Row) -> Result<Interaction, StoreError> {
    let i: RawInteraction = column(row, "interaction", "interaction")?;
    let id = |text: String| InteractionId::try_from(text).map_err(|e| corrupt("interaction id", e));
    Ok(Interaction {
        interaction_id: id(i.interaction_id)?,
        agent_id: AgentId::try_from(i.agent_id).map_err(|e| corrupt("agent id", e))?,
        version: i.version,
        session_id: i
            .session_id
            .map(|s| SessionId::try_from(s).map_err(|e| corrupt("session id", e)))
            .transpose()?,
        parent_interaction_id: i.parent_interaction_id.map(id).transpose()?,
        input: i.input,
        output: i.output,
        model: i.model,
        usage: TokenUsage {
            prompt_tokens: i.prompt_tokens,
            completion_tokens: i.completion_tokens,
        },
        cost_usd: i.cost_usd,
        latency_ms: i.latency_ms,
        tool_calls: serde_json::from_str(&i.tool_calls).map_err(|e| corrupt("tool calls", e))?,
        status: match i.status.as_str() {
            "completed" => InteractionStatus::Completed,
            "failed" => InteractionStatus::Failed,
            other => return Err(corrupt("interaction status", other)),
        },
        error: i.error,
        created_at: i.created_at,
        invoked_by: i.invoked_by.as_deref().map(Principal::named),
    })
}

/// One row of [`write_interactions`]: the node's properties and what to link it to.
pub(crate) fn interaction_row(i: &Interaction) -> Result<Value, StoreError> {
    Ok(json!({
        "props": {
            "interaction_id": i.interaction_id.as_str(),
            "agent_id": i.agent_id.as_str(),
            "version": i.version,
            "session_id": i.session_id.as_ref().map(SessionId::as_str),
            "parent_interaction_id": i.parent_interaction_id.as_ref().map(InteractionId::as_str),
            "input": i.input,
            "output": i.output,
            "model": i.model,
            "prompt_tokens": i64::try_from(i.usage.prompt_tokens).unwrap_or(i64::MAX),
            "completion_tokens": i64::try_from(i.usage.completion_tokens).unwrap_or(i64::MAX),
            "cost_usd": i.cost_usd,
            "latency_ms": i64::try_from(i.latency_ms).unwrap_or(i64::MAX),
            "tool_calls": json_text(&i.tool_calls)?,
            "status": interaction_status(i.status),
            "error": i.error,
            "created_at": i.created_at,
            "invoked_by": i.invoked_by.as_ref().map(Principal::as_str),
        },
        "interaction_id": i.interaction_id.as_str(),
        "version_key": version_key(i.agent_id.as_str(), i.version),
        "session_id": i.session_id.as_ref().map(SessionId::as_str),
        // Delegated turns commit before the turn that delegated them, so the link is made here.
        "delegated_to": i.tool_calls.iter()
            .filter_map(|c| c.delegate_interaction_id.as_ref().map(InteractionId::as_str))
            .collect::<Vec<_>>(),
    }))
}

/// Creates interactions (`rows` of [`interaction_row`]) and links them to their version, their
/// session and the turns they delegated to.
pub(crate) async fn write_interactions(txn: &mut Txn, rows: BoltType) -> Result<(), Failure> {
    for statement in [
        CREATE_INTERACTIONS,
        LINK_INTERACTIONS_TO_VERSIONS,
        LINK_INTERACTIONS_TO_SESSIONS,
        LINK_DELEGATED,
    ] {
        run(txn, query(statement).param("rows", rows.clone())).await?;
    }
    Ok(())
}

pub(crate) const CREATE_INTERACTIONS: &str = "UNWIND $rows AS row
     CREATE (i:Interaction {interaction_id: row.interaction_id})
     SET i += row.props";
pub(crate) const LINK_INTERACTIONS_TO_VERSIONS: &str = "UNWIND $rows AS row
     MATCH (i:Interaction {interaction_id: row.interaction_id})
     MATCH (v:AgentVersion {key: row.version_key})
     CREATE (i)-[:HANDLED_BY]->(v)";
/// Only turns of a session: a lookup by a null key is a scan of every node on some servers.
pub(crate) const LINK_INTERACTIONS_TO_SESSIONS: &str = "UNWIND $rows AS row
     WITH row WHERE row.session_id IS NOT NULL
     MATCH (i:Interaction {interaction_id: row.interaction_id})
     MATCH (s:Session {session_id: row.session_id})
     CREATE (i)-[:IN_SESSION]->(s)";
pub(crate) const LINK_DELEGATED: &str = "UNWIND $rows AS row
     UNWIND row.delegated_to AS child_id
     MATCH (i:Interaction {interaction_id: row.interaction_id})
     MATCH (child:Interaction {interaction_id: child_id})
     CREATE (i)-[:DELEGATED_TO]->(child)";

/// A session node's properties.
pub(crate) fn session_props(s: &Session) -> Result<Value, StoreError> {
    Ok(json!({
        "session_id": s.session_id.as_str(),
        "agent_id": s.agent_id.as_str(),
        "alias": s.alias,
        "version": s.version,
        "user_id": s.user_id,
        "context": json_text(&s.context)?,
        "status": session_status(s.status),
        "summary": s.summary,
        "created_at": s.created_at,
        "ended_at": s.ended_at,
    }))
}

/// A message node's properties, with its key.
pub(crate) fn message_row(m: &Message) -> Value {
    json!({
        "key": format!("{}:{}", m.session_id, m.seq),
        "session_id": m.session_id.as_str(),
        "seq": m.seq,
        "role": m.role.as_str(),
        "content": m.content,
        "interaction_id": m.interaction_id.as_str(),
        "created_at": m.created_at,
    })
}

/// Creates messages (`$rows` of [`message_row`]) in their sessions.
pub(crate) const CREATE_MESSAGES: &str = "UNWIND $rows AS m
     MATCH (s:Session {session_id: m.session_id})
     CREATE (s)-[:HAS_MESSAGE]->(msg:Message {key: m.key})
     SET msg += m";

#[async_trait]
impl SessionStore for Neo4jStore {
    async fn insert_session(&self, s: &Session, events: &[DomainEvent]) -> Result<(), StoreError> {
        let props = bolt(session_props(s)?)?;
        let key = version_key(s.agent_id.as_str(), s.version);
        let id = s.session_id.to_string();
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("insert_session", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (props, key, id, events) = (props.clone(), key.clone(), id.clone(), events.clone());
            Box::pin(async move {
                run(
                    txn,
                    query(
                        "CREATE (s:Session {session_id: $session_id}) SET s += $props
                         WITH s
                         MATCH (v:AgentVersion {key: $key})
                         CREATE (s)-[:WITH_AGENT]->(v)",
                    )
                    .param("session_id", id.as_str())
                    .param("props", props)
                    .param("key", key),
                )
                .await?;
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let id = id.to_string();
        let found = self
            .transact("get_session", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (s:Session {session_id: $session_id}) RETURN properties(s) AS session",
                )
                .param("session_id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(decode_session).transpose()
    }

    async fn end_session(
        &self,
        id: &SessionId,
        summary: Option<&str>,
        ended_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let id = id.to_string();
        let summary = summary.map(str::to_owned);
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        self.transact_writing("end_session", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (id, summary, events) = (id.clone(), summary.clone(), events.clone());
            Box::pin(async move {
                let ended = rows(
                    txn,
                    query(
                        "MATCH (s:Session {session_id: $session_id}) WHERE s.status = 'active'
                         SET s.status = 'ended', s.summary = $summary, s.ended_at = $ended_at
                         RETURN count(s) AS n",
                    )
                    .param("session_id", id.as_str())
                    .param("summary", summary)
                    .param("ended_at", ended_at),
                )
                .await?;
                let n: i64 = ended.first().map_or(Ok(0), |r| column(r, "n", "count"))?;
                if n == 0 {
                    return Err(
                        StoreError::Conflict(format!("session '{id}' is not active")).into(),
                    );
                }
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn record_turn(
        &self,
        interaction: &Interaction,
        messages: &[Message],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let interaction_rows = bolt(Value::Array(vec![interaction_row(interaction)?]))?;
        let session = messages.first().map(|m| m.session_id.to_string());
        let message_rows: BoltType =
            bolt(Value::Array(messages.iter().map(message_row).collect()))?;
        let marker = crate::first_id(events);
        let events = event_rows(events)?;
        let at = interaction.created_at;
        self.transact_writing("record_turn", marker.as_deref(), |txn| -> Work<'_, ()> {
            let (interaction_rows, session, message_rows, events) = (
                interaction_rows.clone(),
                session.clone(),
                message_rows.clone(),
                events.clone(),
            );
            Box::pin(async move {
                if let Some(session) = &session {
                    // Writing the session takes its lock: an end_session racing this turn
                    // either commits first (and the check fails) or waits for it.
                    let found = rows(
                        txn,
                        query(
                            "MATCH (s:Session {session_id: $session_id})
                             SET s.last_turn_at = $at
                             RETURN s.status AS status",
                        )
                        .param("session_id", session.as_str())
                        .param("at", at),
                    )
                    .await?;
                    let status: Option<String> = found
                        .first()
                        .map(|r| column(r, "status", "session status"))
                        .transpose()?;
                    if status.as_deref() != Some("active") {
                        return Err(StoreError::Conflict(format!(
                            "session '{session}' is not active"
                        ))
                        .into());
                    }
                }
                write_interactions(txn, interaction_rows).await?;
                if session.is_some() {
                    run(txn, query(CREATE_MESSAGES).param("rows", message_rows)).await?;
                }
                outbox::write_events(txn, events).await
            })
        })
        .await
    }

    async fn list_messages(
        &self,
        id: &SessionId,
        page: &PageRequest,
    ) -> Result<Vec<Message>, StoreError> {
        let id = id.to_string();
        let after = i64::from(page.after_number());
        let limit = i64::from(page.limit) + 1;
        let found = self
            .transact("list_messages", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (m:Message) WHERE m.session_id = $session_id AND m.seq > $after
                     WITH m ORDER BY m.seq LIMIT $limit
                     RETURN properties(m) AS message",
                )
                .param("session_id", id.as_str())
                .param("after", after)
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode_message).collect()
    }

    async fn recent_messages(
        &self,
        id: &SessionId,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let id = id.to_string();
        let found = self
            .transact("recent_messages", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (m:Message) WHERE m.session_id = $session_id
                     WITH m ORDER BY m.seq DESC LIMIT $limit
                     RETURN properties(m) AS message",
                )
                .param("session_id", id.as_str())
                .param("limit", i64::from(limit));
                Box::pin(rows(txn, q))
            })
            .await?;
        let mut messages = found
            .iter()
            .map(decode_message)
            .collect::<Result<Vec<_>, _>>()?;
        messages.sort_by_key(|m| m.seq);
        Ok(messages)
    }

    async fn get_interaction(&self, id: &InteractionId) -> Result<Option<Interaction>, StoreError> {
        let id = id.to_string();
        let found = self
            .transact("get_interaction", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (i:Interaction {interaction_id: $interaction_id})
                     RETURN properties(i) AS interaction",
                )
                .param("interaction_id", id.as_str());
                Box::pin(rows(txn, q))
            })
            .await?;
        found.first().map(decode_interaction).transpose()
    }

    async fn spent_since(&self, spender: Spender<'_>, since: i64) -> Result<f64, StoreError> {
        let (statement, key) = match spender {
            Spender::Agent(id) => (
                "MATCH (i:Interaction) WHERE i.agent_id = $key AND i.created_at >= $since
                 RETURN coalesce(sum(i.cost_usd), 0.0) AS spent",
                id.to_string(),
            ),
            Spender::Caller(caller) => (
                "MATCH (i:Interaction) WHERE i.invoked_by = $key AND i.created_at >= $since
                 RETURN coalesce(sum(i.cost_usd), 0.0) AS spent",
                caller.to_string(),
            ),
        };
        let found = self
            .transact("spent_since", |txn| -> Work<'_, Vec<Row>> {
                let q = query(statement)
                    .param("key", key.as_str())
                    .param("since", since);
                Box::pin(rows(txn, q))
            })
            .await?;
        /// A sum over no rows may come back as the integer 0.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Amount {
            Real(f64),
            Whole(i64),
        }
        #[allow(clippy::cast_precision_loss)] // only ever 0
        match found.first() {
            Some(row) => Ok(match column(row, "spent", "spent")? {
                Amount::Real(x) => x,
                Amount::Whole(n) => n as f64,
            }),
            None => Ok(0.0),
        }
    }

    async fn list_interactions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<Interaction>, StoreError> {
        let id = agent_id.to_string();
        let after = page
            .after
            .as_ref()
            .map(|c| c.key().to_owned())
            .unwrap_or_default();
        let limit = i64::from(page.limit) + 1;
        let found = self
            .transact("list_interactions", |txn| -> Work<'_, Vec<Row>> {
                let q = query(
                    "MATCH (i:Interaction) WHERE i.agent_id = $agent_id AND i.interaction_id > $after
                     WITH i ORDER BY i.interaction_id LIMIT $limit
                     RETURN properties(i) AS interaction",
                )
                .param("agent_id", id.as_str())
                .param("after", after.as_str())
                .param("limit", limit);
                Box::pin(rows(txn, q))
            })
            .await?;
        found.iter().map(decode_interaction).collect()
    }
}
