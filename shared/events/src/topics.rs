//! Topic routing: each stream has a topic and a dead-letter topic `<topic>.dlq`.

use aop_core::Stream;
use serde::{Deserialize, Serialize};

/// Topic names, from configuration (the seed's `kafka.topics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub agent_events: String,
    pub feedback_events: String,
    pub evolution_events: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            agent_events: "agent_events".into(),
            feedback_events: "feedback_events".into(),
            evolution_events: "evolution_events".into(),
        }
    }
}

impl Topics {
    pub fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::AgentEvents => &self.agent_events,
            Stream::FeedbackEvents => &self.feedback_events,
            Stream::EvolutionEvents => &self.evolution_events,
        }
    }

    pub fn dead_letter(topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// Every topic and dead-letter topic.
    pub fn all(&self) -> Vec<String> {
        [
            &self.agent_events,
            &self.feedback_events,
            &self.evolution_events,
        ]
        .into_iter()
        .flat_map(|t| [t.clone(), Self::dead_letter(t)])
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_route_to_their_topics_and_dead_letters() {
        let t = Topics::default();
        assert_eq!(t.topic(Stream::FeedbackEvents), "feedback_events");
        assert_eq!(Topics::dead_letter("agent_events"), "agent_events.dlq");
        assert_eq!(t.all().len(), 6);
    }
}
