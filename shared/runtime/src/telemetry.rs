//! JSON logs, one object a line: `timestamp`, `level`, `message`, `module`, `function`, `line`,
//! `request_id`, `agent_id`, `exception`, then the event's other fields. `request_id` and
//! `agent_id` come from the enclosing spans; `function` is the innermost span's name (service
//! methods are instrumented under their use-case name).

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;
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

impl Inherited {
    fn slot(&mut self, field: &Field) -> Option<&mut Option<String>> {
        match field.name() {
            "request_id" => Some(&mut self.request_id),
            "agent_id" => Some(&mut self.agent_id),
            _ => None,
        }
    }

    fn is_empty(&self) -> bool {
        self.request_id.is_none() && self.agent_id.is_none()
    }
}

impl Visit for Inherited {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(slot) = self.slot(field) {
            *slot = Some(value.to_owned());
        }
    }

    /// Formats only the fields logs inherit: a span's other fields are not written anywhere.
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(slot) = self.slot(field) {
            let text = format!("{value:?}");
            *slot = Some(text.trim_matches('"').to_owned());
        }
    }
}

/// The keys every line has, in this order; an event's own field of the same name is left out.
const FIXED: [&str; 9] = [
    "timestamp",
    "level",
    "message",
    "module",
    "function",
    "line",
    "request_id",
    "agent_id",
    "exception",
];

/// An event's fields: the three a line puts in fixed places (`message`, `error` as `exception`,
/// `agent_id`), and the others written straight into `rest` as `,"name":value`, in the order
/// they were recorded, with no intermediate tree.
#[derive(Default)]
struct EventFields {
    message: Option<Value>,
    exception: Option<Value>,
    agent_id: Option<Value>,
    rest: Vec<u8>,
}

impl EventFields {
    /// Takes `value` into its fixed place if it has one still free, else writes it to `rest`
    /// unless a fixed key has its name.
    fn put<V: serde::Serialize + Into<Value>>(&mut self, name: &'static str, value: V) {
        let slot = match name {
            "message" => Some(&mut self.message),
            "error" => Some(&mut self.exception),
            "agent_id" => Some(&mut self.agent_id),
            _ => None,
        };
        if let Some(slot) = slot
            && slot.is_none()
        {
            *slot = Some(value.into());
            return;
        }
        if FIXED.contains(&name) {
            return;
        }
        self.rest.push(b',');
        let written = serde_json::to_writer(&mut self.rest, name).and_then(|()| {
            self.rest.push(b':');
            serde_json::to_writer(&mut self.rest, &value)
        });
        debug_assert!(written.is_ok(), "field values always serialise");
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(text, ": {s}");
            source = s.source();
        }
        self.put(field.name(), text);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field.name(), format!("{value:?}"));
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
        // A span without a field to pass on needs no extension (an allocation less).
        if !fields.is_empty()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut recorded = Inherited::default();
        values.record(&mut recorded);
        if recorded.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            match ext.get_mut::<Inherited>() {
                Some(fields) => {
                    if recorded.request_id.is_some() {
                        fields.request_id = recorded.request_id;
                    }
                    if recorded.agent_id.is_some() {
                        fields.agent_id = recorded.agent_id;
                    }
                }
                None => ext.insert(recorded),
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
        if let Some(id) = fields.agent_id.take() {
            inherited.agent_id = id.as_str().map(str::to_owned);
        }
        let no_message = Value::String(String::new());
        let mut line = Vec::with_capacity(384);
        let written = write_line(
            &mut line,
            &Line {
                level: meta.level().as_str(),
                message: fields.message.as_ref().unwrap_or(&no_message),
                module: meta.module_path().unwrap_or(meta.target()),
                function,
                line: meta.line(),
                request_id: inherited.request_id.as_deref(),
                agent_id: inherited.agent_id.as_deref(),
                exception: fields.exception.as_ref().unwrap_or(&Value::Null),
            },
            &fields.rest,
        );
        if written.is_ok() {
            line.push(b'\n');
            let _ = self.writer.make_writer().write_all(&line);
        }
    }
}

/// The fixed part of a log line.
struct Line<'a> {
    level: &'a str,
    message: &'a Value,
    module: &'a str,
    function: Option<&'a str>,
    line: Option<u32>,
    request_id: Option<&'a str>,
    agent_id: Option<&'a str>,
    exception: &'a Value,
}

/// Writes one JSON object straight into `out`: the fixed keys in order, then the event's own
/// fields, already written as `,"name":value` pairs.
fn write_line(out: &mut Vec<u8>, fixed: &Line<'_>, rest: &[u8]) -> Result<(), serde_json::Error> {
    use serde::ser::{SerializeMap, Serializer as _};
    {
        let mut serializer = serde_json::Serializer::new(&mut *out);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(FIXED[0], &rfc3339_now())?;
        map.serialize_entry(FIXED[1], fixed.level)?;
        map.serialize_entry(FIXED[2], fixed.message)?;
        map.serialize_entry(FIXED[3], fixed.module)?;
        map.serialize_entry(FIXED[4], &fixed.function)?;
        map.serialize_entry(FIXED[5], &fixed.line)?;
        map.serialize_entry(FIXED[6], &fixed.request_id)?;
        map.serialize_entry(FIXED[7], &fixed.agent_id)?;
        map.serialize_entry(FIXED[8], fixed.exception)?;
        map.end()?;
    }
    // Reopen the object for the event's own fields.
    out.pop();
    out.extend_from_slice(rest);
    out.push(b'}');
    Ok(())
}

/// Installs JSON logging to stdout with the given filter (`info`, `aop=debug,info`, ...).
///
/// # Errors
/// `ConfigError` naming `LOG_LEVEL` when the filter does not parse.
pub fn init(level: &str) -> Result<(), ConfigError> {
    let _ = tracing::subscriber::set_global_default(subscriber(level, std::io::stdout)?);
    Ok(())
}

/// As [`init`], to stderr: for commands whose stdout carries data (`aop backup --out -`).
///
/// # Errors
/// As [`init`].
pub fn init_stderr(level: &str) -> Result<(), ConfigError> {
    let _ = tracing::subscriber::set_global_default(subscriber(level, std::io::stderr)?);
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

/// The filter for `level`. At a default level of `info`, the MCP SDK (`rmcp`) logs only errors
/// unless the filter names it: it writes several INFO lines for every stateless call (a session
/// initialised, an input stream ended) and a WARN line for every error answer a client's request
/// earns (an unknown tool, bad parameters), lines a user pays for and reads past, and which a
/// client could multiply at will; the access line already records each request. At `debug` and
/// `trace` they are all there.
fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives: Vec<&str> = level.split(',').map(str::trim).collect();
    let default_is_info = directives
        .iter()
        .rev()
        .find(|d| !d.is_empty() && !d.contains('='))
        .is_some_and(|d| d.eq_ignore_ascii_case("info"));
    let names_rmcp = directives.iter().any(|d| d.starts_with("rmcp"));
    if default_is_info && !names_rmcp {
        EnvFilter::try_new(format!("{level},rmcp=error"))
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
    fn the_sdks_per_call_lines_show_only_when_asked_for() {
        assert_eq!(passed("info"), ["tool called"]);
        // `aop` is a prefix of our crates' targets (`aop_mcp`, ...).
        assert_eq!(passed("aop=debug,info"), ["tool called", "details"]);
        assert_eq!(passed("rmcp=warn,info"), ["stream broke", "tool called"]);
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
                timestamp = "forged",
                ratio = 0.5,
                cached = true,
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
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["cached"], true);
        // The fixed keys first, each once, then the event's own fields in their order.
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let order = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        assert!(order("exception") < order("attempt") && order("attempt") < order("ratio"));
        assert_eq!(text.matches("\"timestamp\":").count(), 1, "{keys:?}");
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
