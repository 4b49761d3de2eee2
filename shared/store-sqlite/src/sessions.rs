//! Sessions, messages and interactions in the embedded store.

use aop_core::principal::Principal;
use aop_core::session::{
    Interaction, InteractionId, InteractionStatus, Message, Role, Session, SessionId,
    SessionStatus, TokenUsage,
};
use aop_core::spend::Spender;
use aop_core::{AgentId, DomainEvent, PageRequest, SessionStore, StoreError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::error::{corrupt, map_err};
use crate::{SqliteStore, rows};

pub(crate) const SESSION_COLUMNS: &str =
    "session_id, agent_id, alias, version, user_id, context, status, summary, created_at, ended_at";
pub(crate) const MESSAGE_COLUMNS: &str =
    "session_id, seq, role, content, interaction_id, created_at";
pub(crate) const INTERACTION_COLUMNS: &str = "interaction_id, agent_id, version, session_id, \
    parent_interaction_id, input, output, model, prompt_tokens, completion_tokens, cost_usd, \
    latency_ms, tool_calls, status, error, created_at, invoked_by";

pub(crate) fn invalid(what: &str, value: &str) -> StoreError {
    StoreError::Permanent {
        message: format!("stored {what} '{value}' is invalid"),
        source: None,
    }
}

pub(crate) struct RawSession {
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

pub(crate) fn read_session(r: &Row<'_>) -> rusqlite::Result<RawSession> {
    Ok(RawSession {
        session_id: r.get(0)?,
        agent_id: r.get(1)?,
        alias: r.get(2)?,
        version: r.get(3)?,
        user_id: r.get(4)?,
        context: r.get(5)?,
        status: r.get(6)?,
        summary: r.get(7)?,
        created_at: r.get(8)?,
        ended_at: r.get(9)?,
    })
}

pub(crate) fn decode_session(s: RawSession) -> Result<Session, StoreError> {
    let status = match s.status.as_str() {
        "active" => SessionStatus::Active,
        "ended" => SessionStatus::Ended,
        other => return Err(invalid("session status", other)),
    };
    Ok(Session {
        session_id: SessionId::try_from(s.session_id).map_err(|e| invalid("session id", &e))?,
        agent_id: AgentId::try_from(s.agent_id).map_err(|e| invalid("agent id", &e))?,
        alias: s.alias,
        version: s.version,
        user_id: s.user_id,
        context: serde_json::from_str(&s.context).map_err(|e| corrupt("session context", e))?,
        status,
        summary: s.summary,
        created_at: s.created_at,
        ended_at: s.ended_at,
    })
}

pub(crate) struct RawMessage {
    session_id: String,
    seq: u32,
    role: String,
    content: String,
    interaction_id: String,
    created_at: i64,
}

pub(crate) fn read_message(r: &Row<'_>) -> rusqlite::Result<RawMessage> {
    Ok(RawMessage {
        session_id: r.get(0)?,
        seq: r.get(1)?,
        role: r.get(2)?,
        content: r.get(3)?,
        interaction_id: r.get(4)?,
        created_at: r.get(5)?,
    })
}

pub(crate) fn decode_message(m: RawMessage) -> Result<Message, StoreError> {
    Ok(Message {
        session_id: SessionId::try_from(m.session_id).map_err(|e| invalid("session id", &e))?,
        seq: m.seq,
        role: Role::parse(&m.role).ok_or_else(|| invalid("message role", &m.role))?,
        content: m.content,
        interaction_id: InteractionId::try_from(m.interaction_id)
            .map_err(|e| invalid("interaction id", &e))?,
        created_at: m.created_at,
    })
}

pub(crate) struct RawInteraction {
    interaction_id: String,
    agent_id: String,
    version: u32,
    session_id: Option<String>,
    parent: Option<String>,
    input: String,
    output: Option<String>,
    model: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: Option<f64>,
    latency_ms: i64,
    tool_calls: String,
    status: String,
    error: Option<String>,
    created_at: i64,
    invoked_by: Option<String>,
}

pub(crate) fn read_interaction(r: &Row<'_>) -> rusqlite::Result<RawInteraction> {
    Ok(RawInteraction {
        interaction_id: r.get(0)?,
        agent_id: r.get(1)?,
        version: r.get(2)?,
        session_id: r.get(3)?,
        parent: r.get(4)?,
        input: r.get(5)?,
        output: r.get(6)?,
        model: r.get(7)?,
        prompt_tokens: r.get(8)?,
        completion_tokens: r.get(9)?,
        cost_usd: r.get(10)?,
        latency_ms: r.get(11)?,
        tool_calls: r.get(12)?,
        status: r.get(13)?,
        error: r.get(14)?,
        created_at: r.get(15)?,
        invoked_by: r.get(16)?,
    })
}

pub(crate) fn decode_interaction(i: RawInteraction) -> Result<Interaction, StoreError> {
    let id =
        |text: String| InteractionId::try_from(text).map_err(|e| invalid("interaction id", &e));
    Ok(Interaction {
        interaction_id: id(i.interaction_id)?,
        agent_id: AgentId::try_from(i.agent_id).map_err(|e| invalid("agent id", &e))?,
        version: i.version,
        session_id: i
            .session_id
            .map(|s| SessionId::try_from(s).map_err(|e| invalid("session id", &e)))
            .transpose()?,
        parent_interaction_id: i.parent.map(id).transpose()?,
        input: i.input,
        output: i.output,
        model: i.model,
        usage: TokenUsage {
            prompt_tokens: u64::try_from(i.prompt_tokens).unwrap_or_default(),
            completion_tokens: u64::try_from(i.completion_tokens).unwrap_or_default(),
        },
        cost_usd: i.cost_usd,
        latency_ms: u64::try_from(i.latency_ms).unwrap_or_default(),
        tool_calls: serde_json::from_str(&i.tool_calls).map_err(|e| corrupt("tool calls", e))?,
        status: match i.status.as_str() {
            "completed" => InteractionStatus::Completed,
            "failed" => InteractionStatus::Failed,
            other => return Err(invalid("interaction status", other)),
        },
        error: i.error,
        created_at: i.created_at,
        invoked_by: i.invoked_by.as_deref().map(Principal::named),
    })
}

/// Inserts a session row.
pub(crate) fn write_session(conn: &Connection, s: &Session) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .and_then(|mut stmt| {
        stmt.execute(params![
            s.session_id.as_str(),
            s.agent_id.as_str(),
            s.alias,
            s.version,
            s.user_id,
            s.context.to_string(),
            match s.status {
                SessionStatus::Active => "active",
                SessionStatus::Ended => "ended",
            },
            s.summary,
            s.created_at,
            s.ended_at,
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// Inserts an interaction row.
pub(crate) fn write_interaction(conn: &Connection, i: &Interaction) -> Result<(), StoreError> {
    let tool_calls = serde_json::to_string(&i.tool_calls)
        .map_err(|e| StoreError::permanent("cannot encode tool calls", e))?;
    conn.prepare_cached(&format!(
        "INSERT INTO interactions ({INTERACTION_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
    ))
    .and_then(|mut stmt| {
        stmt.execute(params![
            i.interaction_id.as_str(),
            i.agent_id.as_str(),
            i.version,
            i.session_id.as_ref().map(SessionId::as_str),
            i.parent_interaction_id.as_ref().map(InteractionId::as_str),
            i.input,
            i.output,
            i.model,
            i64::try_from(i.usage.prompt_tokens).unwrap_or(i64::MAX),
            i64::try_from(i.usage.completion_tokens).unwrap_or(i64::MAX),
            i.cost_usd,
            i64::try_from(i.latency_ms).unwrap_or(i64::MAX),
            tool_calls,
            match i.status {
                InteractionStatus::Completed => "completed",
                InteractionStatus::Failed => "failed",
            },
            i.error,
            i.created_at,
            i.invoked_by.as_ref().map(Principal::as_str),
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

/// Inserts a message row.
pub(crate) fn write_message(conn: &Connection, m: &Message) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .and_then(|mut stmt| {
        stmt.execute(params![
            m.session_id.as_str(),
            m.seq,
            m.role.as_str(),
            m.content,
            m.interaction_id.as_str(),
            m.created_at,
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn insert_session(&self, s: &Session, events: &[DomainEvent]) -> Result<(), StoreError> {
        let s = s.clone();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            write_session(&tx, &s)?;
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn get_session(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let raw = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1"
                ))
                .map_err(map_err)?
                .query_row([id.as_str()], read_session)
                .optional()
                .map_err(map_err)?;
            raw.map(decode_session).transpose()
        })
        .await
    }

    async fn end_session(
        &self,
        id: &SessionId,
        summary: Option<&str>,
        ended_at: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let id = id.clone();
        let summary = summary.map(str::to_owned);
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let n = tx
                .execute(
                    "UPDATE sessions SET status = 'ended', summary = ?2, ended_at = ?3 \
                     WHERE session_id = ?1 AND status = 'active'",
                    params![id.as_str(), summary, ended_at],
                )
                .map_err(map_err)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "session '{id}' is not active"
                )));
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn record_turn(
        &self,
        interaction: &Interaction,
        messages: &[Message],
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        let i = interaction.clone();
        let messages = messages.to_vec();
        let events = events.to_vec();
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            if let Some(first) = messages.first() {
                let status: Option<String> = tx
                    .query_row(
                        "SELECT status FROM sessions WHERE session_id = ?1",
                        [first.session_id.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(map_err)?;
                if status.as_deref() != Some("active") {
                    return Err(StoreError::Conflict(format!(
                        "session '{}' is not active",
                        first.session_id
                    )));
                }
            }
            write_interaction(&tx, &i)?;
            for m in &messages {
                write_message(&tx, m)?;
            }
            rows::insert_events(&tx, &events)?;
            tx.commit().map_err(map_err)
        })
        .await
    }

    async fn list_messages(
        &self,
        id: &SessionId,
        page: &PageRequest,
    ) -> Result<Vec<Message>, StoreError> {
        let id = id.clone();
        let after = page.after_number();
        let limit = page.limit + 1;
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 AND seq > ?2 \
                     ORDER BY seq LIMIT ?3"
                ))
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![id.as_str(), after, limit],
                read_message,
                decode_message,
            )
        })
        .await
    }

    async fn recent_messages(
        &self,
        id: &SessionId,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let id = id.clone();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1 \
                     ORDER BY seq DESC LIMIT ?2"
                ))
                .map_err(map_err)?;
            let mut raws = stmt
                .query_map(params![id.as_str(), limit], read_message)
                .map_err(map_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err)?;
            raws.reverse();
            raws.into_iter().map(decode_message).collect()
        })
        .await
    }

    async fn get_interaction(&self, id: &InteractionId) -> Result<Option<Interaction>, StoreError> {
        let id = id.clone();
        self.read(move |conn| {
            let raw = conn
                .prepare_cached(&format!(
                    "SELECT {INTERACTION_COLUMNS} FROM interactions WHERE interaction_id = ?1"
                ))
                .map_err(map_err)?
                .query_row([id.as_str()], read_interaction)
                .optional()
                .map_err(map_err)?;
            raw.map(decode_interaction).transpose()
        })
        .await
    }

    async fn spent_since(&self, spender: Spender<'_>, since: i64) -> Result<f64, StoreError> {
        let (sql, key) = match spender {
            Spender::Agent(id) => (
                "SELECT total(cost_usd) FROM interactions WHERE agent_id = ?1 AND created_at >= ?2",
                id.as_str().to_owned(),
            ),
            Spender::Caller(caller) => (
                "SELECT total(cost_usd) FROM interactions \
                 WHERE invoked_by = ?1 AND created_at >= ?2",
                caller.as_str().to_owned(),
            ),
        };
        self.with(move |conn| {
            conn.prepare_cached(sql)
                .map_err(map_err)?
                .query_row(params![key, since], |r| r.get::<_, f64>(0))
                .map_err(map_err)
        })
        .await
    }

    async fn list_interactions(
        &self,
        agent_id: &AgentId,
        page: &PageRequest,
    ) -> Result<Vec<Interaction>, StoreError> {
        let id = agent_id.clone();
        let after = page
            .after
            .as_ref()
            .map(|c| c.key().to_owned())
            .unwrap_or_default();
        let limit = page.limit + 1;
        self.with(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {INTERACTION_COLUMNS} FROM interactions \
                     WHERE agent_id = ?1 AND interaction_id > ?2 ORDER BY interaction_id LIMIT ?3"
                ))
                .map_err(map_err)?;
            rows::decode_all(
                &mut stmt,
                params![id.as_str(), after, limit],
                read_interaction,
                decode_interaction,
            )
        })
        .await
    }
}
