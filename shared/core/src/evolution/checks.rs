//! Checks of an evaluation case: programmatic where possible (`equals`, `contains`,
//! `not_contains`, `regex`, `json_schema`, `max_chars`), a judge model where only a model can
//! tell. Each gives a score on 0..1 and one sentence of feedback the reflection model learns from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest piece of an answer quoted in feedback.
const QUOTE: usize = 120;

/// One check of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The answer, trimmed, is exactly `value`.
    Equals {
        value: String,
        #[serde(default)]
        ignore_case: bool,
    },
    /// The answer contains `value`.
    Contains {
        value: String,
        #[serde(default)]
        ignore_case: bool,
    },
    /// The answer does not contain `value`.
    NotContains {
        value: String,
        #[serde(default)]
        ignore_case: bool,
    },
    /// The answer matches the regular expression (Rust `regex` syntax).
    Regex { pattern: String },
    /// The answer, trimmed, parses as JSON and validates against the schema.
    JsonSchema { schema: serde_json::Value },
    /// The answer has at most `max` characters.
    MaxChars { max: usize },
    /// A judge model scores the answer against the rubric.
    Judge {
        rubric: String,
        /// Default: the run's judge model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
}

/// What a check made of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    pub score: f64,
    pub feedback: String,
}

impl CheckResult {
    fn pass(feedback: impl Into<String>) -> Self {
        Self {
            score: 1.0,
            feedback: feedback.into(),
        }
    }

    fn fail(feedback: impl Into<String>) -> Self {
        Self {
            score: 0.0,
            feedback: feedback.into(),
        }
    }
}

impl Check {
    /// Why the check cannot be used, if it cannot (a regex that does not compile, a JSON
    /// schema that is not one, an empty value).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Equals { value, .. }
            | Self::Contains { value, .. }
            | Self::NotContains { value, .. } => value
                .trim()
                .is_empty()
                .then(|| "value must not be empty".to_owned()),
            Self::Regex { pattern } => regex::Regex::new(pattern)
                .err()
                .map(|e| format!("pattern does not compile: {}", one_line(&e.to_string()))),
            Self::JsonSchema { schema } => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Some("schema must be a JSON Schema object".into());
                }
                jsonschema::validator_for(schema)
                    .err()
                    .map(|e| format!("schema is not a valid JSON Schema: {e}"))
            }
            Self::MaxChars { max } => (*max == 0).then(|| "max must be at least 1".to_owned()),
            Self::Judge { rubric, .. } => rubric
                .trim()
                .is_empty()
                .then(|| "rubric must not be empty".to_owned()),
        }
    }

    /// Whether a judge model must score it.
    pub fn needs_judge(&self) -> bool {
        matches!(self, Self::Judge { .. })
    }

    /// Scores an answer; `None` for a judge check, which needs a model.
    pub fn evaluate(&self, answer: &str) -> Option<CheckResult> {
        let fold = |text: &str, ignore_case: bool| {
            if ignore_case {
                text.to_lowercase()
            } else {
                text.to_owned()
            }
        };
        Some(match self {
            Self::Equals { value, ignore_case } => {
                if fold(answer.trim(), *ignore_case) == fold(value.trim(), *ignore_case) {
                    CheckResult::pass(format!("the answer is exactly `{}`", quote(value)))
                } else {
                    CheckResult::fail(format!(
                        "expected exactly `{}` and nothing else; got `{}`",
                        quote(value),
                        quote(answer.trim())
                    ))
                }
            }
            Self::Contains { value, ignore_case } => {
                if fold(answer, *ignore_case).contains(&fold(value, *ignore_case)) {
                    CheckResult::pass(format!("the answer contains `{}`", quote(value)))
                } else {
                    CheckResult::fail(format!(
                        "expected the answer to contain `{}`; it does not: `{}`",
                        quote(value),
                        quote(answer.trim())
                    ))
                }
            }
            Self::NotContains { value, ignore_case } => {
                if fold(answer, *ignore_case).contains(&fold(value, *ignore_case)) {
                    CheckResult::fail(format!(
                        "the answer must not contain `{}`; it does",
                        quote(value)
                    ))
                } else {
                    CheckResult::pass(format!("the answer avoids `{}`", quote(value)))
                }
            }
            Self::Regex { pattern } => match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(answer) => {
                    CheckResult::pass(format!("the answer matches /{pattern}/"))
                }
                Ok(_) => CheckResult::fail(format!(
                    "expected the answer to match /{pattern}/; got `{}`",
                    quote(answer.trim())
                )),
                Err(e) => CheckResult::fail(format!("the check's pattern does not compile: {e}")),
            },
            Self::JsonSchema { schema } => json_check(schema, answer),
            Self::MaxChars { max } => {
                let n = answer.trim().chars().count();
                if n <= *max {
                    CheckResult::pass(format!("{n} characters, within {max}"))
                } else {
                    CheckResult::fail(format!(
                        "the answer has {n} characters; at most {max} are allowed"
                    ))
                }
            }
            Self::Judge { .. } => return None,
        })
    }
}

/// What a schema asks for, in words: the top-level type and its keys. Clearer to a reflection
/// model than the schema itself.
fn shape(schema: &serde_json::Value) -> String {
    let kind = schema
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("value");
    let mut out = format!("a JSON {kind}");
    let keys: Vec<&str> = match schema.get("required").and_then(|r| r.as_array()) {
        Some(required) => required.iter().filter_map(|k| k.as_str()).collect(),
        None => schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default(),
    };
    if !keys.is_empty() {
        out.push_str(&format!(" with the keys {}", keys.join(", ")));
    }
    if schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
        out.push_str(" and no others");
    }
    out
}

fn json_check(schema: &serde_json::Value, answer: &str) -> CheckResult {
    let text = answer.trim();
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let hint = if text.starts_with("```") {
                "it is wrapped in a Markdown code fence; answer with the bare JSON"
            } else if text.contains('{') {
                "it has text around the JSON; answer with the JSON alone"
            } else {
                "it is prose"
            };
            return CheckResult::fail(format!(
                "expected only {}, nothing else; {hint}: `{}`",
                shape(schema),
                quote(text)
            ));
        }
    };
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => return CheckResult::fail(format!("the check's schema is invalid: {e}")),
    };
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        CheckResult::pass("the answer is JSON matching the schema")
    } else {
        CheckResult::fail(format!("expected {}: {}", shape(schema), errors.join("; ")))
    }
}

/// What a judge model is asked: the rubric, the input, a reference answer when there is one,
/// and the answer to grade; it replies with a JSON object `{"score", "feedback"}`.
pub fn judge_prompt(
    rubric: &str,
    input: &str,
    expected: Option<&str>,
    answer: &str,
) -> Vec<crate::llm::ChatMessage> {
    use crate::llm::ChatMessage;
    use crate::session::Role;
    let system = "You grade an AI assistant's answer against a rubric. Reply with only a JSON \
        object: {\"score\": a number from 0 (fails the rubric) to 1 (fully meets it), \
        \"feedback\": one sentence saying what is wrong or what is right}.";
    let mut user = format!("Rubric:\n{rubric}\n\nInput the assistant received:\n{input}\n");
    if let Some(expected) = expected {
        user.push_str(&format!("\nA reference answer:\n{expected}\n"));
    }
    user.push_str(&format!("\nAnswer to grade:\n{answer}\n"));
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, user),
    ]
}

/// The score and feedback of a judge's reply: a JSON object `{"score", "feedback"}`, read
/// leniently (a score out of 10 or 100 is scaled; a bare number is taken).
pub fn read_judgement(reply: &str) -> CheckResult {
    let object = reply
        .find('{')
        .zip(reply.rfind('}'))
        .filter(|(a, b)| a < b)
        .and_then(|(a, b)| serde_json::from_str::<serde_json::Value>(&reply[a..=b]).ok());
    let (score, feedback) = match &object {
        Some(o) => (
            o.get("score").and_then(|s| {
                s.as_f64()
                    .or_else(|| s.as_str().and_then(|t| t.trim().parse().ok()))
            }),
            o.get("feedback")
                .and_then(|f| f.as_str())
                .map(str::to_owned),
        ),
        None => (first_number(reply), None),
    };
    match score {
        Some(s) if s.is_finite() => {
            let s = if s > 10.0 {
                s / 100.0
            } else if s > 1.0 {
                s / 10.0
            } else {
                s
            };
            CheckResult {
                score: s.clamp(0.0, 1.0),
                feedback: feedback
                    .unwrap_or_else(|| "the judge gave no reason".into())
                    .chars()
                    .take(400)
                    .collect(),
            }
        }
        _ => CheckResult::fail(format!(
            "the judge's reply could not be read as a score: `{}`",
            quote(reply)
        )),
    }
}

fn first_number(text: &str) -> Option<f64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// At most [`QUOTE`] characters of `text`, on one line.
fn quote(text: &str) -> String {
    let one = one_line(text);
    let mut out: String = one.chars().take(QUOTE).collect();
    if one.chars().count() > QUOTE {
        out.push('…');
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The score of a case from its checks' results: the mean, and the failing checks' feedback.
pub fn combine(results: &[CheckResult]) -> CheckResult {
    if results.is_empty() {
        return CheckResult::fail("the case has no checks");
    }
    let score = results.iter().map(|r| r.score).sum::<f64>() / results.len() as f64;
    let failing: Vec<&str> = results
        .iter()
        .filter(|r| r.score < 1.0)
        .map(|r| r.feedback.as_str())
        .collect();
    CheckResult {
        score,
        feedback: if failing.is_empty() {
            "every check passed".into()
        } else {
            failing.join(" ")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programmatic_checks_score_and_say_why() {
        let eq = Check::Equals {
            value: "billing".into(),
            ignore_case: true,
        };
        assert_eq!(eq.evaluate(" Billing \n").unwrap().score, 1.0);
        let miss = eq.evaluate("It is a billing issue.").unwrap();
        assert_eq!(miss.score, 0.0);
        assert!(
            miss.feedback.starts_with("expected exactly `billing`"),
            "{}",
            miss.feedback
        );

        let re = Check::Regex {
            pattern: r"^Answer: \d+$".into(),
        };
        assert_eq!(re.evaluate("Answer: 42").unwrap().score, 1.0);
        assert!(
            re.evaluate("42")
                .unwrap()
                .feedback
                .contains("/^Answer: \\d+$/")
        );
        assert_eq!(
            Check::MaxChars { max: 5 }
                .evaluate("123456")
                .unwrap()
                .feedback,
            "the answer has 6 characters; at most 5 are allowed"
        );
        assert_eq!(
            Check::NotContains {
                value: "sorry".into(),
                ignore_case: true
            }
            .evaluate("Sorry!")
            .unwrap()
            .score,
            0.0
        );
        assert!(
            Check::Judge {
                rubric: "polite".into(),
                model: None
            }
            .evaluate("x")
            .is_none()
        );
    }

    #[test]
    fn json_schema_checks_explain_what_is_missing() {
        let check = Check::JsonSchema {
            schema: serde_json::json!({"type": "object", "required": ["total"],
                "properties": {"total": {"type": "number"}}}),
        };
        assert_eq!(check.evaluate(r#"{"total": 12.5}"#).unwrap().score, 1.0);
        let prose = check.evaluate("The total is 12.5").unwrap();
        assert_eq!(
            prose.feedback,
            "expected only a JSON object with the keys total, nothing else; it is prose: `The total is 12.5`"
        );
        let fenced = check.evaluate("```json\n{\"total\": 1}\n```").unwrap();
        assert!(
            fenced.feedback.contains("code fence"),
            "{}",
            fenced.feedback
        );
        let missing = check.evaluate(r#"{"sum": 12.5}"#).unwrap();
        assert_eq!(missing.score, 0.0);
        assert_eq!(
            missing.feedback,
            "expected a JSON object with the keys total: \"total\" is a required property"
        );
    }

    #[test]
    fn unusable_checks_are_named() {
        assert!(
            Check::Regex {
                pattern: "(unclosed".into()
            }
            .problem()
            .unwrap()
            .starts_with("pattern does not compile")
        );
        assert!(
            Check::JsonSchema {
                schema: serde_json::json!({"type": "no-such-type"})
            }
            .problem()
            .unwrap()
            .starts_with("schema is not a valid JSON Schema")
        );
        assert!(
            Check::JsonSchema {
                schema: serde_json::json!(3)
            }
            .problem()
            .is_some()
        );
        assert!(Check::MaxChars { max: 0 }.problem().is_some());
        let unknown =
            serde_json::from_value::<Check>(serde_json::json!({"kind": "regexp", "pattern": "x"}))
                .unwrap_err()
                .to_string();
        assert!(unknown.contains("unknown variant `regexp`"), "{unknown}");
    }

    #[test]
    fn judgements_are_read_leniently() {
        assert_eq!(
            read_judgement(r#"{"score": 0.8, "feedback": "good"}"#).score,
            0.8
        );
        assert_eq!(
            read_judgement(r#"Sure! {"score": 7, "feedback": "ok"}"#).score,
            0.7
        );
        assert_eq!(read_judgement("I'd give it 4").score, 0.4);
        assert_eq!(read_judgement("no idea").score, 0.0);
        let combined = combine(&[CheckResult::pass("a"), CheckResult::fail("expected x.")]);
        assert_eq!(
            (combined.score, combined.feedback.as_str()),
            (0.5, "expected x.")
        );
    }
}
