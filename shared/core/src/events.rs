//! Domain events: every state change is one, written to the outbox in the same transaction as
//! the change, then published (Kafka) or dispatched in process.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::AgentId;

/// Which stream an event belongs to; each maps to a topic and its dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    AgentEvents,
    FeedbackEvents,
    EvolutionEvents,
}

/// The event types of the platform, by their CloudEvents `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[serde(rename = "agent.created")]
    AgentCreated,
    #[serde(rename = "agent.version.created")]
    AgentVersionCreated,
    #[serde(rename = "agent.deployed")]
    AgentDeployed,
    #[serde(rename = "agent.archived")]
    AgentArchived,
    #[serde(rename = "session.started")]
    SessionStarted,
    #[serde(rename = "session.ended")]
    SessionEnded,
    #[serde(rename = "interaction.completed")]
    InteractionCompleted,
    #[serde(rename = "interaction.failed")]
    InteractionFailed,
    #[serde(rename = "feedback.submitted")]
    FeedbackSubmitted,
    #[serde(rename = "feedback.analyzed")]
    FeedbackAnalyzed,
    #[serde(rename = "evolution.started")]
    EvolutionStarted,
    #[serde(rename = "evolution.generation.requested")]
    EvolutionGenerationRequested,
    #[serde(rename = "evolution.generation.completed")]
    EvolutionGenerationCompleted,
    #[serde(rename = "evolution.candidate.selected")]
    EvolutionCandidateSelected,
    #[serde(rename = "evolution.completed")]
    EvolutionCompleted,
    #[serde(rename = "evolution.failed")]
    EvolutionFailed,
}

impl EventType {
    pub const ALL: [Self; 16] = [
        Self::AgentCreated,
        Self::AgentVersionCreated,
        Self::AgentDeployed,
        Self::AgentArchived,
        Self::SessionStarted,
        Self::SessionEnded,
        Self::InteractionCompleted,
        Self::InteractionFailed,
        Self::FeedbackSubmitted,
        Self::FeedbackAnalyzed,
        Self::EvolutionStarted,
        Self::EvolutionGenerationRequested,
        Self::EvolutionGenerationCompleted,
        Self::EvolutionCandidateSelected,
        Self::EvolutionCompleted,
        Self::EvolutionFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentCreated => "agent.created",
            Self::AgentVersionCreated => "agent.version.created",
            Self::AgentDeployed => "agent.deployed",
            Self::AgentArchived => "agent.archived",
            Self::SessionStarted => "session.started",
            Self::SessionEnded => "session.ended",
            Self::InteractionCompleted => "interaction.completed",
            Self::InteractionFailed => "interaction.failed",
            Self::FeedbackSubmitted => "feedback.submitted",
            Self::FeedbackAnalyzed => "feedback.analyzed",
            Self::EvolutionStarted => "evolution.started",
            Self::EvolutionGenerationRequested => "evolution.generation.requested",
            Self::EvolutionGenerationCompleted => "evolution.generation.completed",
            Self::EvolutionCandidateSelected => "evolution.candidate.selected",
            Self::EvolutionCompleted => "evolution.completed",
            Self::EvolutionFailed => "evolution.failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// agent.*, session.* and interaction.* go to agent events; feedback.* and evolution.* to
    /// their own streams.
    pub fn stream(self) -> Stream {
        match self {
            Self::FeedbackSubmitted | Self::FeedbackAnalyzed => Stream::FeedbackEvents,
            Self::EvolutionStarted
            | Self::EvolutionGenerationRequested
            | Self::EvolutionGenerationCompleted
            | Self::EvolutionCandidateSelected
            | Self::EvolutionCompleted
            | Self::EvolutionFailed => Stream::EvolutionEvents,
            _ => Stream::AgentEvents,
        }
    }
}

/// One domain event. `subject` is the agent it is about: the partition key, so each agent's
/// events stay in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Unique and time-ordered; consumers remember it to apply an event once.
    pub id: String,
    pub event_type: EventType,
    pub subject: AgentId,
    /// Epoch milliseconds.
    pub time: i64,
    pub data: serde_json::Value,
    /// Ties together events caused by one request.
    pub correlation_id: Option<String>,
}

impl DomainEvent {
    /// An event whose data is one of the [`payload`] types.
    pub fn with_payload<T: Serialize>(
        event_type: EventType,
        subject: &AgentId,
        time: i64,
        payload: &T,
    ) -> Self {
        let data = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
        Self::new(event_type, subject, time, data)
    }

    pub fn new(
        event_type: EventType,
        subject: &AgentId,
        time: i64,
        data: serde_json::Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            event_type,
            subject: subject.clone(),
            time,
            data,
            correlation_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_routes() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
        assert_eq!(EventType::SessionEnded.stream(), Stream::AgentEvents);
        assert_eq!(EventType::InteractionFailed.stream(), Stream::AgentEvents);
        assert_eq!(
            EventType::FeedbackSubmitted.stream(),
            Stream::FeedbackEvents
        );
        assert_eq!(
            EventType::EvolutionCompleted.stream(),
            Stream::EvolutionEvents
        );
        assert_eq!(EventType::parse("agent.deleted"), None);
    }
}

/// The `data` of each event type, for consumers and for the published JSON schemas.
pub mod payload {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use crate::agent::{Agent, AgentVersion, Alias};
    use crate::feedback::Feedback;
    use crate::session::{Interaction, Session};

    /// `agent.created`
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct AgentCreated {
        pub agent: Agent,
        pub version: AgentVersion,
    }

    /// `agent.version.created`
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct AgentVersionCreated {
        pub version: AgentVersion,
        pub aliases: Vec<Alias>,
    }

    /// `agent.archived` (and `agent.deployed`, which carries the agent with its moved aliases)
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct AgentChanged {
        pub agent: Agent,
    }

    /// `session.started`, `session.ended`
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct SessionChanged {
        pub session: Session,
    }

    /// `interaction.completed`, `interaction.failed`
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct InteractionRecorded {
        pub interaction: Interaction,
    }

    /// `feedback.submitted`
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct FeedbackSubmitted {
        pub feedback: Feedback,
    }

    /// Events whose payload is not fixed yet (feedback analysis, evolution).
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    pub struct Open(pub serde_json::Map<String, serde_json::Value>);
}
