//! Rows to domain types and back. Lists and nested values are stored as JSON text.

use aop_core::{
    Agent, AgentId, AgentStatus, AgentVersion, DomainEvent, EventData, EventType, StoreError,
};
use rusqlite::{Params, Row, Statement, Transaction, params};

use crate::error::{corrupt, map_err};

pub(crate) const AGENT_COLUMNS: &str = "agent_id, name, domain, description, status, created_at, \
     updated_at, latest_version, aliases";
pub(crate) const AGENT_COLUMNS_A: &str = "a.agent_id, a.name, a.domain, a.description, a.status, \
     a.created_at, a.updated_at, a.latest_version, a.aliases";
pub(crate) const VERSION_COLUMNS: &str = "agent_id, version, instructions, model, parameters, \
     capabilities, knowledge_sources, created_at, created_by, parents, generation, change_summary, \
     origin";

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::permanent("cannot encode value", e))
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, e))
}

pub(crate) fn agent_id(text: String) -> Result<AgentId, StoreError> {
    AgentId::try_from(text).map_err(|reason| StoreError::Permanent {
        message: format!("stored agent id is invalid: {reason}"),
        source: None,
    })
}

pub(crate) fn insert_agent(tx: &rusqlite::Connection, a: &Agent) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            a.agent_id.as_str(),
            a.name,
            a.domain,
            a.description,
            a.status.as_str(),
            a.created_at,
            a.updated_at,
            a.latest_version,
            json(&a.aliases)?,
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

pub(crate) fn update_agent(tx: &Transaction<'_>, a: &Agent) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE agents SET name = ?2, domain = ?3, description = ?4, status = ?5, \
         updated_at = ?6, latest_version = ?7, aliases = ?8 WHERE agent_id = ?1",
        params![
            a.agent_id.as_str(),
            a.name,
            a.domain,
            a.description,
            a.status.as_str(),
            a.updated_at,
            a.latest_version,
            json(&a.aliases)?,
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

pub(crate) fn insert_version(
    tx: &rusqlite::Connection,
    v: &AgentVersion,
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO agent_versions ({VERSION_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            v.agent_id.as_str(),
            v.version,
            v.instructions,
            v.model,
            json(&v.parameters)?,
            json(&v.capabilities)?,
            json(&v.knowledge_sources)?,
            v.created_at,
            v.created_by,
            json(&v.parents)?,
            v.generation,
            v.change_summary,
            v.origin.as_ref().map(json).transpose()?,
        ],
    )
    .map_err(map_err)?;
    Ok(())
}

/// An `agents` row as read, before decoding.
pub(crate) struct RawAgent {
    agent_id: String,
    name: String,
    domain: String,
    description: String,
    status: String,
    created_at: i64,
    updated_at: i64,
    latest_version: u32,
    aliases: String,
}

impl RawAgent {
    pub(crate) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            agent_id: r.get(0)?,
            name: r.get(1)?,
            domain: r.get(2)?,
            description: r.get(3)?,
            status: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            latest_version: r.get(7)?,
            aliases: r.get(8)?,
        })
    }

    pub(crate) fn into_agent(self) -> Result<Agent, StoreError> {
        let status = AgentStatus::parse(&self.status).ok_or_else(|| StoreError::Permanent {
            message: format!("stored agent status '{}' is unknown", self.status),
            source: None,
        })?;
        Ok(Agent {
            agent_id: agent_id(self.agent_id)?,
            name: self.name,
            domain: self.domain,
            description: self.description,
            status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            latest_version: self.latest_version,
            aliases: parse("aliases", &self.aliases)?,
        })
    }
}

/// An `agent_versions` row as read, before decoding.
pub(crate) struct RawVersion {
    agent_id: String,
    version: u32,
    instructions: String,
    model: String,
    parameters: String,
    capabilities: String,
    knowledge_sources: String,
    created_at: i64,
    created_by: String,
    parents: String,
    generation: u32,
    change_summary: String,
    origin: Option<String>,
}

impl RawVersion {
    pub(crate) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            agent_id: r.get(0)?,
            version: r.get(1)?,
            instructions: r.get(2)?,
            model: r.get(3)?,
            parameters: r.get(4)?,
            capabilities: r.get(5)?,
            knowledge_sources: r.get(6)?,
            created_at: r.get(7)?,
            created_by: r.get(8)?,
            parents: r.get(9)?,
            generation: r.get(10)?,
            change_summary: r.get(11)?,
            origin: r.get(12)?,
        })
    }

    pub(crate) fn into_version(self) -> Result<AgentVersion, StoreError> {
        Ok(AgentVersion {
            agent_id: agent_id(self.agent_id)?,
            version: self.version,
            instructions: self.instructions,
            model: self.model,
            parameters: parse("parameters", &self.parameters)?,
            capabilities: parse("capabilities", &self.capabilities)?,
            knowledge_sources: parse("knowledge_sources", &self.knowledge_sources)?,
            created_at: self.created_at,
            created_by: self.created_by,
            parents: parse("parents", &self.parents)?,
            generation: self.generation,
            change_summary: self.change_summary,
            origin: self
                .origin
                .as_deref()
                .map(|o| parse("origin", o))
                .transpose()?,
        })
    }
}

/// Writes events into the outbox inside the caller's transaction.
pub(crate) fn insert_events(
    tx: &Transaction<'_>,
    events: &[DomainEvent],
) -> Result<(), StoreError> {
    for e in events {
        let data = e.data.to_json().map_err(|err| {
            StoreError::permanent(
                format!(
                    "cannot encode the data of {} event {}",
                    e.event_type().as_str(),
                    e.id
                ),
                err,
            )
        })?;
        tx.execute(
            "INSERT INTO outbox (event_id, event_type, subject, time, data, correlation_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                e.id,
                e.event_type().as_str(),
                e.subject.as_str(),
                e.time,
                data.to_string(),
                e.correlation_id,
            ],
        )
        .map_err(map_err)?;
    }
    Ok(())
}

pub(crate) fn read_event(
    r: &Row<'_>,
) -> rusqlite::Result<(String, String, String, i64, String, Option<String>)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(crate) fn decode_event(
    (id, event_type, subject, time, data, correlation_id): (
        String,
        String,
        String,
        i64,
        String,
        Option<String>,
    ),
) -> Result<DomainEvent, StoreError> {
    let event_type = EventType::parse(&event_type).ok_or_else(|| StoreError::Permanent {
        message: format!("stored event type '{event_type}' is unknown"),
        source: None,
    })?;
    let data = EventData::from_json(event_type, parse("event data", &data)?)
        .map_err(|e| StoreError::permanent(format!("stored event {id} is unreadable"), e))?;
    Ok(DomainEvent {
        subject: agent_id(subject)?,
        time,
        data,
        correlation_id,
        id,
    })
}

/// Runs a prepared query and decodes every row; a read error or a row that does not decode fails
/// the call.
pub(crate) fn decode_all<P: Params, R, T>(
    stmt: &mut Statement<'_>,
    params: P,
    read: impl FnMut(&Row<'_>) -> rusqlite::Result<R>,
    decode: impl FnMut(R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let raws = stmt
        .query_map(params, read)
        .map_err(map_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(map_err)?;
    raws.into_iter().map(decode).collect()
}

/// A revision counter as SQLite stores it.
pub(crate) fn revision(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
