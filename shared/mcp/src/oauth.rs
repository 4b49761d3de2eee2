//! The OAuth 2.1 resource server the MCP authorization spec asks for: bearer JWTs signed by the
//! issuer's keys (RS256 or ES256, fetched from its JWKS, cached, fetched again when a token names
//! a key not seen yet, so rotation needs no restart), checked for `iss`, `aud` (this server's
//! resource URL, RFC 8707), `exp` and `nbf`; the caller is the token's `sub` with the scopes of
//! its `scope` claim. The crypto is the `jsonwebtoken` crate's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aop_core::principal::Principal;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};

use crate::scopes::Scopes;

/// Keys are fetched again after this long even if every token's key is known.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// A token naming an unknown key fetches the keys at most this often (by default).
pub const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);
/// Deadline of one JWKS request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one JWKS fetch (transient failures only), with a doubling pause.
const FETCH_ATTEMPTS: u32 = 3;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;

/// Where tokens come from and whom they must be for.
#[derive(Clone, Debug)]
pub struct OAuthConfig {
    /// The authorization server (`iss`).
    pub issuer: String,
    /// This server's resource URL (`aud`), such as `https://mcp.example.com/mcp`.
    pub audience: String,
    /// The issuer's key set.
    pub jwks_url: String,
    /// How soon after a fetch a token naming an unknown key may fetch the keys again: new keys
    /// are found this fast, and unknown `kid`s cannot make every request a fetch.
    pub min_refetch: Duration,
}

impl OAuthConfig {
    /// The resource URL split into `scheme://authority` and its path.
    fn resource_parts(&self) -> (&str, &str) {
        let after_scheme = self.audience.find("://").map_or(0, |i| i + 3);
        let path_at = self.audience[after_scheme..]
            .find('/')
            .map_or(self.audience.len(), |i| after_scheme + i);
        self.audience.split_at(path_at)
    }

    /// The path this server serves its protected-resource metadata at (RFC 9728): the
    /// well-known path followed by the resource's path.
    pub fn metadata_path(&self) -> String {
        format!("{METADATA_PATH}{}", self.resource_parts().1)
    }

    /// The URL of this server's protected-resource metadata.
    pub fn metadata_url(&self) -> String {
        format!("{}{}", self.resource_parts().0, self.metadata_path())
    }

    /// The protected-resource metadata document.
    pub fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": self.audience,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": crate::scopes::Scope::ALL.map(crate::scopes::Scope::name),
            "resource_name": "Agent Orchestration Platform",
        })
    }
}

/// The well-known path of protected-resource metadata.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Who a valid token speaks for.
#[derive(Clone, Debug)]
pub struct TokenCaller {
    pub principal: Principal,
    pub scopes: Scopes,
}

/// Why a token was refused: said to the client in `WWW-Authenticate`, so it says nothing about
/// keys or the issuer's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token is signed with an algorithm this server does not accept (RS256, ES256)")]
    Algorithm,
    #[error("the token's signing key is not one of the issuer's")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another issuer or another resource")]
    WrongIssuerOrAudience,
    #[error("the token has no subject")]
    NoSubject,
    #[error("the issuer's keys cannot be fetched now")]
    KeysUnavailable,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

struct Keys {
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Instant,
}

/// Verifies bearer tokens against the issuer's keys. Cheap to share behind an `Arc`.
pub struct TokenVerifier {
    config: OAuthConfig,
    /// The client, or why it could not be set up (then no key can be fetched).
    http: Result<reqwest::Client, String>,
    keys: RwLock<Option<Keys>>,
    /// One fetch at a time; the others wait for its keys.
    fetching: Mutex<()>,
}

impl TokenVerifier {
    pub fn new(config: OAuthConfig) -> Self {
        // The process-wide TLS provider; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(FETCH_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client for the JWKS: {e}"));
        Self {
            config,
            http,
            keys: RwLock::new(None),
            fetching: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// The caller a token speaks for.
    ///
    /// # Errors
    /// Why the token is refused.
    pub async fn verify(&self, token: &str) -> Result<TokenCaller, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.unwrap_or_default();
        let (alg, key) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer | K::InvalidAudience | K::MissingRequiredClaim(_) => {
                    TokenError::WrongIssuerOrAudience
                }
                K::InvalidSignature => TokenError::Signature,
                K::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Malformed,
            }
        })?;
        let subject = data
            .claims
            .sub
            .filter(|s| !s.trim().is_empty())
            .ok_or(TokenError::NoSubject)?;
        Ok(TokenCaller {
            principal: Principal::named(&subject),
            scopes: Scopes::parse(data.claims.scope.as_deref().unwrap_or_default()),
        })
    }

    /// The key `kid` names, fetching the key set when it is stale or does not have it (at most
    /// every `min_refetch`).
    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), TokenError> {
        let lookup = |keys: &Option<Keys>| -> (Option<(Algorithm, DecodingKey)>, bool, bool) {
            match keys {
                None => (None, true, true),
                Some(k) => {
                    let age = k.fetched.elapsed();
                    (
                        k.by_kid.get(kid).cloned(),
                        age > KEYS_TTL,
                        age >= self.config.min_refetch,
                    )
                }
            }
        };
        let (found, stale, may_refetch) = lookup(&*self.keys.read().await);
        if let Some(key) = found.as_ref().filter(|_| !stale) {
            return Ok(key.clone());
        }
        if found.is_none() && !may_refetch {
            return Err(TokenError::UnknownKey);
        }
        let _one_at_a_time = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let (again, stale, may_refetch) = lookup(&*self.keys.read().await);
        if let Some(key) = again.as_ref().filter(|_| !stale) {
            return Ok(key.clone());
        }
        if again.is_none() && !may_refetch && !stale {
            return Err(TokenError::UnknownKey);
        }
        match self.fetch().await {
            Ok(fresh) => {
                let key = fresh.by_kid.get(kid).cloned();
                *self.keys.write().await = Some(fresh);
                key.ok_or(TokenError::UnknownKey)
            }
            // The keys known before still verify while the issuer is unreachable.
            Err(e) => {
                tracing::warn!(error = %e, jwks = %aop_config::redact::url(&self.config.jwks_url), "cannot fetch the issuer's keys");
                again.ok_or(TokenError::KeysUnavailable)
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let mut pause = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let result = async {
                let response = http
                    .get(&self.config.jwks_url)
                    .send()
                    .await
                    .map_err(|e| (true, e.without_url().to_string()))?;
                let status = response.status();
                if !status.is_success() {
                    return Err((
                        status.is_server_error() || status.as_u16() == 429,
                        format!("HTTP {status}"),
                    ));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| (true, e.without_url().to_string()))?;
                serde_json::from_slice::<JwkSet>(&body)
                    .map_err(|e| (false, format!("not a JWK set: {e}")))
            }
            .await;
            match result {
                Ok(set) => return Ok(usable(&set)),
                Err((true, e)) if attempt < FETCH_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "retrying the JWKS fetch");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }
}

/// The set's signing keys this server accepts (RS256 and ES256), by `kid`.
fn usable(set: &JwkSet) -> Keys {
    let by_kid = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p)
                    if p.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((jwk.common.key_id.clone().unwrap_or_default(), (alg, key)))
        })
        .collect();
    Keys {
        by_kid,
        fetched: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_sits_at_the_well_known_path_before_the_resource_path() {
        let config = OAuthConfig {
            issuer: "https://auth.example.com".into(),
            audience: "https://mcp.example.com/mcp".into(),
            jwks_url: "https://auth.example.com/jwks".into(),
            min_refetch: REFETCH_AT_MOST_EVERY,
        };
        assert_eq!(
            config.metadata_url(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            config.metadata_path(),
            "/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(config.metadata()["resource"], "https://mcp.example.com/mcp");
    }
}
