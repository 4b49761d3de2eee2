//! Prometheus metrics of the MCP endpoint: HTTP requests and tool calls, counted and timed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolName {
    tool: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

/// The process's metrics registry.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    tool_calls: Family<ToolLabels, Counter>,
    tool_latency: Family<ToolName, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aop");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        let tool_latency = Family::<ToolName, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            http_latency.clone(),
        );
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls by tool and outcome (ok, tool_error, protocol_error)",
            tool_calls.clone(),
        );
        registry.register(
            "mcp_tool_call_duration_seconds",
            "MCP tool call latency by tool",
            tool_latency.clone(),
        );
        Self {
            registry,
            http_requests,
            http_latency,
            tool_calls,
            tool_latency,
        }
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = HttpLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_latency.get_or_create(&labels).observe(seconds);
    }

    pub fn observe_tool(&self, tool: &str, outcome: &str, seconds: f64) {
        self.tool_calls
            .get_or_create(&ToolLabels {
                tool: tool.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.tool_latency
            .get_or_create(&ToolName {
                tool: tool.to_owned(),
            })
            .observe(seconds);
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
        m.observe_tool("get_agent", "ok", 0.001);
        m.observe_tool("get_agent", "ok", 0.002);
        m.observe_tool("get_agent", "tool_error", 0.001);
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
}
