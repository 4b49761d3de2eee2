//! Bearer API keys for `/mcp`. Keys are compared in constant time and never logged.

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The configured API keys; empty means authentication is off.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<SecretString>);

impl ApiKeys {
    pub fn new(keys: Vec<SecretString>) -> Self {
        Self(keys)
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether an `Authorization` header value carries one of the keys. Every key is compared,
    /// so timing does not reveal which one matched or how much of it.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        let mut matched = subtle::Choice::from(0);
        for key in &self.0 {
            matched |= key.expose_secret().as_bytes().ct_eq(token.as_bytes());
        }
        bool::from(matched)
    }
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(vec![
            SecretString::from("k-one".to_owned()),
            SecretString::from("k-two".to_owned()),
        ])
    }

    #[test]
    fn accepts_any_configured_key_with_bearer_scheme() {
        assert!(keys().accepts(Some("Bearer k-one")));
        assert!(keys().accepts(Some("bearer k-two")));
    }

    #[test]
    fn rejects_missing_wrong_or_malformed_credentials() {
        assert!(!keys().accepts(None));
        assert!(!keys().accepts(Some("Bearer k-three")));
        assert!(!keys().accepts(Some("Bearer k-on")));
        assert!(!keys().accepts(Some("Basic k-one")));
        assert!(!keys().accepts(Some("k-one")));
        assert!(!keys().accepts(Some("Bearer ")));
    }
}
