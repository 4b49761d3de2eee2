//! Input limits and the checks that enforce them. Every check names the field it rejects.

use std::collections::HashSet;

use crate::agent::{Capability, ModelParameters};
use crate::error::{FieldError, ServiceError};

pub const MAX_NAME: usize = 100;
pub const MAX_DOMAIN: usize = 64;
pub const MAX_DESCRIPTION: usize = 2_000;
pub const MAX_INSTRUCTIONS: usize = 100_000;
pub const MAX_MODEL: usize = 128;
pub const MAX_CAPABILITIES: usize = 32;
pub const MAX_CAPABILITY_NAME: usize = 64;
pub const MAX_CAPABILITY_SCHEMA_BYTES: usize = 16 * 1024;
pub const MAX_KNOWLEDGE_SOURCES: usize = 32;
pub const MAX_KNOWLEDGE_SOURCE: usize = 2_048;
pub const MAX_CHANGE_SUMMARY: usize = 2_000;
pub const MAX_CREATED_BY: usize = 200;
pub const MAX_SEARCH_TEXT: usize = 200;
pub const MAX_MAX_TOKENS: u32 = 1_000_000;

/// Collects every problem in an input so the caller hears about all of them at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(field, reason));
    }

    pub fn add(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// Ok when nothing was found.
    ///
    /// # Errors
    /// `ServiceError::Invalid` with every problem collected.
    pub fn finish(self) -> Result<(), ServiceError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::Invalid(self.0))
        }
    }

    /// Checks a free-text field: trimmed, within `min..=max` characters, no control characters
    /// other than newlines and tabs. Returns the trimmed text.
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) -> String {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars < min {
            if min == 1 {
                self.push(field, "must not be empty");
            } else {
                self.push(field, format!("must be at least {min} characters"));
            }
        } else if chars > max {
            self.push(
                field,
                format!("must be at most {max} characters (got {chars})"),
            );
        } else if trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
        {
            self.push(field, "must not contain control characters");
        }
        trimmed.to_owned()
    }

    /// Checks an identifier-like field: letters, digits, `_`, `-`, `.`, `:` and `/` only.
    pub fn token(&mut self, field: &str, value: &str, max: usize) -> String {
        let text = self.text(field, value, 1, max);
        if text
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "_-.:/".contains(c)))
        {
            self.push(
                field,
                format!(
                    "'{}' may contain only letters, digits and _ - . : /",
                    text.escape_debug()
                ),
            );
        }
        text
    }

    pub fn parameters(&mut self, field: &str, p: &ModelParameters) {
        if let Some(t) = p.temperature
            && !(0.0..=2.0).contains(&t)
        {
            self.push(
                format!("{field}.temperature"),
                format!("must be between 0 and 2 (got {t})"),
            );
        }
        if let Some(t) = p.top_p
            && !(0.0..=1.0).contains(&t)
        {
            self.push(
                format!("{field}.top_p"),
                format!("must be between 0 and 1 (got {t})"),
            );
        }
        match p.max_tokens {
            Some(0) => self.push(format!("{field}.max_tokens"), "must be greater than 0"),
            Some(n) if n > MAX_MAX_TOKENS => self.push(
                format!("{field}.max_tokens"),
                format!("must be at most {MAX_MAX_TOKENS} (got {n})"),
            ),
            _ => {}
        }
    }

    /// Checks a capability list and returns it with names and descriptions trimmed.
    pub fn capabilities(&mut self, field: &str, caps: &[Capability]) -> Vec<Capability> {
        if caps.len() > MAX_CAPABILITIES {
            self.push(
                field,
                format!(
                    "at most {MAX_CAPABILITIES} capabilities (got {})",
                    caps.len()
                ),
            );
        }
        let mut seen = HashSet::new();
        caps.iter()
            .enumerate()
            .map(|(i, cap)| {
                let at = format!("{field}[{i}]");
                let name = self.text(&format!("{at}.name"), &cap.name, 1, MAX_CAPABILITY_NAME);
                if name
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                {
                    self.push(
                        format!("{at}.name"),
                        format!(
                            "'{}' may contain only letters, digits, '_' and '-'",
                            name.escape_debug()
                        ),
                    );
                } else if !name.is_empty() && !seen.insert(name.clone()) {
                    self.push(
                        format!("{at}.name"),
                        format!("'{name}' is used by another capability of this version"),
                    );
                }
                let description = self.text(
                    &format!("{at}.description"),
                    &cap.description,
                    0,
                    MAX_DESCRIPTION,
                );
                if let Some(schema) = &cap.parameters {
                    if !schema.is_object() {
                        self.push(format!("{at}.parameters"), "must be a JSON Schema object");
                    } else if schema.to_string().len() > MAX_CAPABILITY_SCHEMA_BYTES {
                        self.push(
                            format!("{at}.parameters"),
                            format!("must be at most {MAX_CAPABILITY_SCHEMA_BYTES} bytes of JSON"),
                        );
                    }
                }
                if let Some(e) = cap.effectiveness
                    && !(0.0..=1.0).contains(&e)
                {
                    self.push(
                        format!("{at}.effectiveness"),
                        format!("must be between 0 and 1 (got {e})"),
                    );
                }
                Capability {
                    name,
                    description,
                    ..cap.clone()
                }
            })
            .collect()
    }

    pub fn knowledge_sources(&mut self, field: &str, sources: &[String]) -> Vec<String> {
        if sources.len() > MAX_KNOWLEDGE_SOURCES {
            self.push(
                field,
                format!(
                    "at most {MAX_KNOWLEDGE_SOURCES} knowledge sources (got {})",
                    sources.len()
                ),
            );
        }
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| self.text(&format!("{field}[{i}]"), s, 1, MAX_KNOWLEDGE_SOURCE))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(name: &str) -> Capability {
        Capability {
            name: name.into(),
            description: String::new(),
            parameters: None,
            effectiveness: None,
            delegate_to: None,
        }
    }

    fn reasons(p: Problems) -> Vec<String> {
        match p.finish() {
            Err(ServiceError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn text_limits_and_trimming() {
        let mut p = Problems::default();
        assert_eq!(p.text("name", "  Ada  ", 1, 10), "Ada");
        p.text("name", "   ", 1, 10);
        p.text("description", &"x".repeat(11), 0, 10);
        p.text("name", "a\u{7}b", 1, 10);
        let r = reasons(p);
        assert_eq!(r[0], "name: must not be empty");
        assert_eq!(r[1], "description: must be at most 10 characters (got 11)");
        assert_eq!(r[2], "name: must not contain control characters");
    }

    #[test]
    fn parameter_ranges() {
        let mut p = Problems::default();
        p.parameters(
            "parameters",
            &ModelParameters {
                temperature: Some(2.5),
                top_p: Some(-0.1),
                max_tokens: Some(0),
            },
        );
        let r = reasons(p);
        assert_eq!(
            r,
            [
                "parameters.temperature: must be between 0 and 2 (got 2.5)",
                "parameters.top_p: must be between 0 and 1 (got -0.1)",
                "parameters.max_tokens: must be greater than 0",
            ]
        );
        let mut ok = Problems::default();
        ok.parameters(
            "parameters",
            &ModelParameters {
                temperature: Some(2.0),
                top_p: Some(0.0),
                max_tokens: Some(1),
            },
        );
        assert!(ok.finish().is_ok());
    }

    #[test]
    fn capability_names_are_unique_and_tool_safe() {
        let mut p = Problems::default();
        let mut bad_schema = cap("c");
        bad_schema.parameters = Some(serde_json::json!([1]));
        p.capabilities(
            "capabilities",
            &[cap("search"), cap("search"), cap("no spaces"), bad_schema],
        );
        let r = reasons(p);
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(
            r[0].starts_with("capabilities[1].name: 'search' is used"),
            "{r:?}"
        );
        assert!(r[1].starts_with("capabilities[2].name:"), "{r:?}");
        assert_eq!(
            r[2],
            "capabilities[3].parameters: must be a JSON Schema object"
        );
    }

    #[test]
    fn list_sizes_are_bounded() {
        let mut p = Problems::default();
        let caps: Vec<_> = (0..=MAX_CAPABILITIES)
            .map(|i| cap(&format!("c{i}")))
            .collect();
        p.capabilities("capabilities", &caps);
        p.knowledge_sources(
            "knowledge_sources",
            &vec!["s".into(); MAX_KNOWLEDGE_SOURCES + 1],
        );
        let r = reasons(p);
        assert!(r[0].starts_with("capabilities: at most 32"), "{r:?}");
        assert!(r[1].starts_with("knowledge_sources: at most 32"), "{r:?}");
    }
}
