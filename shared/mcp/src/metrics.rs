//! Prometheus metrics of the process: HTTP requests and tool calls, agent turns, the event
//! path (events published, consumed, failed, dead-lettered; the outbox backlog), canaries
//! (candidate share, each arm's score, decisions) and evolution runs (iteration, scores, spend,
//! runs ended).

use std::borrow::Cow;

use aop_core::deployment::{Canary, CanaryStatus};
use aop_core::evolution::{Evolution, EvolutionStatus};
use aop_core::services::ProgressObserver;
use aop_core::services::conversation::InteractionObserver;
use aop_core::session::{Interaction, InteractionStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: Cow<'static, str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    agent_id: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    agent_id: String,
    arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

/// What happened to events on their way through a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// Handed to the broker (or, with no broker, to the processor in this process).
    Published,
    /// Applied by the event processor (a duplicate included).
    Consumed,
    /// Left for redelivery after a transient failure.
    Failed,
    /// Unusable: written to the topic's dead-letter topic.
    DeadLettered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolName {
    tool: Cow<'static, str>,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

impl ProgressObserver for Metrics {
    fn canary(&self, before: Option<&Canary>, after: &Canary) {
        let agent = AgentLabel {
            agent_id: after.agent_id.to_string(),
        };
        let share = match after.status {
            CanaryStatus::Running | CanaryStatus::Paused => after.candidate_weight(),
            CanaryStatus::Promoted | CanaryStatus::Baking => 100,
            _ => 0,
        };
        self.canary_share
            .get_or_create(&agent)
            .set(i64::from(share));
        let Some(point) = after.history.last() else {
            return;
        };
        for (arm, score) in [
            ("baseline", point.baseline_score),
            ("candidate", point.candidate_score),
        ] {
            if let Some(score) = score {
                self.canary_score
                    .get_or_create(&ArmLabels {
                        agent_id: agent.agent_id.clone(),
                        arm: arm.to_owned(),
                    })
                    .set(score);
            }
        }
        if before.and_then(|b| b.last_decision.as_ref()) != after.last_decision.as_ref() {
            self.canary_decisions
                .get_or_create(&ActionLabel {
                    action: point.action.clone(),
                })
                .inc();
        }
    }

    fn evolution(&self, before: &Evolution, after: &Evolution) {
        let agent = AgentLabel {
            agent_id: after.agent_id.to_string(),
        };
        self.evolution_iteration
            .get_or_create(&agent)
            .set(i64::from(after.iteration));
        if let Some(best) = after.best_score {
            self.evolution_best.get_or_create(&agent).set(best);
        }
        if let Some(seed) = after.seed_score {
            self.evolution_seed.get_or_create(&agent).set(seed);
        }
        self.evolution_spend
            .get_or_create(&agent)
            .set(after.spend.cost_usd);
        if before.status == EvolutionStatus::Running && after.status != EvolutionStatus::Running {
            self.evolutions_ended
                .get_or_create(&StatusLabel {
                    status: after.status.as_str().to_owned(),
                })
                .inc();
        }
    }
}

impl InteractionObserver for Metrics {
    fn recorded(&self, i: &Interaction) {
        let agent = AgentLabel {
            agent_id: i.agent_id.to_string(),
        };
        self.interactions.get_or_create(&agent).inc();
        if i.status == InteractionStatus::Failed {
            self.failures.get_or_create(&agent).inc();
        }
        for (kind, n) in [
            ("prompt", i.usage.prompt_tokens),
            ("completion", i.usage.completion_tokens),
        ] {
            self.tokens
                .get_or_create(&TokenLabels {
                    agent_id: agent.agent_id.clone(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        if let Some(usd) = i.cost_usd {
            self.cost.get_or_create(&agent).inc_by(usd);
        }
        self.turn_latency
            .get_or_create(&agent)
            .observe(i.latency_ms as f64 / 1000.0);
    }
}

/// The process's metrics registry.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    tool_calls: Family<ToolLabels, Counter>,
    tool_latency: Family<ToolName, Histogram, fn() -> Histogram>,
    interactions: Family<AgentLabel, Counter>,
    failures: Family<AgentLabel, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<AgentLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    turn_latency: Family<AgentLabel, Histogram, fn() -> Histogram>,
    events_published: Family<TopicLabel, Counter>,
    events_consumed: Family<TopicLabel, Counter>,
    events_failed: Family<TopicLabel, Counter>,
    events_dead_lettered: Family<TopicLabel, Counter>,
    outbox_backlog: Gauge,
    canary_share: Family<AgentLabel, Gauge>,
    canary_score: Family<ArmLabels, FloatGauge>,
    canary_decisions: Family<ActionLabel, Counter>,
    evolution_iteration: Family<AgentLabel, Gauge>,
    evolution_best: Family<AgentLabel, FloatGauge>,
    evolution_seed: Family<AgentLabel, FloatGauge>,
    evolution_spend: Family<AgentLabel, FloatGauge>,
    evolutions_ended: Family<StatusLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let interactions = Family::<AgentLabel, Counter>::default();
        let failures = Family::<AgentLabel, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<AgentLabel, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let turn_latency = Family::<AgentLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let tool_latency = Family::<ToolName, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );

        let mut root = Registry::default();
        // The design's name, unprefixed: dashboards query `agent_interactions_total`.
        root.register(
            "agent_interactions",
            "Agent turns by agent, delegated turns included",
            interactions.clone(),
        );
        let aop = root.sub_registry_with_prefix("aop");
        aop.register(
            "agent_interaction_failures",
            "Agent turns that failed, by agent",
            failures.clone(),
        );
        aop.register(
            "llm_tokens",
            "LLM tokens by agent and kind (prompt, completion)",
            tokens.clone(),
        );
        aop.register(
            "llm_cost_usd",
            "LLM cost in US dollars by agent, from the configured price table",
            cost.clone(),
        );
        aop.register(
            "agent_turn_duration_seconds",
            "Latency of agent turns, model calls and delegations included",
            turn_latency.clone(),
        );
        aop.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        aop.register(
            "http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            http_latency.clone(),
        );
        aop.register(
            "mcp_tool_calls",
            "MCP tool calls by tool and outcome (ok, tool_error, protocol_error)",
            tool_calls.clone(),
        );
        aop.register(
            "mcp_tool_call_duration_seconds",
            "MCP tool call latency by tool",
            tool_latency.clone(),
        );
        let events_published = Family::<TopicLabel, Counter>::default();
        let events_consumed = Family::<TopicLabel, Counter>::default();
        let events_failed = Family::<TopicLabel, Counter>::default();
        let events_dead_lettered = Family::<TopicLabel, Counter>::default();
        let outbox_backlog = Gauge::default();
        aop.register(
            "events_published",
            "Events relayed from the outbox, by topic",
            events_published.clone(),
        );
        aop.register(
            "events_consumed",
            "Events the event processor applied, by topic",
            events_consumed.clone(),
        );
        aop.register(
            "events_failed",
            "Events left for redelivery after a transient failure, by topic",
            events_failed.clone(),
        );
        aop.register(
            "events_dead_lettered",
            "Unusable events written to the dead-letter topic, by topic",
            events_dead_lettered.clone(),
        );
        aop.register(
            "outbox_backlog",
            "Events waiting in the outbox, as last seen by the relay",
            outbox_backlog.clone(),
        );
        let canary_share = Family::<AgentLabel, Gauge>::default();
        let canary_score = Family::<ArmLabels, FloatGauge>::default();
        let canary_decisions = Family::<ActionLabel, Counter>::default();
        let evolution_iteration = Family::<AgentLabel, Gauge>::default();
        let evolution_best = Family::<AgentLabel, FloatGauge>::default();
        let evolution_seed = Family::<AgentLabel, FloatGauge>::default();
        let evolution_spend = Family::<AgentLabel, FloatGauge>::default();
        let evolutions_ended = Family::<StatusLabel, Counter>::default();
        aop.register(
            "canary_candidate_share_percent",
            "The share of new sessions a canary's candidate gets (100 once promoted, 0 rolled back), by agent",
            canary_share.clone(),
        );
        aop.register(
            "canary_score_mean",
            "Each arm's mean score at the canary's last decision, by agent and arm",
            canary_score.clone(),
        );
        aop.register(
            "canary_decisions",
            "Canary decisions, by action (hold, advance, promote, roll_back, pause, baked, ...)",
            canary_decisions.clone(),
        );
        aop.register(
            "evolution_iteration",
            "The iteration an agent's latest evolution run has reached",
            evolution_iteration.clone(),
        );
        aop.register(
            "evolution_best_score",
            "The best validation score of an agent's latest evolution run",
            evolution_best.clone(),
        );
        aop.register(
            "evolution_seed_score",
            "The seed's validation score of an agent's latest evolution run",
            evolution_seed.clone(),
        );
        aop.register(
            "evolution_spend_usd",
            "What an agent's latest evolution run has spent on model calls, US dollars",
            evolution_spend.clone(),
        );
        aop.register(
            "evolutions_ended",
            "Evolution runs that ended, by status (completed, failed, cancelled)",
            evolutions_ended.clone(),
        );
        Self {
            registry: root,
            canary_share,
            canary_score,
            canary_decisions,
            evolution_iteration,
            evolution_best,
            evolution_seed,
            evolution_spend,
            evolutions_ended,
            events_published,
            events_consumed,
            events_failed,
            events_dead_lettered,
            outbox_backlog,
            http_requests,
            http_latency,
            tool_calls,
            tool_latency,
            interactions,
            failures,
            tokens,
            cost,
            turn_latency,
        }
    }

    /// Labels are static or the tool's own name (a borrowed `Cow` from the tool catalog), so
    /// observing a request allocates nothing once its series exists.
    pub fn observe_http(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let labels = HttpLabels {
            route,
            method,
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_latency.get_or_create(&labels).observe(seconds);
    }

    pub fn observe_tool(&self, tool: Cow<'static, str>, outcome: &'static str, seconds: f64) {
        self.tool_calls
            .get_or_create(&ToolLabels {
                tool: tool.clone(),
                outcome,
            })
            .inc();
        self.tool_latency
            .get_or_create(&ToolName { tool })
            .observe(seconds);
    }

    /// Counts `n` events of `topic` with `outcome`.
    pub fn observe_events(&self, topic: &str, outcome: EventOutcome, n: u64) {
        let family = match outcome {
            EventOutcome::Published => &self.events_published,
            EventOutcome::Consumed => &self.events_consumed,
            EventOutcome::Failed => &self.events_failed,
            EventOutcome::DeadLettered => &self.events_dead_lettered,
        };
        family
            .get_or_create(&TopicLabel {
                topic: topic.to_owned(),
            })
            .inc_by(n);
    }

    pub fn set_outbox_backlog(&self, n: u64) {
        self.outbox_backlog
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_tool_and_outcome() {
        let m = Metrics::new();
        m.observe_tool("get_agent".into(), "ok", 0.001);
        m.observe_tool("get_agent".into(), "ok", 0.002);
        m.observe_tool("get_agent".into(), "tool_error", 0.001);
        let text = m.render();
        assert!(
            text.contains(r#"aop_mcp_tool_calls_total{tool="get_agent",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"aop_mcp_tool_call_duration_seconds_count{tool="get_agent"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn renders_events_by_topic_and_the_backlog() {
        let m = Metrics::new();
        m.observe_events("agent_events", EventOutcome::Published, 3);
        m.observe_events("feedback_events", EventOutcome::DeadLettered, 1);
        m.set_outbox_backlog(7);
        let text = m.render();
        assert!(
            text.contains(r#"aop_events_published_total{topic="agent_events"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"aop_events_dead_lettered_total{topic="feedback_events"} 1"#),
            "{text}"
        );
        assert!(text.contains("aop_outbox_backlog 7"), "{text}");
    }
}
