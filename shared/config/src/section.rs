//! What a section declares: its settings (key, variable, kind) and its checks.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How a setting's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text as given; empty means unset.
    Text,
    /// A comma-separated list (a YAML sequence in the file).
    List,
    /// A comma-separated list of numbers.
    Numbers,
    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    Flag,
    /// A whole number.
    Whole,
    /// Any number.
    Number,
}

/// One setting of a section.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Key inside the section (`port`, `topics.agent_events`).
    pub key: &'static str,
    /// Its environment variable (`MCP_SERVER_PORT`).
    pub env: &'static str,
    pub kind: Kind,
    /// What a value must be, for error messages; the kind's own wording when `None`.
    pub expects: Option<&'static str>,
    /// A secret is never echoed in errors or help.
    pub secret: bool,
}

impl Setting {
    pub const fn new(key: &'static str, env: &'static str, kind: Kind) -> Self {
        Self {
            key,
            env,
            kind,
            expects: None,
            secret: false,
        }
    }

    /// A secret text setting.
    pub const fn secret(key: &'static str, env: &'static str, kind: Kind) -> Self {
        Self {
            key,
            env,
            kind,
            expects: None,
            secret: true,
        }
    }

    /// Says what a value must be (`a port number 0-65535`).
    #[must_use]
    pub const fn expecting(mut self, expects: &'static str) -> Self {
        self.expects = Some(expects);
        self
    }

    pub(crate) fn expects(&self) -> &'static str {
        self.expects.unwrap_or(match self.kind {
            Kind::Text | Kind::List => "text",
            Kind::Numbers => "numbers separated by commas",
            Kind::Flag => "true or false",
            Kind::Whole => "a whole number",
            Kind::Number => "a number",
        })
    }
}

/// Problems a section's checks found, each with the key (inside the section) it is about.
#[derive(Debug, Default)]
pub struct Problems(pub(crate) Vec<(String, String)>);

impl Problems {
    pub fn push(&mut self, key: &str, reason: impl Into<String>) {
        self.0.push((key.to_owned(), reason.into()));
    }

    /// Pushes `reason` for `key` unless `value >= min`.
    pub fn at_least<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, value: T, min: T) {
        if value < min {
            self.push(key, format!("must be at least {min}"));
        }
    }
}

/// A section of the configuration, owned by the adapter it configures.
///
/// The type deserializes from the section's values (`#[serde(default)]` on the struct, so what
/// nobody set keeps its default) and serializes to show its defaults in `--help`; secret fields
/// skip serializing.
pub trait Section: Default + Serialize + DeserializeOwned {
    /// The section's key in `config.yaml` (`server`); empty for top-level settings. Two
    /// sections may share a name when their keys differ.
    const NAME: &'static str;
    /// Every setting of the section.
    const SETTINGS: &'static [Setting];

    /// Checks what serde cannot (ranges, formats, combinations inside the section).
    fn check(&self, problems: &mut Problems) {
        let _ = problems;
    }
}

/// `(full key, variable, default as shown)` of every setting of `T`, for `--help`.
pub fn help_lines<T: Section>() -> Vec<(String, &'static str, String)> {
    let defaults = serde_json::to_value(T::default()).unwrap_or_default();
    T::SETTINGS
        .iter()
        .map(|s| {
            let value = s.key.split('.').try_fold(&defaults, |v, part| v.get(part));
            let shown = match value {
                _ if s.secret => String::new(),
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (full_key(T::NAME, s.key), s.env, shown)
        })
        .collect()
}

pub(crate) fn full_key(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// Fields of `T`'s defaults that no setting declares, and declared settings the type refuses:
/// what a section's own test asserts to be empty, so the list and the struct stay in step.
pub fn undeclared<T: Section>() -> Vec<String> {
    let defaults = serde_json::to_value(T::default()).unwrap_or_default();
    let mut leaves = Vec::new();
    collect_leaves("", &defaults, &mut leaves);
    let mut problems: Vec<String> = leaves
        .into_iter()
        .filter(|leaf| !T::SETTINGS.iter().any(|s| s.key == leaf))
        .map(|leaf| format!("field '{leaf}' has no setting"))
        .collect();
    for setting in T::SETTINGS {
        let mut tree = serde_json::Map::new();
        let sample = match setting.kind {
            crate::Kind::Text => serde_json::json!("x"),
            crate::Kind::List | crate::Kind::Numbers => serde_json::json!([]),
            crate::Kind::Flag => serde_json::json!(true),
            crate::Kind::Whole | crate::Kind::Number => serde_json::json!(1),
        };
        insert_dotted(&mut tree, setting.key, sample);
        if let Err(e) = serde_json::from_value::<T>(serde_json::Value::Object(tree))
            && e.to_string().contains("unknown field")
        {
            problems.push(format!("setting '{}' is not a field: {e}", setting.key));
        }
    }
    problems
}

fn collect_leaves(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                collect_leaves(&full_key(prefix, k), v, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// Puts `value` at a dotted key (`topics.agent_events`) of a JSON object.
pub(crate) fn insert_dotted(
    tree: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: serde_json::Value,
) {
    match key.split_once('.') {
        None => {
            tree.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = tree
                .entry(head.to_owned())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if let serde_json::Value::Object(map) = child {
                insert_dotted(map, rest, value);
            }
        }
    }
}
