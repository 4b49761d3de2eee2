//! The tools a server offers, grouped in toolsets and built once per process.
//!
//! A client puts the whole `tools/list` answer into its model's context on every conversation,
//! so the listing is kept lean: schemas carry only standard JSON Schema keywords and formats,
//! and a deployment can offer only the toolsets its clients use (`AOP_TOOLSETS`).
//!
//! The listing is a file, `tools.json` (and `tool-output-schemas.json` beside it), read at start:
//! deriving the schemas from the Rust types with schemars took half of a fresh start's work.
//! A test derives them and fails when the files differ; `AOP_BLESS=1 cargo test -p aop-mcp
//! --lib catalog` rewrites them. A reviewer sees in their diff what clients will see.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::handler::server::router::tool::{ToolRoute, ToolRouter};
use rmcp::model::{JsonObject, Tool};

use crate::server::AgentServer;
use crate::toolset::Toolset;

/// The default listing: every tool, without output schemas.
const LISTING: &str = include_str!("../tools.json");
/// Each tool's output schema, by tool name (`AOP_OUTPUT_SCHEMAS`).
const OUTPUT_SCHEMAS: &str = include_str!("../tool-output-schemas.json");

/// Each toolset's tools; a tool's name is its handler's name on [`AgentServer`].
macro_rules! toolsets {
    ($($toolset:ident => [$($tool:ident),+ $(,)?]),+ $(,)?) => {
        /// Adds the routes of `toolset` to `router`, each tool described by its entry in
        /// `listing`. (Straight into the map: `ToolRouter::add_route` checks the name's
        /// characters through a set it builds per call, 60 thousand instructions a tool; these
        /// names are fixed here.)
        fn add_routes(
            router: &mut ToolRouter<AgentServer>,
            toolset: Toolset,
            listing: &mut Listing,
        ) {
            match toolset {
                $(Toolset::$toolset => {
                    $(router.map.insert(
                        Cow::Borrowed(stringify!($tool)),
                        ToolRoute::new(listing.take(stringify!($tool)), AgentServer::$tool),
                    );)+
                })+
            }
        }

        /// The toolset of the tool called `name`, if there is such a tool.
        pub(crate) fn toolset_of(name: &str) -> Option<Toolset> {
            match name {
                $($(stringify!($tool))|+ => Some(Toolset::$toolset),)+
                _ => None,
            }
        }
    };
}

toolsets! {
    Agents => [
        create_agent, get_agent, list_agents, update_agent, list_agent_versions, archive_agent,
    ],
    Sessions => [
        start_session, send_message, run_agent, get_messages, end_session, list_interactions,
    ],
    Feedback => [submit_feedback, get_feedback_metrics],
    Deployments => [
        deploy_version, start_canary, get_canary, list_deployments, promote_canary,
        rollback_agent, propose_version, list_proposals, review_proposal,
    ],
    Evolution => [
        add_eval_cases, list_eval_cases, remove_eval_case, initialize_evolution,
        get_evolution_status, list_evolutions, cancel_evolution, list_candidates,
        select_evolution_candidate,
    ],
}

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
        let chosen: &[Toolset] = if toolsets.is_empty() {
            &Toolset::ALL
        } else {
            toolsets
        };
        let mut listing = Listing::read(output_schemas);
        let mut router = ToolRouter::new();
        for toolset in Toolset::ALL {
            if chosen.contains(&toolset) {
                add_routes(&mut router, toolset, &mut listing);
            }
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

/// The listing files, parsed, from which the routes take their tools.
struct Listing {
    tools: Vec<Tool>,
    output_schemas: Option<std::collections::HashMap<String, JsonObject>>,
}

impl Listing {
    fn read(output_schemas: bool) -> Self {
        // Both files are this crate's own, checked by a test: an error is a broken build.
        let tools = serde_json::from_str(LISTING).expect("tools.json is a list of MCP tools");
        let output_schemas = output_schemas.then(|| {
            serde_json::from_str(OUTPUT_SCHEMAS)
                .expect("tool-output-schemas.json maps tool names to JSON Schemas")
        });
        Self {
            tools,
            output_schemas,
        }
    }

    /// The tool called `name`, its name borrowed (it labels every call's metrics).
    fn take(&mut self, name: &'static str) -> Tool {
        let at = self
            .tools
            .iter()
            .position(|t| t.name == name)
            .unwrap_or_else(|| panic!("tools.json lists no tool `{name}`"));
        let mut tool = self.tools.swap_remove(at);
        tool.name = Cow::Borrowed(name);
        if let Some(schemas) = &mut self.output_schemas {
            tool.output_schema = schemas.remove(name).map(Arc::new);
        }
        tool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Each toolset's routes as its `#[tool_router]` impl blocks derive them from the Rust types
    /// (schemars, through rmcp's `#[tool]` attributes).
    fn derived_routers() -> [(Toolset, ToolRouter<AgentServer>); 5] {
        [
            (Toolset::Agents, AgentServer::agent_router()),
            (Toolset::Sessions, AgentServer::session_router()),
            (Toolset::Feedback, AgentServer::feedback_router()),
            (
                Toolset::Deployments,
                AgentServer::deployment_router() + AgentServer::proposal_router(),
            ),
            (Toolset::Evolution, AgentServer::evolution_router()),
        ]
    }

    /// The listing derived from the Rust types, leaned; what the listing files must hold.
    fn derived() -> Vec<Tool> {
        let mut router = ToolRouter::new();
        for (_, routes) in derived_routers() {
            router += routes;
        }
        for route in router.map.values_mut() {
            lean(&mut route.attr);
        }
        router.list_all()
    }

    /// The two listing files' text for `tools`: the tools without their output schemas, and
    /// the output schemas by tool name.
    fn files(tools: &[Tool]) -> (String, String) {
        let mut outputs = serde_json::Map::new();
        let listed: Vec<Tool> = tools
            .iter()
            .cloned()
            .map(|mut tool| {
                if let Some(schema) = tool.output_schema.take() {
                    outputs.insert(
                        tool.name.to_string(),
                        Value::Object(schema.as_ref().clone()),
                    );
                }
                tool
            })
            .collect();
        (pretty(&listed), pretty(&outputs))
    }

    fn pretty(value: &impl serde::Serialize) -> String {
        let mut text = serde_json::to_string_pretty(value).expect("a listing serializes");
        text.push('\n');
        text
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
    ///   warn about on every field while `minimum` already says what matters.
    ///
    /// The output schema goes to its own file and is listed only when asked for
    /// (`AOP_OUTPUT_SCHEMAS`): it is most of the listing's size, and results carry their
    /// structured content either way.
    fn lean(tool: &mut Tool) {
        let mut input = tool.input_schema.as_ref().clone();
        input.remove("$schema");
        lean_object(&mut input);
        tool.input_schema = Arc::new(input);
        if let Some(output) = tool.output_schema.take() {
            let mut output = output.as_ref().clone();
            output.remove("$schema");
            lean_object(&mut output);
            tool.output_schema = Some(Arc::new(output));
        }
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

    #[test]
    fn the_listing_files_hold_what_the_types_derive() {
        let (listing, outputs) = files(&derived());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        if std::env::var("AOP_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(dir.join("tools.json"), &listing).unwrap();
            std::fs::write(dir.join("tool-output-schemas.json"), &outputs).unwrap();
            // This build still holds the old files; the next one compiles the new.
            return;
        }
        let hint = "a tool's arguments, result or description changed: \
                    `AOP_BLESS=1 cargo test -p aop-mcp --lib catalog` rewrites the listing files";
        assert!(LISTING == listing, "tools.json is stale; {hint}");
        assert!(
            OUTPUT_SCHEMAS == outputs,
            "tool-output-schemas.json is stale; {hint}"
        );
    }

    #[test]
    fn each_toolset_routes_the_tools_its_impl_block_derives() {
        for (toolset, router) in derived_routers() {
            let mut expected: Vec<_> = router.map.keys().map(ToString::to_string).collect();
            expected.sort();
            let catalog = ToolCatalog::new(&[toolset], false);
            let routed: Vec<_> = catalog.tools().iter().map(|t| t.name.to_string()).collect();
            assert_eq!(routed, expected, "toolset {toolset}");
            for name in &expected {
                assert_eq!(toolset_of(name), Some(toolset), "{name}");
            }
        }
    }

    #[test]
    fn the_catalog_lists_the_derived_tools_with_output_schemas_only_when_asked() {
        let derived = derived();
        let full = ToolCatalog::new(&[], true);
        assert_eq!(full.tools(), derived.as_slice());
        let lean = ToolCatalog::new(&[], false);
        assert_eq!(lean.tools().len(), derived.len());
        assert!(lean.tools().iter().all(|t| t.output_schema.is_none()));
        assert!(derived.iter().all(|t| t.output_schema.is_some()));
        let get_agent = lean.get("get_agent").expect("get_agent is routed");
        assert!(matches!(get_agent.name, Cow::Borrowed("get_agent")));
        let chosen = ToolCatalog::new(&[Toolset::Feedback], false);
        let names: Vec<_> = chosen.tools().iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["get_feedback_metrics", "submit_feedback"]);
        assert_eq!(toolset_of("no_such_tool"), None);
    }
}
