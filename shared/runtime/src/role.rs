//! What a process is for, and so which dependencies it uses: the one fact the secrets, the
//! composition roots and `template.yaml` (checked by a test) all follow.

/// What a process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    McpServer,
    EventProcessor,
    OutboxRelay,
    /// The evolution worker (Lambda on MSK): one iteration of an evolution per request.
    EvolutionWorker,
    /// `aop`: every role in one process.
    Local,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::McpServer => "mcp-server",
            Self::EventProcessor => "event-processor",
            Self::OutboxRelay => "outbox-relay",
            Self::EvolutionWorker => "evolution-worker",
            Self::Local => "aop",
        }
    }

    /// Whether the role calls the model (and so reads its key).
    pub fn uses_llm(self) -> bool {
        matches!(self, Self::McpServer | Self::EvolutionWorker | Self::Local)
    }

    /// Whether the role talks to Kafka (and so reads its credentials and finds its brokers).
    pub fn uses_kafka(self) -> bool {
        matches!(
            self,
            Self::EventProcessor | Self::OutboxRelay | Self::EvolutionWorker | Self::Local
        )
    }
}
