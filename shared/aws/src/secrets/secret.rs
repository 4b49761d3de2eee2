//! One secret's content, parsed once when fetched and read key by key.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;
use serde_json::Value;

use super::SecretsError;

/// Well-known keys of the platform's secrets. See the [module docs](crate::secrets) for which
/// secret holds which.
pub mod keys {
    /// The OpenAI-compatible API key. Also the one key a plain-string secret answers to.
    pub const API_KEY: &str = "api_key";
    /// A user name (Neo4j, Kafka SASL/SCRAM).
    pub const USERNAME: &str = "username";
    /// A password (Neo4j, Kafka SASL/SCRAM).
    pub const PASSWORD: &str = "password";
    /// Optional connection URI (Neo4j).
    pub const URI: &str = "uri";
}

/// A secret's content: a JSON object of string values, or a plain string that stands for
/// [`keys::API_KEY`].
///
/// Values are only reachable as [`SecretString`]s; `Debug` shows the ARN, the version and the
/// key names, never a value.
pub struct Secret {
    arn: String,
    version_id: Option<String>,
    content: Content,
}

enum Content {
    Object(BTreeMap<String, Field>),
    Plain(SecretString),
}

enum Field {
    Text(SecretString),
    Null,
    /// A value of another JSON type, kept only by its type name for the error message.
    Other(&'static str),
}

impl Secret {
    /// Parses a secret's text as stored in Secrets Manager.
    ///
    /// Text whose first non-blank character is `{` must be a JSON object; its string values are
    /// the keys' values. Any other text is a plain secret: its whole text (trimmed) is the value
    /// of [`keys::API_KEY`], because API keys are commonly stored that way, and asking it for any
    /// other key is an error. Text starting with `{` that fails to parse is an error rather than
    /// a plain secret, so a broken JSON secret is never sent somewhere as an API key.
    ///
    /// # Errors
    /// [`SecretsError::Malformed`] for invalid JSON or empty text; the error gives the line and
    /// column, not the text.
    pub fn parse(
        arn: impl Into<String>,
        version_id: Option<String>,
        text: &str,
    ) -> Result<Self, SecretsError> {
        let arn = arn.into();
        let trimmed = text.trim();
        let content = if trimmed.starts_with('{') {
            // Parse into a Value, never a typed struct: serde's "invalid type" errors quote the
            // offending value, which here would be secret.
            let value: Value = serde_json::from_str(trimmed).map_err(|e| {
                SecretsError::malformed(
                    &arn,
                    format!(
                        "not valid JSON (error at line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                )
            })?;
            let Value::Object(map) = value else {
                return Err(SecretsError::malformed(&arn, "not a JSON object"));
            };
            Content::Object(
                map.into_iter()
                    .map(|(key, value)| (key, Field::from(value)))
                    .collect(),
            )
        } else if trimmed.is_empty() {
            return Err(SecretsError::malformed(&arn, "the secret string is empty"));
        } else {
            Content::Plain(SecretString::from(trimmed))
        };
        Ok(Self {
            arn,
            version_id,
            content,
        })
    }

    /// The ARN the secret was fetched by.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The Secrets Manager version id, to tell a rotated secret from the one before it.
    pub fn version_id(&self) -> Option<&str> {
        self.version_id.as_deref()
    }

    /// The value of a required key.
    ///
    /// # Errors
    /// [`SecretsError::MissingKey`] when the key is absent or null; [`SecretsError::Malformed`]
    /// when its value is not a string, or the secret is a plain string and `key` is not
    /// [`keys::API_KEY`]. Both name the ARN and the key.
    pub fn field(&self, key: &str) -> Result<SecretString, SecretsError> {
        self.optional_field(key)?
            .ok_or_else(|| match &self.content {
                Content::Plain(_) => SecretsError::malformed(
                    &self.arn,
                    format!(
                        "key \"{key}\" was asked for, but the secret is a plain string, not a JSON \
                         object; a plain string can only stand for \"{}\"",
                        keys::API_KEY
                    ),
                ),
                Content::Object(_) => SecretsError::MissingKey {
                    arn: self.arn.clone(),
                    key: key.to_owned(),
                },
            })
    }

    /// The value of an optional key: `None` when absent or null (a plain secret has only
    /// [`keys::API_KEY`]).
    ///
    /// # Errors
    /// [`SecretsError::Malformed`] when the value is present but not a string.
    pub fn optional_field(&self, key: &str) -> Result<Option<SecretString>, SecretsError> {
        match &self.content {
            Content::Plain(value) => Ok((key == keys::API_KEY).then(|| value.clone())),
            Content::Object(fields) => match fields.get(key) {
                None | Some(Field::Null) => Ok(None),
                Some(Field::Text(value)) => Ok(Some(value.clone())),
                Some(Field::Other(kind)) => Err(SecretsError::malformed(
                    &self.arn,
                    format!("key \"{key}\" is {kind}, not a string"),
                )),
            },
        }
    }
}

impl From<Value> for Field {
    fn from(value: Value) -> Self {
        match value {
            Value::String(text) => Field::Text(SecretString::from(text)),
            Value::Null => Field::Null,
            Value::Bool(_) => Field::Other("a boolean"),
            Value::Number(_) => Field::Other("a number"),
            Value::Array(_) => Field::Other("an array"),
            Value::Object(_) => Field::Other("an object"),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Secret");
        s.field("arn", &self.arn)
            .field("version_id", &self.version_id);
        match &self.content {
            Content::Object(fields) => s.field("keys", &fields.keys().collect::<Vec<_>>()),
            Content::Plain(_) => s.field("plain", &true),
        };
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const ARN: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aop/neo4j-AbCdEf";

    #[test]
    fn json_object_fields_are_read_by_key() {
        let s = Secret::parse(
            ARN,
            Some("v1".into()),
            r#"{"username":"neo4j","password":"pa55","uri":null}"#,
        )
        .unwrap();
        assert_eq!(s.field("username").unwrap().expose_secret(), "neo4j");
        assert_eq!(s.field("password").unwrap().expose_secret(), "pa55");
        assert!(s.optional_field("uri").unwrap().is_none());
        assert_eq!(s.version_id(), Some("v1"));
    }

    #[test]
    fn missing_key_names_key_and_arn() {
        let s = Secret::parse(ARN, None, r#"{"username":"neo4j"}"#).unwrap();
        let err = s.field("password").unwrap_err().to_string();
        assert!(err.contains("\"password\"") && err.contains(ARN), "{err}");
    }

    #[test]
    fn non_string_value_is_malformed_without_the_value() {
        let s = Secret::parse(ARN, None, r#"{"password":987654}"#).unwrap();
        let err = s.field("password").unwrap_err();
        assert!(matches!(err, SecretsError::Malformed { .. }));
        let text = err.to_string();
        assert!(text.contains("\"password\" is a number"), "{text}");
        assert!(!text.contains("987654"), "{text}");
    }

    #[test]
    fn broken_json_is_malformed_not_plain_and_hides_the_text() {
        let err = Secret::parse(ARN, None, r#"{"api_key": "sk-hidden"#).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("not valid JSON") && text.contains(ARN),
            "{text}"
        );
        assert!(!text.contains("sk-hidden"), "{text}");
        let err = Secret::parse(ARN, None, "  ").unwrap_err();
        assert!(err.to_string().contains("empty"));
    }

    #[test]
    fn plain_string_answers_only_to_api_key() {
        let s = Secret::parse(ARN, None, "sk-plain\n").unwrap();
        assert_eq!(s.field(keys::API_KEY).unwrap().expose_secret(), "sk-plain");
        assert!(s.optional_field(keys::URI).unwrap().is_none());
        let err = s.field(keys::PASSWORD).unwrap_err().to_string();
        assert!(
            err.contains("\"password\"") && err.contains("plain string"),
            "{err}"
        );
        assert!(!err.contains("sk-plain"));
    }

    #[test]
    fn debug_shows_keys_not_values() {
        let s = Secret::parse(ARN, None, r#"{"api_key":"sk-very-secret"}"#).unwrap();
        let debug = format!("{s:?} {:?}", s.field("api_key").unwrap());
        assert!(debug.contains("api_key") && debug.contains(ARN), "{debug}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        let plain = Secret::parse(ARN, None, "sk-very-secret").unwrap();
        assert!(!format!("{plain:?}").contains("sk-very-secret"));
    }
}
