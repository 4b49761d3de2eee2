//! Domain events: every state change is one, written to the outbox in the same transaction as
//! the change, then published (Kafka) or dispatched in process.
//!
//! Each event type has exactly one payload struct (in [`payload`]). The list below is the only
//! place that ties a type's name, its stream and its payload together: the type enum, the typed
//! [`EventData`], decoding and the published JSON schemas all come from it.

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

impl Stream {
    pub const ALL: [Self; 3] = [
        Self::AgentEvents,
        Self::FeedbackEvents,
        Self::EvolutionEvents,
    ];
}

/// Why event data does not fit its type.
#[derive(Debug, thiserror::Error)]
#[error("{event_type} data does not decode: {source}")]
pub struct DataError {
    pub event_type: &'static str,
    #[source]
    pub source: serde_json::Error,
}

macro_rules! event_types {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal in $stream:ident; )*) => {
        /// The event types of the platform, by their CloudEvents `type`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum EventType {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
        }

        impl EventType {
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)* }
            }

            /// The stream (and so the topic) events of this type go to.
            pub fn stream(self) -> Stream {
                match self { $(Self::$variant => Stream::$stream,)* }
            }

            /// The JSON schema of this type's `data`.
            pub fn data_schema(self) -> schemars::Schema {
                match self { $(Self::$variant => schemars::schema_for!(payload::$variant),)* }
            }
        }

        /// The typed `data` of an event: one variant, and one payload struct, per type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventData {
            $( $variant(payload::$variant), )*
        }

        impl EventData {
            pub fn event_type(&self) -> EventType {
                match self { $(Self::$variant(_) => EventType::$variant,)* }
            }

            /// The data as JSON, as stores and the envelope write it.
            ///
            /// # Errors
            /// When a value cannot be represented in JSON.
            pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self { $(Self::$variant(p) => serde_json::to_value(p),)* }
            }

            /// Reads the data of an event of type `event_type`.
            ///
            /// # Errors
            /// `DataError` when the JSON is not that type's payload.
            pub fn from_json(
                event_type: EventType,
                data: serde_json::Value,
            ) -> Result<Self, DataError> {
                let wrap = |source| DataError { event_type: event_type.as_str(), source };
                match event_type {
                    $(EventType::$variant => {
                        serde_json::from_value(data).map(Self::$variant).map_err(wrap)
                    })*
                }
            }
        }

        $(
            impl From<payload::$variant> for EventData {
                fn from(p: payload::$variant) -> Self {
                    Self::$variant(p)
                }
            }
        )*
    };
}

event_types! {
    AgentCreated = "agent.created" in AgentEvents;
    AgentVersionCreated = "agent.version.created" in AgentEvents;
    /// An alias moved.
    AgentDeployed = "agent.deployed" in AgentEvents;
    AgentArchived = "agent.archived" in AgentEvents;
    SessionStarted = "session.started" in AgentEvents;
    SessionEnded = "session.ended" in AgentEvents;
    InteractionCompleted = "interaction.completed" in AgentEvents;
    InteractionFailed = "interaction.failed" in AgentEvents;
    FeedbackSubmitted = "feedback.submitted" in FeedbackEvents;
    CanaryStarted = "deployment.canary.started" in AgentEvents;
    CanaryStepAdvanced = "deployment.canary.step_advanced" in AgentEvents;
    CanaryPaused = "deployment.canary.paused" in AgentEvents;
    CanaryPromoted = "deployment.canary.promoted" in AgentEvents;
    CanaryRolledBack = "deployment.canary.rolled_back" in AgentEvents;
    /// A promoted version scores worse than the baseline it replaced (the bake period).
    ImpactNegative = "evolution.impact.negative" in EvolutionEvents;
    ProposalCreated = "proposal.created" in AgentEvents;
    ProposalReviewed = "proposal.reviewed" in AgentEvents;
    ProposalApproved = "proposal.approved" in AgentEvents;
    ProposalRejected = "proposal.rejected" in AgentEvents;
    ProposalExpired = "proposal.expired" in AgentEvents;
    EvolutionStarted = "evolution.started" in EvolutionEvents;
    /// Asks the evolution worker for one iteration of a run.
    EvolutionGenerationRequested = "evolution.generation.requested" in EvolutionEvents;
    EvolutionGenerationCompleted = "evolution.generation.completed" in EvolutionEvents;
    EvolutionCandidateAccepted = "evolution.candidate.accepted" in EvolutionEvents;
    EvolutionCandidateRejected = "evolution.candidate.rejected" in EvolutionEvents;
    /// A candidate became a version on its way out (a proposal or a canary).
    EvolutionCandidateSelected = "evolution.candidate.selected" in EvolutionEvents;
    EvolutionCompleted = "evolution.completed" in EvolutionEvents;
    EvolutionFailed = "evolution.failed" in EvolutionEvents;
    EvolutionCancelled = "evolution.cancelled" in EvolutionEvents;
}

impl EventType {
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == text)
    }
}

/// One domain event. `subject` is the agent it is about: the partition key, so each agent's
/// events stay in order.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainEvent {
    /// Unique and time-ordered; consumers remember it to apply an event once.
    pub id: String,
    pub subject: AgentId,
    /// Epoch milliseconds.
    pub time: i64,
    pub data: EventData,
    /// Ties together events caused by one request.
    pub correlation_id: Option<String>,
}

impl DomainEvent {
    /// A new event with a fresh id; its type is its payload's.
    pub fn new(subject: &AgentId, time: i64, data: impl Into<EventData>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            subject: subject.clone(),
            time,
            data: data.into(),
            correlation_id: None,
        }
    }

    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }
}

/// The `data` of each event type, for producers, consumers and the published JSON schemas.
pub mod payload {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use crate::agent::{Agent, AgentVersion, Alias};
    use crate::deployment::{Canary, CanaryId, Deployment};
    use crate::evolution::{
        Candidate, CandidateId, EvolutionId, EvolutionMode, EvolutionSettings, Spend, Winner,
    };
    use crate::feedback::Feedback;
    use crate::principal::Principal;
    use crate::proposal::ProposalId;
    use crate::proposal::{Proposal, Review};
    use crate::session::{Interaction, Session};

    /// `agent.created`: the agent and its first version.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct AgentCreated {
        pub agent: Agent,
        pub version: AgentVersion,
    }

    /// `agent.version.created`: the new version and the aliases as they are after it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct AgentVersionCreated {
        pub version: AgentVersion,
        pub aliases: Vec<Alias>,
    }

    /// `agent.deployed`: an alias moved; the agent with its aliases after the move, and the
    /// deployment record (who, why, from what to what).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct AgentDeployed {
        pub agent: Agent,
        pub deployment: Deployment,
    }

    /// `agent.archived`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct AgentArchived {
        pub agent: Agent,
    }

    /// `session.started`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct SessionStarted {
        pub session: Session,
    }

    /// `session.ended`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct SessionEnded {
        pub session: Session,
    }

    /// `interaction.completed`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct InteractionCompleted {
        pub interaction: Interaction,
    }

    /// `interaction.failed`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct InteractionFailed {
        pub interaction: Interaction,
    }

    /// `feedback.submitted`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct FeedbackSubmitted {
        pub feedback: Feedback,
    }

    /// `deployment.canary.started`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct CanaryStarted {
        pub canary: Canary,
    }

    /// `deployment.canary.step_advanced`: the canary at its new step.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct CanaryStepAdvanced {
        pub canary: Canary,
    }

    /// `deployment.canary.paused`: the canary stopped deciding; `last_decision` says why.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct CanaryPaused {
        pub canary: Canary,
    }

    /// `deployment.canary.promoted`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct CanaryPromoted {
        pub canary: Canary,
    }

    /// `deployment.canary.rolled_back`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct CanaryRolledBack {
        pub canary: Canary,
    }

    /// `evolution.impact.negative`: the relative change of the new version's score against the
    /// baseline's (below `-bake_max_drop`), and whether it was rolled back.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ImpactNegative {
        pub canary: Canary,
        pub change: f64,
        pub rolled_back: bool,
    }

    /// `proposal.created`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ProposalCreated {
        pub proposal: Proposal,
    }

    /// `proposal.reviewed`: one review, and the proposal after it.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ProposalReviewed {
        pub proposal: Proposal,
        pub review: Review,
    }

    /// `proposal.approved`: enough approvals; the proposal as applied.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ProposalApproved {
        pub proposal: Proposal,
    }

    /// `proposal.rejected` (also when changes were requested)
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ProposalRejected {
        pub proposal: Proposal,
    }

    /// `proposal.expired`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct ProposalExpired {
        pub proposal: Proposal,
    }

    /// `evolution.started`: the run without its cases (they can be large).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionStarted {
        pub evolution_id: EvolutionId,
        pub alias: String,
        pub mode: EvolutionMode,
        pub seed_version: u32,
        pub settings: EvolutionSettings,
        pub valset_size: usize,
        pub trainset_size: usize,
        pub started_by: Principal,
    }

    /// `evolution.generation.requested`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionGenerationRequested {
        pub evolution_id: EvolutionId,
        pub iteration: u32,
    }

    /// `evolution.generation.completed`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionGenerationCompleted {
        pub evolution_id: EvolutionId,
        pub iteration: u32,
        pub outcome: String,
        pub detail: String,
        pub best_val: f64,
        pub spend: Spend,
    }

    /// `evolution.candidate.accepted`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionCandidateAccepted {
        pub candidate: Candidate,
    }

    /// `evolution.candidate.rejected`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionCandidateRejected {
        pub candidate: Candidate,
    }

    /// `evolution.candidate.selected`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionCandidateSelected {
        pub evolution_id: EvolutionId,
        pub candidate_id: CandidateId,
        pub version: u32,
        pub proposal_id: Option<ProposalId>,
        pub canary_id: Option<CanaryId>,
    }

    /// `evolution.completed`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionCompleted {
        pub evolution_id: EvolutionId,
        pub stop_reason: String,
        pub seed_score: Option<f64>,
        pub best_score: Option<f64>,
        pub winner: Option<Winner>,
        pub spend: Spend,
    }

    /// `evolution.failed`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionFailed {
        pub evolution_id: EvolutionId,
        pub error: String,
        pub spend: Spend,
    }

    /// `evolution.cancelled`
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    pub struct EvolutionCancelled {
        pub evolution_id: EvolutionId,
        pub by: Principal,
        pub spend: Spend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_routes() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert!(t.data_schema().as_object().is_some());
        }
        assert_eq!(EventType::SessionEnded.stream(), Stream::AgentEvents);
        assert_eq!(EventType::InteractionFailed.stream(), Stream::AgentEvents);
        assert_eq!(
            EventType::FeedbackSubmitted.stream(),
            Stream::FeedbackEvents
        );
        assert_eq!(EventType::parse("agent.deleted"), None);
    }

    #[test]
    fn data_decodes_only_as_its_own_type() {
        let wrong = serde_json::json!({"interaction": {"nope": 1}});
        let err = EventData::from_json(EventType::InteractionCompleted, wrong).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("interaction.completed data does not decode"),
            "{err}"
        );
        let err =
            EventData::from_json(EventType::SessionStarted, serde_json::json!(null)).unwrap_err();
        assert_eq!(err.event_type, "session.started");
    }
}
