//! The MCP server role: the agent, conversation, feedback, deployment and proposal services on
//! the store and the model, behind the MCP Router. No Kafka: its events wait in the outbox for
//! the relay.

use std::sync::Arc;

use aop_core::llm::ChatModel;
use aop_core::{
    AgentService, ConversationService, DeploymentService, EvolutionService, FeedbackService,
    ProposalService,
};
use aop_mcp::{AgentServer, HttpOptions, Metrics, Services, ToolCatalog};

use super::{Role, open_stores, settle};
use crate::adapters::Stores;
use crate::config::Config;
use crate::error::StartupError;
use crate::relay::NotifySignal;
use crate::secrets::Secrets;

/// The services the MCP tools call, and the Router.
#[derive(Clone)]
pub struct McpRole {
    pub agents: AgentService,
    pub conversations: ConversationService,
    pub feedback: FeedbackService,
    pub deployments: DeploymentService,
    pub proposals: ProposalService,
    pub evolutions: EvolutionService,
    pub metrics: Arc<Metrics>,
    /// The offered tools (`AOP_TOOLSETS`), built once for every server.
    pub tools: ToolCatalog,
    pub stores: Stores,
    /// Woken after every commit that wrote events.
    pub outbox_signal: NotifySignal,
}

impl McpRole {
    /// Settles the configuration for the MCP server, builds it and checks its store.
    ///
    /// # Errors
    /// As [`settle`], [`McpRole::build`] and [`Stores::prepare`].
    pub async fn start(config: Config) -> Result<(Config, Self), StartupError> {
        let (config, secrets) = settle(config, Role::McpServer).await?;
        let role = Self::build(&config, secrets.as_ref())?;
        role.stores.prepare(&config).await?;
        Ok((config, role))
    }

    /// Builds the services on the configured store and model.
    ///
    /// # Errors
    /// `StartupError` naming the setting or the store that failed.
    pub fn build(config: &Config, secrets: Option<&Secrets>) -> Result<Self, StartupError> {
        let stores = open_stores(config, secrets)?;
        let model = super::chat_model(config, secrets)?;
        Self::on(config, stores, model)
    }

    /// Builds the services on given adapters.
    ///
    /// # Errors
    /// Never today; kept fallible for adapters that check themselves.
    pub fn on(
        config: &Config,
        stores: Stores,
        model: Arc<dyn ChatModel>,
    ) -> Result<Self, StartupError> {
        let tools = ToolCatalog::new(&config.server.toolsets(), config.server.output_schemas);
        let mut stores = stores;
        let metrics = Arc::new(Metrics::new());
        stores.progress = metrics.clone();
        let signal = NotifySignal::default();
        let wake = Arc::new(signal.clone());
        let clock = stores.clock.clone();
        let prices = super::prices(config)?;
        let agents = AgentService::new(
            stores.agents.clone(),
            clock.clone(),
            config.openai.model.clone(),
        )
        .with_signal(wake.clone());
        let deployments = super::deployment_service(config, &stores).with_signal(wake.clone());
        let proposals = ProposalService::new(
            agents.clone(),
            deployments.clone(),
            stores.proposals.clone(),
            clock.clone(),
            config.deployments.review_rules(),
        )
        .with_signal(wake.clone());
        let feedback = FeedbackService::new(
            stores.agents.clone(),
            stores.sessions.clone(),
            stores.feedback.clone(),
            clock.clone(),
        )
        .with_signal(wake.clone());
        let evolutions = EvolutionService::new(
            agents.clone(),
            deployments.clone(),
            proposals.clone(),
            stores.evolutions.clone(),
            model.clone(),
            prices.clone(),
            clock.clone(),
            config.evolution.rules(),
        )
        .with_observer(metrics.clone())
        .with_signal(wake.clone());
        let conversations = ConversationService::new(
            stores.agents.clone(),
            stores.sessions.clone(),
            model,
            clock,
            prices,
            config.agents.limits(),
            metrics.clone(),
        )
        .with_spend_caps(config.agents.spend_caps())
        .with_signal(wake);
        Ok(Self {
            agents,
            conversations,
            feedback,
            deployments,
            proposals,
            evolutions,
            metrics,
            tools,
            stores,
            outbox_signal: signal,
        })
    }

    /// A fresh MCP server over these services.
    pub fn mcp_server(&self) -> AgentServer {
        AgentServer::new(
            Services {
                agents: self.agents.clone(),
                conversations: self.conversations.clone(),
                feedback: self.feedback.clone(),
                deployments: self.deployments.clone(),
                proposals: self.proposals.clone(),
                evolutions: self.evolutions.clone(),
            },
            self.metrics.clone(),
            self.tools.clone(),
        )
    }

    /// The Router serving the MCP server, `/health` and `/metrics`.
    pub fn router(&self, options: HttpOptions) -> axum::Router {
        let server = self.mcp_server();
        aop_mcp::router(
            move || server.clone(),
            options,
            self.metrics.clone(),
            self.stores.agents.clone(),
        )
    }
}
