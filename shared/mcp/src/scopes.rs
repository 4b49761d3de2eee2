//! Scopes: what a caller may do, per group of tools. An API key has the scopes configured for its
//! name (all when none are), a bearer token those of its `scope` claim. A tool call or resource
//! read outside the caller's scopes is refused with 403 before it reaches the tool.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use crate::Toolset;

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read agents, their versions and lineage (tools and `agent://` resources).
    AgentsRead,
    /// Create, update and archive agents.
    AgentsWrite,
    /// Sessions, turns and recorded interactions.
    Sessions,
    /// Feedback and fitness statistics.
    Feedback,
    /// Deployments, canaries, rollbacks and proposals.
    Deployments,
    /// Evaluation cases and evolutions.
    Evolution,
    /// Everything above.
    Admin,
}

impl Scope {
    pub const ALL: [Self; 7] = [
        Self::AgentsRead,
        Self::AgentsWrite,
        Self::Sessions,
        Self::Feedback,
        Self::Deployments,
        Self::Evolution,
        Self::Admin,
    ];

    /// The scope's name in tokens and settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::AgentsRead => "agents:read",
            Self::AgentsWrite => "agents:write",
            Self::Sessions => "sessions",
            Self::Feedback => "feedback",
            Self::Deployments => "deployments",
            Self::Evolution => "evolution",
            Self::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The scopes a caller holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: the caller when authentication is off, or a key configured without scopes.
    pub fn all() -> Self {
        Self(Scope::ALL.iter().fold(0, |bits, s| bits | s.bit()))
    }

    /// The known scopes of a space-separated list (a token's `scope` claim); unknown ones are
    /// ignored, as OAuth servers put scopes of other resources in the same claim.
    pub fn parse(text: &str) -> Self {
        Self(
            text.split_whitespace()
                .filter_map(Scope::parse)
                .fold(0, |bits, s| bits | s.bit()),
        )
    }

    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    pub fn is_all(self) -> bool {
        self.allows(Scope::Admin)
    }
}

/// The scope a tool needs; `None` for a name no tool has (the call fails as unknown).
pub fn for_tool(name: &str) -> Option<Scope> {
    static SCOPES: OnceLock<HashMap<String, Scope>> = OnceLock::new();
    SCOPES
        .get_or_init(|| {
            let mut scopes = HashMap::new();
            for tool in crate::ToolCatalog::new(&[], false).tools() {
                let Some(toolset) = crate::catalog::toolset_of(&tool.name) else {
                    continue;
                };
                let read_only = tool
                    .annotations
                    .as_ref()
                    .and_then(|a| a.read_only_hint)
                    .unwrap_or(false);
                let scope = match toolset {
                    Toolset::Agents if read_only => Scope::AgentsRead,
                    Toolset::Agents => Scope::AgentsWrite,
                    Toolset::Sessions => Scope::Sessions,
                    Toolset::Feedback => Scope::Feedback,
                    Toolset::Deployments => Scope::Deployments,
                    Toolset::Evolution => Scope::Evolution,
                };
                scopes.insert(tool.name.to_string(), scope);
            }
            scopes
        })
        .get(name)
        .copied()
}

/// The scope an MCP request needs, from its JSON-RPC body: a tool call its tool's, a resource
/// read `agents:read`, a task request `evolution` (tasks are evolutions); anything else (listing,
/// `initialize`, `ping`) none.
pub fn for_request(body: &[u8]) -> Vec<Scope> {
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
        #[serde(default)]
        params: Option<Params<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        name: Option<std::borrow::Cow<'a, str>>,
    }
    let needed = |m: &Message<'_>| match m.method? {
        "tools/call" => for_tool(m.params.as_ref()?.name.as_deref()?),
        "resources/read" => Some(Scope::AgentsRead),
        method if method.starts_with("tasks/") => Some(Scope::Evolution),
        _ => None,
    };
    if let Ok(one) = serde_json::from_slice::<Message<'_>>(body) {
        return needed(&one).into_iter().collect();
    }
    // A batch (the 2025-03-26 revision).
    serde_json::from_slice::<Vec<Message<'_>>>(body)
        .map(|batch| batch.iter().filter_map(needed).collect())
        .unwrap_or_default()
}

/// The `name=scope scope` entries of `AOP_API_KEY_SCOPES`, by key name; an error names the
/// entry and the scope that is not one.
pub fn parse_key_scopes(entries: &[String]) -> Result<HashMap<String, Scopes>, String> {
    // What is echoed is cut short and stripped of anything that looks like a credential.
    let shown =
        |text: &str| aop_config::redact::shorten(&aop_config::redact::words(text), 64).into_owned();
    let mut by_name = HashMap::new();
    for entry in entries {
        let Some((name, list)) = entry.split_once('=') else {
            return Err(format!(
                "'{}' is not name=scope scope ... (for example alice=agents:read sessions)",
                shown(entry)
            ));
        };
        for scope in list.split_whitespace() {
            if Scope::parse(scope).is_none() {
                return Err(format!(
                    "'{}' (for {}) is not a scope; the scopes are {}",
                    shown(scope),
                    shown(name),
                    Scope::ALL.map(Scope::name).join(", ")
                ));
            }
        }
        by_name.insert(name.trim().to_owned(), Scopes::parse(list));
    }
    Ok(by_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_need_the_scope_of_their_group_and_agents_split_reads_from_writes() {
        assert_eq!(for_tool("get_agent"), Some(Scope::AgentsRead));
        assert_eq!(for_tool("list_agents"), Some(Scope::AgentsRead));
        assert_eq!(for_tool("create_agent"), Some(Scope::AgentsWrite));
        assert_eq!(for_tool("send_message"), Some(Scope::Sessions));
        assert_eq!(for_tool("submit_feedback"), Some(Scope::Feedback));
        assert_eq!(for_tool("review_proposal"), Some(Scope::Deployments));
        assert_eq!(for_tool("initialize_evolution"), Some(Scope::Evolution));
        assert_eq!(for_tool("no_such_tool"), None);
    }

    #[test]
    fn admin_holds_every_scope_and_unknown_names_hold_none() {
        let some = Scopes::parse("agents:read sessions other:scope");
        assert!(some.allows(Scope::AgentsRead) && some.allows(Scope::Sessions));
        assert!(!some.allows(Scope::AgentsWrite) && !some.is_all());
        assert!(Scopes::parse("admin").allows(Scope::Evolution));
        assert!(Scopes::all().is_all());
    }

    #[test]
    fn requests_need_the_scopes_of_what_they_touch() {
        let call =
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_agent"}}"#;
        assert_eq!(for_request(call), [Scope::AgentsWrite]);
        let batch =
            br#"[{"method":"resources/read","params":{"uri":"agent://a"}},{"method":"tasks/get"}]"#;
        assert_eq!(for_request(batch), [Scope::AgentsRead, Scope::Evolution]);
        assert!(for_request(br#"{"method":"tools/list"}"#).is_empty());
        assert!(for_request(b"not json").is_empty());
    }

    #[test]
    fn key_scopes_name_what_is_wrong() {
        let ok = parse_key_scopes(&["alice=agents:read sessions".into()]).unwrap();
        assert!(ok["alice"].allows(Scope::Sessions));
        let err = parse_key_scopes(&["alice=agents:reed".into()]).unwrap_err();
        assert!(
            err.contains("'agents:reed' (for alice) is not a scope"),
            "{err}"
        );
        assert!(parse_key_scopes(&["alice".into()]).is_err());
    }
}
