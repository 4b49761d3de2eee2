//! The tools a server offers, grouped in toolsets and built once per process.
//!
//! A client puts the whole `tools/list` answer into its model's context on every conversation,
//! so the listing is kept lean: schemas carry only standard JSON Schema keywords and formats,
//! and a deployment can offer only the toolsets its clients use (`AOP_TOOLSETS`).

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::model::{JsonObject, Tool};
use serde_json::Value;

use crate::server::AgentServer;
use crate::toolset::Toolset;

/// The offered tools: their routes and their listing, built once and shared by every server
/// (a stateless deployment makes one server per request). Cheap to clone.
#[derive(Clone)]
pub struct ToolCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    router: ToolRouter<AgentServer>,
    listing: Vec<Tool>,
}

impl ToolCatalog {
    /// The tools of `toolsets` (every tool when empty), listed with their output schemas when
    /// `output_schemas` is set.
    pub fn new(toolsets: &[Toolset], output_schemas: bool) -> Self {
        Self::spawn(toolsets, output_schemas).wait()
    }

    /// Starts building the catalog of [`ToolCatalog::new`] on a thread of its own, so that a
    /// start can open its store meanwhile; [`CatalogBuild::wait`] gives the catalog.
    ///
    /// The thread ends when the catalog is done, and that is the point of it even when nothing
    /// else runs meanwhile: rmcp caches every schema it derives in thread-locals of the deriving
    /// thread for that thread's life, and those caches (the full schemas, input and output,
    /// before `lean`) held about 2.7 MB of JSON trees for the life of the process, of an idle
    /// server's 3.7 MB of heap.
    pub fn spawn(toolsets: &[Toolset], output_schemas: bool) -> CatalogBuild {
        let chosen = toolsets.to_vec();
        let thread = std::thread::Builder::new()
            .name("aop-catalog".into())
            .spawn(move || Self::build(&chosen, output_schemas));
        match thread {
            Ok(thread) => CatalogBuild::Building(thread),
            // No thread to be had: built here, its caches kept.
            Err(_) => CatalogBuild::Built(Self::build(toolsets, output_schemas)),
        }
    }

    fn build(toolsets: &[Toolset], output_schemas: bool) -> Self {
        let chosen: &[Toolset] = if toolsets.is_empty() {
            &Toolset::ALL
        } else {
            toolsets
        };
        let mut router = ToolRouter::new();
        for toolset in Toolset::ALL {
            if chosen.contains(&toolset) {
                router += routes(toolset);
            }
        }
        for route in router.map.values_mut() {
            lean(&mut route.attr, output_schemas);
        }
        let listing = router.list_all();
        Self {
            inner: Arc::new(Inner { router, listing }),
        }
    }

    /// The listing, sorted by name.
    pub fn tools(&self) -> &[Tool] {
        &self.inner.listing
    }

    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.inner.router.get(name)
    }

    pub(crate) fn router(&self) -> &ToolRouter<AgentServer> {
        &self.inner.router
    }
}

fn routes(toolset: Toolset) -> ToolRouter<AgentServer> {
    match toolset {
        Toolset::Agents => AgentServer::agent_router(),
        Toolset::Sessions => AgentServer::session_router(),
        Toolset::Feedback => AgentServer::feedback_router(),
        Toolset::Deployments => AgentServer::deployment_router() + AgentServer::proposal_router(),
        Toolset::Evolution => AgentServer::evolution_router(),
    }
}

/// A [`ToolCatalog`] on its way (see [`ToolCatalog::spawn`]).
pub enum CatalogBuild {
    Building(std::thread::JoinHandle<ToolCatalog>),
    Built(ToolCatalog),
}

impl CatalogBuild {
    /// The catalog, once built; a panic while building is resumed here.
    pub fn wait(self) -> ToolCatalog {
        match self {
            Self::Building(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Self::Built(catalog) => catalog,
        }
    }
}

/// Formats JSON Schema 2020-12 defines; a validator warns about or rejects any other.
const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Rewrites a tool's listing to what a client needs, in standard JSON Schema:
/// - no `$schema`: 2020-12 is MCP's default dialect;
/// - no `"default": null` on optional arguments: absent already means none;
/// - no Rust integer widths as `format` (`uint32`, `int64`, ...), which validators such as AJV
///   warn about on every field while `minimum` already says what matters;
/// - the output schema only when asked for (`AOP_OUTPUT_SCHEMAS`): it is most of the listing's
///   size, and results carry their structured content either way.
fn lean(tool: &mut Tool, output_schemas: bool) {
    let mut input = tool.input_schema.as_ref().clone();
    input.remove("$schema");
    lean_object(&mut input);
    tool.input_schema = Arc::new(input);
    tool.output_schema = match tool.output_schema.take() {
        Some(output) if output_schemas => {
            let mut output = output.as_ref().clone();
            output.remove("$schema");
            lean_object(&mut output);
            Some(Arc::new(output))
        }
        _ => None,
    };
}

fn lean_object(schema: &mut JsonObject) {
    if let Some(Value::String(format)) = schema.get("format")
        && !STANDARD_FORMATS.contains(&format.as_str())
    {
        schema.remove("format");
    }
    if schema.get("default") == Some(&Value::Null) {
        schema.remove("default");
    }
    for value in schema.values_mut() {
        lean_value(value);
    }
}

fn lean_value(value: &mut Value) {
    match value {
        Value::Object(object) => lean_object(object),
        Value::Array(items) => items.iter_mut().for_each(lean_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_and_null_defaults_leave_the_schema_and_standard_formats_stay() {
        let mut schema = serde_json::json!({
            "type": "object",
            "properties": {
                "limit": {"type": ["integer", "null"], "format": "uint32", "minimum": 0},
                "at": {"type": "string", "format": "date-time"},
                "items": {"type": "array", "items": {"type": "integer", "format": "int64"}},
                "format": {"type": "string", "description": "a property named format"},
                "cursor": {"type": ["string", "null"], "default": null}
            }
        });
        let Value::Object(object) = &mut schema else {
            unreachable!()
        };
        lean_object(object);
        assert_eq!(
            schema["properties"]["limit"],
            serde_json::json!({"type": ["integer", "null"], "minimum": 0})
        );
        assert_eq!(schema["properties"]["at"]["format"], "date-time");
        assert_eq!(
            schema["properties"]["items"]["items"],
            serde_json::json!({"type": "integer"})
        );
        assert_eq!(
            schema["properties"]["format"]["description"],
            "a property named format"
        );
        assert_eq!(
            schema["properties"]["cursor"],
            serde_json::json!({"type": ["string", "null"]})
        );
    }
}
