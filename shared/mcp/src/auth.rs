//! Bearer API keys for `/mcp`. Keys are never logged, and a presented key is compared with each
//! configured one as SHA-256 digests in constant time, so neither which key matched nor how long
//! the keys are shows in the answer's timing. A key may carry a name (`alice=sk-...`): the
//! principal its requests act as (who deploys, who reviews); a bare key is named by its position
//! (`key-1`, `key-2`, ...).

use aop_core::principal::Principal;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A key below this length after `name=` is taken as a bare key that contains `=`.
const MIN_NAMED_KEY: usize = 8;

/// The configured API keys with the principal each stands for; empty turns authentication off.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<(Principal, [u8; 32])>);

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn new(keys: Vec<SecretString>) -> Self {
        Self(
            keys.into_iter()
                .enumerate()
                .map(|(i, key)| {
                    let (principal, key) = named(i, &key);
                    (principal, digest(key.expose_secret().as_bytes()))
                })
                .collect(),
        )
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The principal of the key an `Authorization` header value carries, if it carries one.
    /// Every key is compared, so timing does not reveal which one matched or how much of it.
    pub fn principal(&self, authorization: Option<&str>) -> Option<Principal> {
        let token = digest(authorization.and_then(bearer_token)?.as_bytes());
        let mut found = None;
        for (principal, key) in &self.0 {
            let matched: bool = key.ct_eq(&token).into();
            if matched && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found
    }

    #[cfg(test)]
    fn accepts(&self, authorization: Option<&str>) -> bool {
        self.principal(authorization).is_some()
    }
}

/// `name=key` with a plausible name and key, else a bare key named by its position.
fn named(index: usize, entry: &SecretString) -> (Principal, SecretString) {
    let text = entry.expose_secret();
    if let Some((name, key)) = text.split_once('=')
        && key.len() >= MIN_NAMED_KEY
        && !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.@".contains(c))
    {
        return (Principal::named(name), SecretString::from(key.to_owned()));
    }
    (
        Principal::named(&format!("key-{}", index + 1)),
        entry.clone(),
    )
}

pub(crate) fn bearer_token(header: &str) -> Option<&str> {
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
    fn a_named_key_acts_as_its_name_and_a_bare_one_as_its_position() {
        let keys = ApiKeys::new(vec![
            SecretString::from("alice=sk-alice-123".to_owned()),
            SecretString::from("c2stYmFyZQ==".to_owned()),
        ]);
        assert_eq!(
            keys.principal(Some("Bearer sk-alice-123")),
            Some(Principal::named("alice"))
        );
        assert_eq!(keys.principal(Some("Bearer alice=sk-alice-123")), None);
        assert_eq!(
            keys.principal(Some("Bearer c2stYmFyZQ==")),
            Some(Principal::named("key-2")),
            "padding is not a name"
        );
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
