//! Reading sections from their layers: defaults < config file < environment < flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::section::{Kind, Problems, Section, Setting, full_key, insert_dotted};

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Values given on the command line, by full key. They win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides(Vec<(&'static str, &'static str, String)>);

impl Overrides {
    /// Sets `key` (a `config.yaml` key such as `server.port`) from `flag`.
    pub fn set(&mut self, key: &'static str, flag: &'static str, value: impl Into<String>) {
        self.0.push((key, flag, value.into()));
    }
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// What was read for one setting: for problems found after its section was built.
struct Seen {
    text: Option<String>,
    origin: Origin,
    setting: Setting,
}

/// Reads sections from the layers and collects every problem.
pub struct Loader {
    file: Option<(PathBuf, BTreeMap<String, String>)>,
    env: BTreeMap<String, String>,
    overrides: Overrides,
    seen: BTreeMap<String, Seen>,
    errors: Vec<String>,
}

impl Loader {
    /// Layers from `env` (standing for the process environment), the config file (`file`, else
    /// the one `AOP_CONFIG` names, else `./config.yaml` when it exists) and `overrides`.
    pub fn new(file: Option<&Path>, env: BTreeMap<String, String>, overrides: Overrides) -> Self {
        let mut errors = Vec::new();
        let named = file.map(Path::to_path_buf).or_else(|| {
            env.get("AOP_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let path = named.or_else(|| Some(PathBuf::from("config.yaml")).filter(|p| p.is_file()));
        let file = path
            .and_then(|path| read_file(&path, &mut errors).map(|values| (path.clone(), values)));
        Self {
            file,
            env,
            overrides,
            seen: BTreeMap::new(),
            errors,
        }
    }

    /// Reads section `T`. Problems are collected; where a value is unusable, the default stands
    /// in so the other sections can still be checked.
    pub fn section<T: Section>(&mut self) -> T {
        let mut tree = serde_json::Map::new();
        for setting in T::SETTINGS {
            let key = full_key(T::NAME, setting.key);
            let given = self.given(&key, setting);
            let seen = Seen {
                text: given.as_ref().map(|(text, _)| text.clone()),
                origin: given
                    .as_ref()
                    .map_or(Origin::Default, |(_, origin)| origin.clone()),
                setting: *setting,
            };
            self.seen.insert(key.clone(), seen);
            let Some((text, _)) = given else { continue };
            match coerce(setting.kind, &text) {
                Ok(Some(value)) => insert_dotted(&mut tree, setting.key, value),
                Ok(None) => {}
                Err(()) => self.problem(&key, format!("must be {}", setting.expects())),
            }
        }
        let parsed = match serde_path_to_error::deserialize::<_, T>(Value::Object(tree)) {
            Ok(parsed) => parsed,
            Err(e) => {
                let path = e.path().to_string();
                let setting = T::SETTINGS
                    .iter()
                    .find(|s| path == s.key || path.starts_with(&format!("{}[", s.key)));
                match setting {
                    Some(s) => {
                        let reason = format!("must be {}", s.expects());
                        self.problem(&full_key(T::NAME, s.key), reason);
                    }
                    None => self.errors.push(format!(
                        "{}: {}",
                        if T::NAME.is_empty() {
                            "settings"
                        } else {
                            T::NAME
                        },
                        e.into_inner()
                    )),
                }
                T::default()
            }
        };
        let mut problems = Problems::default();
        parsed.check(&mut problems);
        for (key, reason) in problems.0 {
            self.problem(&full_key(T::NAME, &key), reason);
        }
        parsed
    }

    /// Records a problem with a setting read before: `key (VAR, from origin): reason (got '…')`.
    pub fn problem(&mut self, key: &str, reason: impl fmt::Display) {
        // A reason may quote the value: no credentials, and not too much of it.
        let reason =
            crate::redact::shorten(&crate::redact::words(&reason.to_string()), 600).into_owned();
        let line = match self.seen.get(key) {
            Some(seen) => {
                let var = seen.setting.env;
                let origin = &seen.origin;
                match &seen.text {
                    Some(text) if !seen.setting.secret => {
                        format!(
                            "{key} ({var}, from {origin}): {reason} (got '{}')",
                            shown(text.trim())
                        )
                    }
                    _ => format!("{key} ({var}, from {origin}): {reason}"),
                }
            }
            None => format!("{key}: {reason}"),
        };
        self.errors.push(line);
    }

    /// Whether the setting was given anywhere (and not empty).
    pub fn is_set(&self, key: &str) -> bool {
        self.seen
            .get(key)
            .and_then(|s| s.text.as_deref())
            .is_some_and(|t| !t.trim().is_empty())
    }

    /// Ends loading: settings in the file that no section claimed are problems too.
    ///
    /// # Errors
    /// `ConfigError` listing every problem found.
    pub fn finish(mut self) -> Result<(), ConfigError> {
        if let Some((path, values)) = &self.file {
            for key in values.keys() {
                if !self.seen.contains_key(key) {
                    self.errors.push(format!(
                        "config file {}: unknown setting '{}'",
                        path.display(),
                        shown(key)
                    ));
                }
            }
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }

    /// The text given for a setting and where, by precedence: flag, environment, file.
    fn given(&self, key: &str, setting: &Setting) -> Option<(String, Origin)> {
        if let Some((_, flag, value)) = self.overrides.0.iter().rev().find(|(k, _, _)| *k == key) {
            return Some((value.clone(), Origin::Flag(flag)));
        }
        if let Some(value) = self.env.get(setting.env) {
            return Some((value.clone(), Origin::Env(setting.env)));
        }
        let (path, values) = self.file.as_ref()?;
        values
            .get(key)
            .map(|value| (value.clone(), Origin::File(path.clone())))
    }
}

/// The value a setting's text stands for; `None` when the text leaves the setting unset.
fn coerce(kind: Kind, text: &str) -> Result<Option<Value>, ()> {
    let text = text.trim();
    match kind {
        Kind::List => Ok(Some(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ))),
        Kind::Numbers => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<f64>().ok().filter(|n| n.is_finite()).map(number))
            .collect::<Option<Vec<_>>>()
            .map(|items| Some(Value::Array(items)))
            .ok_or(()),
        _ if text.is_empty() => Ok(None),
        Kind::Text => Ok(Some(Value::String(text.to_owned()))),
        Kind::Flag => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(Value::Bool(true))),
            "false" | "0" | "no" | "off" => Ok(Some(Value::Bool(false))),
            _ => Err(()),
        },
        Kind::Whole => text
            .parse::<i64>()
            .map(|n| Some(Value::from(n)))
            .or_else(|_| text.parse::<u64>().map(|n| Some(Value::from(n))))
            .map_err(|_| ()),
        Kind::Number => text
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(|n| Some(Value::from(n)))
            .ok_or(()),
    }
}

/// A number as JSON: whole numbers stay whole, so they deserialize into integer fields.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

/// The file's settings as dotted keys and text; sequences become comma-separated lists.
fn read_file(path: &Path, errors: &mut Vec<String>) -> Option<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("config file {}: cannot read: {e}", path.display()));
            return None;
        }
    };
    let doc: serde_yaml_ng::Value = match serde_yaml_ng::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!(
                "config file {}: not valid YAML: {}",
                path.display(),
                shown(&e.to_string())
            ));
            return None;
        }
    };
    let mut flat = BTreeMap::new();
    flatten("", &doc, &mut flat, errors, path);
    Some(flat)
}

/// Input as an error may echo it: without credentials, and short.
fn shown(text: &str) -> String {
    crate::redact::shorten(&crate::redact::words(text), 200).into_owned()
}

fn flatten(
    prefix: &str,
    value: &serde_yaml_ng::Value,
    out: &mut BTreeMap<String, String>,
    errors: &mut Vec<String>,
    path: &Path,
) {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::Mapping(map) => {
            for (k, v) in map {
                let Some(k) = k.as_str() else {
                    errors.push(format!(
                        "config file {}: keys must be strings",
                        path.display()
                    ));
                    continue;
                };
                flatten(&full_key(prefix, k), v, out, errors, path);
            }
        }
        Yaml::Null if prefix.is_empty() => {}
        Yaml::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        Yaml::Sequence(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            if parts.len() != items.len() {
                errors.push(format!(
                    "config file {}: {}: list items must be plain values",
                    path.display(),
                    shown(prefix)
                ));
            }
            out.insert(prefix.to_owned(), parts.join(","));
        }
        other => match scalar(other) {
            Some(s) => {
                out.insert(prefix.to_owned(), s);
            }
            None => errors.push(format!(
                "config file {}: {}: unsupported value",
                path.display(),
                shown(prefix)
            )),
        },
    }
}

fn scalar(value: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        port: u16,
        names: Vec<String>,
        on: bool,
        #[serde(skip_serializing)]
        token: Option<secrecy::SecretString>,
        nested: Nested,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        ratio: f64,
    }

    impl Default for Nested {
        fn default() -> Self {
            Self { ratio: 0.5 }
        }
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                port: 8000,
                names: vec!["a".into()],
                on: false,
                token: None,
                nested: Nested::default(),
            }
        }
    }

    impl Section for Demo {
        const NAME: &'static str = "demo";
        const SETTINGS: &'static [Setting] = &[
            Setting::new("port", "DEMO_PORT", Kind::Whole).expecting("a port number 0-65535"),
            Setting::new("names", "DEMO_NAMES", Kind::List),
            Setting::new("on", "DEMO_ON", Kind::Flag),
            Setting::secret("token", "DEMO_TOKEN", Kind::Text),
            Setting::new("nested.ratio", "DEMO_RATIO", Kind::Number),
        ];

        fn check(&self, problems: &mut Problems) {
            if self.nested.ratio > 1.0 {
                problems.push("nested.ratio", "must be at most 1");
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "demo:\n  port: 9001\n  names: [x, y]\n").unwrap();
        let mut loader = Loader::new(Some(&path), env(&[]), Overrides::default());
        let demo: Demo = loader.section();
        loader.finish().unwrap();
        assert_eq!(
            (demo.port, demo.names.clone()),
            (9001, vec!["x".into(), "y".into()])
        );
        assert!(
            (demo.nested.ratio - 0.5).abs() < f64::EPSILON,
            "default kept"
        );

        let mut flags = Overrides::default();
        flags.set("demo.port", "--port", "9003");
        let mut loader = Loader::new(
            Some(&path),
            env(&[
                ("DEMO_PORT", "9002"),
                ("DEMO_ON", "yes"),
                ("DEMO_RATIO", "0.25"),
            ]),
            flags,
        );
        let demo: Demo = loader.section();
        loader.finish().unwrap();
        assert_eq!(demo.port, 9003, "a flag beats the environment");
        assert!(demo.on);
        assert!((demo.nested.ratio - 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn every_problem_names_its_setting_source_and_value_but_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "demo:\n  prot: 1\n").unwrap();
        let mut loader = Loader::new(
            Some(&path),
            env(&[
                ("DEMO_PORT", "eighty"),
                ("DEMO_ON", "maybe"),
                ("DEMO_RATIO", "2"),
                ("DEMO_TOKEN", "sk-hidden"),
            ]),
            Overrides::default(),
        );
        let _: Demo = loader.section();
        loader.problem("demo.token", "was refused");
        let err = loader.finish().unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 5, "{text}");
        assert!(text.contains("demo.port (DEMO_PORT, from environment variable DEMO_PORT): must be a port number 0-65535 (got 'eighty')"), "{text}");
        assert!(text.contains("demo.on (DEMO_ON, from environment variable DEMO_ON): must be true or false (got 'maybe')"), "{text}");
        assert!(text.contains("demo.nested.ratio (DEMO_RATIO, from environment variable DEMO_RATIO): must be at most 1 (got '2')"), "{text}");
        assert!(text.contains("unknown setting 'demo.prot'"), "{text}");
        assert!(
            text.contains(
                "demo.token (DEMO_TOKEN, from environment variable DEMO_TOKEN): was refused"
            ),
            "{text}"
        );
        assert!(!text.contains("sk-hidden"), "{text}");
    }

    #[test]
    fn out_of_range_values_are_named_too() {
        let mut loader = Loader::new(None, env(&[("DEMO_PORT", "70000")]), Overrides::default());
        let demo: Demo = loader.section();
        assert_eq!(demo.port, 8000, "the default stands in");
        let text = loader.finish().unwrap_err().to_string();
        assert!(text.contains("demo.port (DEMO_PORT, from environment variable DEMO_PORT): must be a port number 0-65535 (got '70000')"), "{text}");
    }

    #[test]
    fn the_settings_list_matches_the_struct() {
        assert!(
            crate::undeclared::<Demo>().is_empty(),
            "{:?}",
            crate::undeclared::<Demo>()
        );
    }

    #[test]
    fn help_shows_defaults_but_not_secrets() {
        let lines = crate::help_lines::<Demo>();
        assert!(lines.contains(&("demo.port".into(), "DEMO_PORT", "8000".into())));
        assert!(lines.contains(&("demo.names".into(), "DEMO_NAMES", "a".into())));
        assert!(lines.contains(&("demo.token".into(), "DEMO_TOKEN", String::new())));
        assert!(lines.contains(&("demo.nested.ratio".into(), "DEMO_RATIO", "0.5".into())));
    }
}
