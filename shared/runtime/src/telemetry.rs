//! JSON logs, one object a line: `timestamp`, `level`, `message`, `module`, `function`, `line`,
//! `request_id`, `agent_id`, `exception`, then the event's other fields. `request_id` and
//! `agent_id` come from the enclosing spans; `function` is the innermost span's name (service
//! methods are instrumented under their use-case name).

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use aop_config::ConfigError;

/// Fields of a span that logs inherit.
#[derive(Default, Clone)]
struct Inherited {
    request_id: Option<String>,
    agent_id: Option<String>,
}

impl Visit for Inherited {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "request_id" => self.request_id = Some(value.to_owned()),
            "agent_id" => self.agent_id = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, text.trim_matches('"'));
    }
}

/// An event's fields as JSON.
#[derive(Default)]
struct EventFields(Map<String, Value>);

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(text, ": {s}");
            source = s.source();
        }
        self.0.insert(field.name().to_owned(), Value::from(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// The layer that writes JSON lines to `W`.
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    pub fn new(writer: W) -> Self {
        Self { writer }
    }
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Inherited::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Inherited>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut inherited = Inherited::default();
        let mut function = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Inherited>() {
                    if f.request_id.is_some() {
                        inherited.request_id.clone_from(&f.request_id);
                    }
                    if f.agent_id.is_some() {
                        inherited.agent_id.clone_from(&f.agent_id);
                    }
                }
                function = Some(span.name());
            }
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let mut fields = fields.0;
        let message = fields.remove("message").unwrap_or(Value::from(""));
        let exception = fields.remove("error").unwrap_or(Value::Null);
        if let Some(id) = fields.remove("agent_id") {
            inherited.agent_id = id.as_str().map(str::to_owned);
        }
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::from(rfc3339_now()));
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("message".into(), message);
        line.insert(
            "module".into(),
            Value::from(meta.module_path().unwrap_or(meta.target())),
        );
        line.insert("function".into(), function.map_or(Value::Null, Value::from));
        line.insert("line".into(), meta.line().map_or(Value::Null, Value::from));
        line.insert(
            "request_id".into(),
            inherited.request_id.map_or(Value::Null, Value::from),
        );
        line.insert(
            "agent_id".into(),
            inherited.agent_id.map_or(Value::Null, Value::from),
        );
        line.insert("exception".into(), exception);
        line.extend(fields);
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let _ = self.writer.make_writer().write_all(text.as_bytes());
    }
}

/// Installs JSON logging to stdout with the given filter (`info`, `aop=debug,info`, ...).
///
/// # Errors
/// `ConfigError` naming `LOG_LEVEL` when the filter does not parse.
pub fn init(level: &str) -> Result<(), ConfigError> {
    let _ = tracing::subscriber::set_global_default(subscriber(level, std::io::stdout)?);
    Ok(())
}

/// The platform's logging, JSON lines to `writer` filtered by `level`, as `init` installs it.
///
/// # Errors
/// `ConfigError` naming `LOG_LEVEL` when the filter does not parse.
pub fn subscriber<W>(level: &str, writer: W) -> Result<impl Subscriber + Send + Sync, ConfigError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = filter(level).map_err(|e| {
        ConfigError(vec![format!(
            "logging.level (LOG_LEVEL): {e} (got '{level}')"
        )])
    })?;
    Ok(tracing_subscriber::registry()
        .with(filter)
        .with(JsonLines::new(writer)))
}

/// The filter for `level`. At a default level of `info`, the MCP SDK (`rmcp`) logs only
/// warnings unless the filter names it: it writes several INFO lines for every stateless call
/// (a session initialised, an input stream ended), lines a user pays for and reads past. At
/// `debug` and `trace` they are all there.
fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    let default_is_info = directives
        .iter()
        .rev()
        .find(|d| !d.is_empty() && !d.contains('='))
        .is_some_and(|d| d.eq_ignore_ascii_case("info"));
    let names_rmcp = directives.iter().any(|d| d.starts_with("rmcp"));
    if default_is_info && !names_rmcp {
        EnvFilter::try_new(format!("{level},rmcp=warn"))
    } else {
        EnvFilter::try_new(level)
    }
}

/// The current UTC time as `2026-11-27T05:48:18.123Z`.
fn rfc3339_now() -> String {
    aop_core::time::rfc3339(aop_core::Clock::now_ms(&aop_core::SystemClock))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The messages `level` lets through of an SDK line, a warning of the SDK and a line of ours.
    fn passed(level: &str) -> Vec<String> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter(level).unwrap())
            .with(JsonLines::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "rmcp::service", "Service initialized as server");
            tracing::warn!(target: "rmcp::transport", "stream broke");
            tracing::info!(target: "aop_mcp::server", "tool called");
            tracing::debug!(target: "aop_mcp::server", "details");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let line: Value = serde_json::from_str(l).unwrap();
                line["message"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn the_sdks_per_call_info_lines_show_only_when_asked_for() {
        assert_eq!(passed("info"), ["stream broke", "tool called"]);
        // `aop` is a prefix of our crates' targets (`aop_mcp`, ...).
        assert_eq!(
            passed("aop=debug,info"),
            ["stream broke", "tool called", "details"]
        );
        assert_eq!(
            passed("debug"),
            [
                "Service initialized as server",
                "stream broke",
                "tool called",
                "details"
            ]
        );
        assert_eq!(
            passed("rmcp=info,info"),
            [
                "Service initialized as server",
                "stream broke",
                "tool called"
            ]
        );
        assert_eq!(passed("warn"), ["stream broke"]);
    }

    #[test]
    fn formats_epoch_dates() {
        use aop_core::time::rfc3339;
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_758_498_007), "2026-11-27T05:48:18.007Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_carry_span_context_and_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("http_request", request_id = "req-1");
            let _o = outer.enter();
            let inner = tracing::info_span!("get_agent", agent_id = tracing::field::Empty);
            inner.record("agent_id", "agt_42");
            let _i = inner.enter();
            let err = std::io::Error::other("disk gone");
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                attempt = 2,
                "store failed"
            );
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "store failed");
        assert_eq!(line["request_id"], "req-1");
        assert_eq!(line["agent_id"], "agt_42");
        assert_eq!(line["function"], "get_agent");
        assert_eq!(line["exception"], "disk gone");
        assert_eq!(line["attempt"], 2);
        assert!(line["module"].as_str().unwrap().contains("telemetry"));
        assert!(line["line"].as_u64().unwrap() > 0);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

/// One CloudWatch Embedded Metric Format record: a JSON line on stdout that Lambda's log
/// pipeline turns into metrics in namespace `AOP` with the dimension `Environment`, where the
/// template's alarms read them. Metrics are counts.
pub fn emf_line(environment: &str, timestamp_ms: i64, metrics: &[(&str, f64)]) -> String {
    let definitions: Vec<serde_json::Value> = metrics
        .iter()
        .map(|(name, _)| serde_json::json!({"Name": name, "Unit": "Count"}))
        .collect();
    let mut record = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "AOP",
                "Dimensions": [["Environment"]],
                "Metrics": definitions,
            }],
        },
        "Environment": environment,
    });
    for (name, value) in metrics {
        record[*name] = serde_json::json!(value);
    }
    record.to_string()
}

/// Writes [`emf_line`] for now to stdout.
pub fn emit_emf(environment: &str, metrics: &[(&str, f64)]) {
    let now = aop_core::Clock::now_ms(&aop_core::SystemClock);
    println!("{}", emf_line(environment, now, metrics));
}

#[cfg(test)]
mod emf_tests {
    use super::emf_line;

    #[test]
    fn an_emf_record_declares_each_metric_and_carries_its_value() {
        let line = emf_line("prod", 1_795_770_000_000, &[("aop_outbox_backlog", 3.0)]);
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(record["_aws"]["Timestamp"], 1_795_770_000_000_i64);
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "AOP");
        assert_eq!(directive["Dimensions"][0][0], "Environment");
        assert_eq!(directive["Metrics"][0]["Name"], "aop_outbox_backlog");
        assert_eq!(record["Environment"], "prod");
        assert_eq!(record["aop_outbox_backlog"], 3.0);
        assert!(!line.contains('\n'), "one line");
    }
}
