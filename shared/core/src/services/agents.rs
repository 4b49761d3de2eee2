//! The agent registry: agents, their immutable versions, aliases and lineage.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use crate::agent::{
    Agent, AgentId, AgentStatus, AgentVersion, Alias, Capability, Lineage, ModelParameters,
    PROD_ALIAS,
};
use crate::clock::Clock;
use crate::error::ServiceError;
use crate::error::StoreError;
use crate::events::{DomainEvent, payload};
use crate::page::{Cursor, Page, PageRequest};
use crate::ports::{AgentFilter, AgentStore, NoSignal, OutboxSignal, StatusFilter};
use crate::proposal::VersionChanges;
use crate::validate::{self, Problems};

/// How often an update is retried when a concurrent writer created a version first.
const UPDATE_ATTEMPTS: usize = 3;
/// `created_by` when the caller does not say who they are.
const ANONYMOUS: &str = "user";

/// Input of `create_agent`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// Display name, 1-100 characters.
    pub name: String,
    /// Area of work used for filtering, such as `support` or `finance`. Default `general`.
    #[serde(default)]
    pub domain: Option<String>,
    /// What the agent is for, up to 2000 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// The system prompt of the first version.
    pub instructions: String,
    /// Model name sent to the LLM API. Defaults to the platform's configured model.
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub parameters: Option<ModelParameters>,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// URIs or names of documents the agent draws on.
    #[serde(default)]
    pub knowledge_sources: Vec<String>,
    /// Who creates it: the authenticated caller, set by the entry point (never an argument).
    /// Default `user`.
    #[serde(skip)]
    #[schemars(skip)]
    pub created_by: Option<String>,
}

/// Input of `update_agent`: every field given replaces the latest version's; the result is a new
/// version.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    pub agent_id: AgentId,
    /// Fail instead of updating when the latest version is not this one (optimistic locking).
    #[serde(default)]
    pub expected_version: Option<u32>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// Replaces all parameters.
    #[serde(default)]
    pub parameters: Option<ModelParameters>,
    /// Replaces the whole capability list.
    #[serde(default)]
    pub capabilities: Option<Vec<Capability>>,
    /// Replaces the whole list.
    #[serde(default)]
    pub knowledge_sources: Option<Vec<String>>,
    /// Why the version was made. Default: the list of changed fields.
    #[serde(default)]
    pub change_summary: Option<String>,
    /// Who makes the version: the authenticated caller, set by the entry point (never an
    /// argument).
    #[serde(skip)]
    #[schemars(skip)]
    pub created_by: Option<String>,
}

/// A version to derive from a base version: what `update_agent`, reviewed proposals and
/// evolutions have in common.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub agent_id: AgentId,
    /// The version the changes apply to; the latest when `None`.
    pub base: Option<u32>,
    /// Refuse unless the latest version is this one (optimistic locking).
    pub expected_latest: Option<u32>,
    pub changes: VersionChanges,
    /// Why the version was made. Default: the list of changed fields.
    pub change_summary: Option<String>,
    pub created_by: String,
    /// Added to the base's generation: 0 for people's edits, 1 for an evolution's.
    pub generation_step: u32,
    /// Whether aliases that follow the latest version move to it (`update_agent`) or not
    /// (reviewed proposals and evolutions go live through a deployment).
    pub moves_aliases: bool,
    /// Set for a version an evolution made.
    pub origin: Option<crate::agent::VersionOrigin>,
}

/// An agent with one of its versions.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AgentDetail {
    pub agent: Agent,
    pub version: AgentVersion,
}

/// Raw filters of `list_agents`, as a caller gives them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAgents {
    /// Only agents of this domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// Only agents whose latest version has a capability of this name.
    #[serde(default)]
    pub capability: Option<String>,
    /// `active` (default), `archived` or `all`.
    #[serde(default)]
    pub status: Option<String>,
    /// Case-insensitive text to find in the name or description.
    #[serde(default)]
    pub text: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// The agent registry.
#[derive(Clone)]
pub struct AgentService {
    store: Arc<dyn AgentStore>,
    clock: Arc<dyn Clock>,
    default_model: String,
    signal: Arc<dyn OutboxSignal>,
}

impl AgentService {
    pub fn new(
        store: Arc<dyn AgentStore>,
        clock: Arc<dyn Clock>,
        default_model: impl Into<String>,
    ) -> Self {
        Self {
            store,
            clock,
            default_model: default_model.into(),
            signal: Arc::new(NoSignal),
        }
    }

    /// Wakes `signal` after every commit that wrote events.
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn OutboxSignal>) -> Self {
        self.signal = signal;
        self
    }

    pub fn store(&self) -> &Arc<dyn AgentStore> {
        &self.store
    }

    /// Creates an agent with version 1 and a `prod` alias pointing at it.
    ///
    /// # Errors
    /// `Invalid` listing every bad field; `Store` when the store fails.
    #[instrument(name = "create_agent", skip_all, fields(agent_id))]
    pub async fn create(&self, input: CreateAgent) -> Result<AgentDetail, ServiceError> {
        let mut p = Problems::default();
        let name = p.text("name", &input.name, 1, validate::MAX_NAME);
        let domain = p.token(
            "domain",
            input.domain.as_deref().unwrap_or("general"),
            validate::MAX_DOMAIN,
        );
        let description = p.text(
            "description",
            input.description.as_deref().unwrap_or(""),
            0,
            validate::MAX_DESCRIPTION,
        );
        let instructions = p.text(
            "instructions",
            &input.instructions,
            1,
            validate::MAX_INSTRUCTIONS,
        );
        let model = p.token(
            "model",
            input.model.as_deref().unwrap_or(&self.default_model),
            validate::MAX_MODEL,
        );
        let parameters = input.parameters.unwrap_or_default();
        p.parameters("parameters", &parameters);
        let capabilities = p.capabilities("capabilities", &input.capabilities);
        let knowledge_sources = p.knowledge_sources("knowledge_sources", &input.knowledge_sources);
        let created_by = p.text(
            "created_by",
            input.created_by.as_deref().unwrap_or(ANONYMOUS),
            1,
            validate::MAX_CREATED_BY,
        );
        self.check_delegates(&mut p, None, &capabilities).await?;
        p.finish()?;

        let now = self.clock.now_ms();
        let agent_id = AgentId::generate();
        tracing::Span::current().record("agent_id", agent_id.as_str());
        let agent = Agent {
            agent_id: agent_id.clone(),
            name,
            domain,
            description,
            status: AgentStatus::Active,
            created_at: now,
            updated_at: now,
            latest_version: 1,
            aliases: vec![Alias::following(PROD_ALIAS, 1, now)],
        };
        let version = AgentVersion {
            agent_id,
            version: 1,
            instructions,
            model,
            parameters,
            capabilities,
            knowledge_sources,
            created_at: now,
            created_by,
            parents: Vec::new(),
            generation: 0,
            change_summary: "created".into(),
            origin: None,
        };
        let events = [
            DomainEvent::new(
                &agent.agent_id,
                now,
                payload::AgentCreated {
                    agent: agent.clone(),
                    version: version.clone(),
                },
            ),
            version_created(&agent, &version, now),
        ];
        self.store.insert_agent(&agent, &version, &events).await?;
        self.signal.notify();
        tracing::debug!(version = 1, "agent created");
        Ok(AgentDetail { agent, version })
    }

    /// The agent and its latest version, or the given version.
    ///
    /// # Errors
    /// `NotFound` naming the agent id or the version.
    #[instrument(name = "get_agent", level = "debug", skip_all, fields(agent_id = %agent_id))]
    pub async fn get(
        &self,
        agent_id: &AgentId,
        version: Option<u32>,
    ) -> Result<AgentDetail, ServiceError> {
        let agent = self.agent(agent_id).await?;
        let wanted = version.unwrap_or(agent.latest_version);
        let version = self.version(agent_id, wanted).await?;
        Ok(AgentDetail { agent, version })
    }

    /// Agents matching the filters, one page at a time.
    ///
    /// # Errors
    /// `Invalid` for a bad filter, cursor or limit.
    #[instrument(name = "list_agents", level = "debug", skip_all)]
    pub async fn list(&self, input: ListAgents) -> Result<Page<Agent>, ServiceError> {
        let mut p = Problems::default();
        let domain = input
            .domain
            .as_deref()
            .map(|d| p.token("domain", d, validate::MAX_DOMAIN));
        let capability = input
            .capability
            .as_deref()
            .map(|c| p.text("capability", c, 1, validate::MAX_CAPABILITY_NAME));
        let text = input
            .text
            .as_deref()
            .map(|t| p.text("text", t, 1, validate::MAX_SEARCH_TEXT));
        let status = match input.status.as_deref().map(str::trim) {
            None | Some("active") => StatusFilter::Active,
            Some("archived") => StatusFilter::Archived,
            Some("all") => StatusFilter::Any,
            Some(other) => {
                p.push(
                    "status",
                    format!(
                        "'{}' is not one of active, archived, all",
                        other.escape_debug()
                    ),
                );
                StatusFilter::Active
            }
        };
        let page = match PageRequest::parse(input.cursor.as_deref(), input.limit) {
            Ok(page) => Some(page),
            Err(ServiceError::Invalid(errors)) => {
                errors.into_iter().for_each(|e| p.add(e));
                None
            }
            Err(other) => return Err(other),
        };
        p.finish()?;
        let page = page.unwrap_or_default();
        let filter = AgentFilter {
            domain,
            capability,
            status,
            text,
        };
        let rows = self.store.list_agents(&filter, &page).await?;
        Ok(paginate(rows, page.limit, |a| a.agent_id.to_string()))
    }

    /// Makes version n+1 from the latest version and the given changes. Nothing is edited in
    /// place; aliases that follow the latest version (`prod` of a fresh agent) move to it.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent; `Invalid` for bad fields; `Conflict` when the agent is
    /// archived, nothing changes, or `expected_version` is not the latest.
    #[instrument(name = "update_agent", skip_all, fields(agent_id = %input.agent_id))]
    pub async fn update(&self, input: UpdateAgent) -> Result<AgentDetail, ServiceError> {
        let created_by = input
            .created_by
            .clone()
            .unwrap_or_else(|| ANONYMOUS.to_owned());
        self.derive(NewVersion {
            agent_id: input.agent_id,
            base: None,
            expected_latest: input.expected_version,
            changes: VersionChanges {
                instructions: input.instructions,
                model: input.model,
                parameters: input.parameters,
                capabilities: input.capabilities,
                knowledge_sources: input.knowledge_sources,
            },
            change_summary: input.change_summary,
            created_by,
            generation_step: 0,
            moves_aliases: true,
            origin: None,
        })
        .await
    }

    /// Derives a new version (number latest + 1) from a base version and changes.
    ///
    /// # Errors
    /// As [`AgentService::update`]; `Invalid` naming `base_version` when the base does not
    /// exist.
    pub async fn derive(&self, new: NewVersion) -> Result<AgentDetail, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_derive(&new).await {
                Err(ServiceError::Store(StoreError::Conflict(reason)))
                    if new.expected_latest.is_none() && attempt < UPDATE_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %reason, "concurrent change, retrying");
                }
                Err(ServiceError::Store(StoreError::Conflict(_))) => {
                    return Err(ServiceError::Conflict(format!(
                        "agent '{}' was changed concurrently; read it again and retry",
                        new.agent_id
                    )));
                }
                other => return other,
            }
        }
    }

    async fn try_derive(&self, input: &NewVersion) -> Result<AgentDetail, ServiceError> {
        let agent = self.agent(&input.agent_id).await?;
        if agent.status == AgentStatus::Archived {
            return Err(ServiceError::Conflict(format!(
                "agent '{}' is archived; archived agents cannot be updated",
                agent.agent_id
            )));
        }
        if let Some(expected) = input.expected_latest
            && expected != agent.latest_version
        {
            return Err(ServiceError::Conflict(format!(
                "expected_version is {expected} but the latest version of agent '{}' is {}",
                agent.agent_id, agent.latest_version
            )));
        }
        let base_number = input.base.unwrap_or(agent.latest_version);
        let base = match self.store.get_version(&agent.agent_id, base_number).await? {
            Some(v) => v,
            None => {
                return Err(ServiceError::invalid(
                    "base_version",
                    format!(
                        "agent '{}' has no version {base_number} (latest is {})",
                        agent.agent_id, agent.latest_version
                    ),
                ));
            }
        };

        let mut p = Problems::default();
        let mut next = base.clone();
        let mut changed = Vec::new();
        let changes = &input.changes;
        if let Some(text) = &changes.instructions {
            next.instructions = p.text("instructions", text, 1, validate::MAX_INSTRUCTIONS);
        }
        if let Some(model) = &changes.model {
            next.model = p.token("model", model, validate::MAX_MODEL);
        }
        if let Some(params) = &changes.parameters {
            p.parameters("parameters", params);
            next.parameters = params.clone();
        }
        if let Some(caps) = &changes.capabilities {
            next.capabilities = p.capabilities("capabilities", caps);
            self.check_delegates(&mut p, Some(&agent.agent_id), &next.capabilities)
                .await?;
        }
        if let Some(sources) = &changes.knowledge_sources {
            next.knowledge_sources = p.knowledge_sources("knowledge_sources", sources);
        }
        let summary = input
            .change_summary
            .as_deref()
            .map(|s| p.text("change_summary", s, 1, validate::MAX_CHANGE_SUMMARY));
        let created_by = p.text("created_by", &input.created_by, 1, validate::MAX_CREATED_BY);
        p.finish()?;

        for (field, differs) in [
            ("instructions", next.instructions != base.instructions),
            ("model", next.model != base.model),
            ("parameters", next.parameters != base.parameters),
            ("capabilities", next.capabilities != base.capabilities),
            (
                "knowledge_sources",
                next.knowledge_sources != base.knowledge_sources,
            ),
        ] {
            if differs {
                changed.push(field);
            }
        }
        if changed.is_empty() {
            return Err(ServiceError::Conflict(format!(
                "the update changes nothing: every given field equals version {} of agent '{}'",
                base.version, agent.agent_id
            )));
        }

        let now = self.clock.now_ms();
        next.version = agent.latest_version + 1;
        next.created_at = now;
        next.created_by = created_by;
        next.parents = vec![base.reference()];
        next.generation = base.generation + input.generation_step;
        next.origin.clone_from(&input.origin);
        next.change_summary = summary.unwrap_or_else(|| format!("changed {}", changed.join(", ")));

        let previous_aliases = agent.aliases.clone();
        let mut agent = agent;
        agent.latest_version = next.version;
        agent.updated_at = now;
        if input.moves_aliases {
            for alias in agent.aliases.iter_mut().filter(|a| a.follows_latest) {
                *alias = Alias::following(&alias.name, next.version, now);
            }
        }
        let events = [version_created(&agent, &next, now)];
        self.store
            .insert_version(&agent, &next, &previous_aliases, &events)
            .await?;
        self.signal.notify();
        tracing::debug!(version = next.version, changed = ?changed, "version created");
        Ok(AgentDetail {
            agent,
            version: next,
        })
    }

    /// Versions of an agent, oldest first, one page at a time.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent; `Invalid` for a bad cursor or limit.
    #[instrument(name = "list_agent_versions", level = "debug", skip_all, fields(agent_id = %agent_id))]
    pub async fn list_versions(
        &self,
        agent_id: &AgentId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<AgentVersion>, ServiceError> {
        let page = PageRequest::parse(cursor, limit)?;
        if let Some(after) = &page.after
            && after.key().parse::<u32>().is_err()
        {
            return Err(ServiceError::invalid(
                "cursor",
                "not a cursor returned by a previous page of versions",
            ));
        }
        self.agent(agent_id).await?;
        let rows = self.store.list_versions(agent_id, &page).await?;
        Ok(paginate(rows, page.limit, |v| v.version.to_string()))
    }

    /// Archives an agent: it keeps its versions and history but takes no new versions.
    /// Archiving an archived agent changes nothing.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent.
    #[instrument(name = "archive_agent", skip_all, fields(agent_id = %agent_id))]
    pub async fn archive(&self, agent_id: &AgentId) -> Result<Agent, ServiceError> {
        let mut agent = self.agent(agent_id).await?;
        if agent.status == AgentStatus::Archived {
            return Ok(agent);
        }
        let now = self.clock.now_ms();
        agent.status = AgentStatus::Archived;
        agent.updated_at = now;
        let events = [DomainEvent::new(
            agent_id,
            now,
            payload::AgentArchived {
                agent: agent.clone(),
            },
        )];
        self.store
            .set_status(agent_id, AgentStatus::Archived, now, &events)
            .await?;
        self.signal.notify();
        tracing::debug!("agent archived");
        Ok(agent)
    }

    /// All versions of an agent and their parent links.
    ///
    /// # Errors
    /// `NotFound` for an unknown agent.
    #[instrument(name = "agent_lineage", level = "debug", skip_all, fields(agent_id = %agent_id))]
    pub async fn lineage(&self, agent_id: &AgentId) -> Result<Lineage, ServiceError> {
        self.agent(agent_id).await?;
        let mut versions = Vec::new();
        let mut page = PageRequest {
            after: None,
            limit: crate::page::MAX_PAGE_SIZE,
        };
        loop {
            let mut rows = self.store.list_versions(agent_id, &page).await?;
            let more = rows.len() > page.limit as usize;
            rows.truncate(page.limit as usize);
            page.after = rows.last().map(|v| Cursor::after(v.version.to_string()));
            versions.extend(rows);
            if !more {
                break;
            }
        }
        Ok(Lineage::from_versions(agent_id.clone(), &versions))
    }

    async fn agent(&self, agent_id: &AgentId) -> Result<Agent, ServiceError> {
        self.store
            .get_agent(agent_id)
            .await?
            .ok_or_else(|| ServiceError::agent_not_found(agent_id))
    }

    async fn version(
        &self,
        agent_id: &AgentId,
        version: u32,
    ) -> Result<AgentVersion, ServiceError> {
        self.store
            .get_version(agent_id, version)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "agent version",
                id: format!("{agent_id} v{version}"),
            })
    }

    /// Every `delegate_to` must name another existing, active agent.
    async fn check_delegates(
        &self,
        p: &mut Problems,
        self_id: Option<&AgentId>,
        capabilities: &[Capability],
    ) -> Result<(), ServiceError> {
        // Too many capabilities is already refused, cheaply: no store reads for any of them.
        if capabilities.len() > crate::validate::MAX_CAPABILITIES {
            return Ok(());
        }
        let mut checked = std::collections::HashSet::new();
        for (i, cap) in capabilities.iter().enumerate() {
            let Some(target) = &cap.delegate_to else {
                continue;
            };
            // Each delegate is looked up, and its chain walked, once.
            if !checked.insert(target) {
                continue;
            }
            let field = format!("capabilities[{i}].delegate_to");
            if Some(target) == self_id {
                p.push(field, "an agent cannot delegate to itself");
                continue;
            }
            match self.store.get_agent(target).await? {
                None => p.push(field, format!("agent '{target}' not found")),
                Some(a) if a.status == AgentStatus::Archived => {
                    p.push(field, format!("agent '{target}' is archived"));
                }
                Some(_) => {
                    if let Some(me) = self_id
                        && let Some(path) = self.delegation_path(target, me).await?
                    {
                        p.push(
                            field,
                            format!("delegation cycle: {me} -> {}", path.join(" -> ")),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

impl AgentService {
    /// The chain of delegations from `from` to `to` through the agents' latest versions, if any.
    async fn delegation_path(
        &self,
        from: &AgentId,
        to: &AgentId,
    ) -> Result<Option<Vec<String>>, ServiceError> {
        const MAX_VISITED: usize = 256;
        let mut queue = std::collections::VecDeque::from([(from.clone(), vec![from.to_string()])]);
        let mut seen = std::collections::HashSet::from([from.clone()]);
        while let Some((at, path)) = queue.pop_front() {
            if &at == to {
                return Ok(Some(path));
            }
            if seen.len() > MAX_VISITED {
                break;
            }
            let Some(agent) = self.store.get_agent(&at).await? else {
                continue;
            };
            let Some(version) = self.store.get_version(&at, agent.latest_version).await? else {
                continue;
            };
            for next in version
                .capabilities
                .iter()
                .filter_map(|c| c.delegate_to.clone())
            {
                if next == *to || seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.to_string());
                    queue.push_back((next, p));
                }
            }
        }
        Ok(None)
    }
}

fn version_created(agent: &Agent, version: &AgentVersion, now: i64) -> DomainEvent {
    DomainEvent::new(
        &agent.agent_id,
        now,
        payload::AgentVersionCreated {
            version: version.clone(),
            aliases: agent.aliases.clone(),
        },
    )
}

/// Cuts the extra row a store returns and turns the last key into the next cursor.
pub(crate) fn paginate<T>(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|last| Cursor::after(key(last)).encode())
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}
