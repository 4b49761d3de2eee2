//! The `server` settings: where the MCP endpoint listens, who may call it and how it answers.

use std::net::{IpAddr, Ipv4Addr};

use aop_config::{Kind, Problems, Section, Setting};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::Toolset;

/// The `server` section. `Debug` never shows the keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: IpAddr,
    pub port: u16,
    /// Bearer keys; none turns authentication off (loopback only).
    #[serde(skip_serializing)]
    pub api_keys: Vec<SecretString>,
    /// `Host` values accepted on `/mcp`; DNS-rebinding protection.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted on `/mcp`.
    pub allowed_origins: Vec<String>,
    /// Serve without MCP sessions, every request standing alone.
    pub stateless: bool,
    /// Answer with `application/json` instead of SSE where possible.
    pub json_response: bool,
    /// The toolsets offered (`agents`, `sessions`, `feedback`, `deployments`, `evolution`);
    /// all when empty.
    pub toolsets: Vec<String>,
    /// List each tool's output schema in `tools/list` (results carry structured content
    /// either way).
    pub output_schemas: bool,
    /// Connections open at once; the next is answered 503 and closed.
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body once its headers are in (408 after).
    pub body_timeout_secs: u64,
    /// Sessions (of the `initialize` era) open at once, all callers together.
    pub max_sessions: u32,
    /// Sessions open at once for one caller (API key).
    pub max_sessions_per_principal: u32,
    /// Seconds a session may sit idle before it is closed.
    pub session_idle_secs: u64,
    /// Scopes of named API keys: `name=scope scope` entries; a key not named has every scope.
    pub api_key_scopes: Vec<String>,
    /// The OAuth issuer whose bearer JWTs are accepted (`iss`); unset: API keys only.
    pub oauth_issuer: Option<String>,
    /// This server's resource URL, the tokens' required `aud` (RFC 8707).
    pub oauth_audience: Option<String>,
    /// The issuer's key set; `{issuer}/.well-known/jwks.json` when unset.
    pub oauth_jwks_url: Option<String>,
    /// Requests a minute per caller on `/mcp`; 0 turns the limit off.
    pub rate_limit_per_minute: u32,
    /// Requests a caller may make at once beyond its rate.
    pub rate_limit_burst: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8000,
            api_keys: Vec::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
            stateless: false,
            json_response: false,
            toolsets: Vec::new(),
            output_schemas: false,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            max_sessions: 1000,
            max_sessions_per_principal: 100,
            session_idle_secs: 120,
            api_key_scopes: Vec::new(),
            oauth_issuer: None,
            oauth_audience: None,
            oauth_jwks_url: None,
            rate_limit_per_minute: 6000,
            rate_limit_burst: 200,
        }
    }
}

impl ServerSettings {
    /// Whether bearer tokens from an OAuth issuer are accepted.
    pub fn oauth_enabled(&self) -> bool {
        self.oauth_issuer.is_some()
    }

    /// The configured toolsets; unknown names are refused when the configuration is checked.
    pub fn toolsets(&self) -> Vec<Toolset> {
        self.toolsets
            .iter()
            .filter_map(|n| Toolset::parse(n))
            .collect()
    }
}

#[cfg(feature = "server")]
impl ServerSettings {
    /// How the Router behaves with these settings.
    pub fn http_options(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> crate::HttpOptions {
        crate::HttpOptions {
            allowed_hosts: self.allowed_hosts.clone(),
            allowed_origins: self.allowed_origins.clone(),
            api_keys: self.api_keys.clone(),
            stateless: self.stateless,
            json_response: self.json_response,
            expose_metrics: true,
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
            sessions: crate::sessions::SessionLimits {
                max: usize::try_from(self.max_sessions).unwrap_or(usize::MAX),
                max_per_principal: usize::try_from(self.max_sessions_per_principal)
                    .unwrap_or(usize::MAX),
                idle: std::time::Duration::from_secs(self.session_idle_secs),
            },
            // Checked when the configuration was loaded.
            key_scopes: crate::scopes::parse_key_scopes(&self.api_key_scopes).unwrap_or_default(),
            oauth: self.oauth_config(),
            rate_limit: crate::RateLimit {
                per_minute: self.rate_limit_per_minute,
                burst: self.rate_limit_burst,
            },
            require_caller: false,
            shutdown,
        }
    }
}

#[cfg(feature = "server")]
impl ServerSettings {
    /// The OAuth settings, when an issuer is configured.
    pub fn oauth_config(&self) -> Option<crate::oauth::OAuthConfig> {
        let issuer = self.oauth_issuer.clone()?;
        Some(crate::oauth::OAuthConfig {
            jwks_url: self.oauth_jwks_url.clone().unwrap_or_else(|| {
                format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/'))
            }),
            audience: self.oauth_audience.clone().unwrap_or_default(),
            issuer,
            min_refetch: crate::oauth::REFETCH_AT_MOST_EVERY,
        })
    }
}

#[cfg(feature = "listen")]
impl ServerSettings {
    /// The connection limits of a listener with these settings.
    pub fn limits(&self) -> crate::listen::Limits {
        crate::listen::Limits {
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            ..crate::listen::Limits::default()
        }
    }
}

impl Section for ServerSettings {
    const NAME: &'static str = "server";
    const SETTINGS: &'static [Setting] = &[
        Setting::new("host", "MCP_SERVER_HOST", Kind::Text).expecting("an IP address to bind to"),
        Setting::new("port", "MCP_SERVER_PORT", Kind::Whole).expecting("a port number 0-65535"),
        Setting::secret("api_keys", "AOP_API_KEYS", Kind::List),
        Setting::new("allowed_hosts", "AOP_ALLOWED_HOSTS", Kind::List),
        Setting::new("allowed_origins", "AOP_ALLOWED_ORIGINS", Kind::List),
        Setting::new("stateless", "AOP_STATELESS", Kind::Flag),
        Setting::new("json_response", "AOP_JSON_RESPONSE", Kind::Flag),
        Setting::new("toolsets", "AOP_TOOLSETS", Kind::List),
        Setting::new("output_schemas", "AOP_OUTPUT_SCHEMAS", Kind::Flag),
        Setting::new("max_connections", "AOP_MAX_CONNECTIONS", Kind::Whole)
            .expecting("a number of connections, at least 1"),
        Setting::new(
            "header_timeout_secs",
            "AOP_HEADER_TIMEOUT_SECS",
            Kind::Whole,
        )
        .expecting("seconds, at least 1"),
        Setting::new("body_timeout_secs", "AOP_BODY_TIMEOUT_SECS", Kind::Whole)
            .expecting("seconds, at least 1"),
        Setting::new("max_sessions", "AOP_MAX_SESSIONS", Kind::Whole)
            .expecting("a number of sessions, at least 1"),
        Setting::new(
            "max_sessions_per_principal",
            "AOP_MAX_SESSIONS_PER_PRINCIPAL",
            Kind::Whole,
        )
        .expecting("a number of sessions, at least 1"),
        Setting::new("session_idle_secs", "AOP_SESSION_IDLE_SECS", Kind::Whole)
            .expecting("seconds, at least 1"),
        Setting::new("api_key_scopes", "AOP_API_KEY_SCOPES", Kind::List),
        Setting::new("oauth_issuer", "AOP_OAUTH_ISSUER", Kind::Text)
            .expecting("the issuer's URL, as in its tokens' iss"),
        Setting::new("oauth_audience", "AOP_OAUTH_AUDIENCE", Kind::Text)
            .expecting("this server's resource URL, such as https://mcp.example.com/mcp"),
        Setting::new("oauth_jwks_url", "AOP_OAUTH_JWKS_URL", Kind::Text)
            .expecting("the URL of the issuer's JWK set"),
        Setting::new(
            "rate_limit_per_minute",
            "AOP_RATE_LIMIT_PER_MINUTE",
            Kind::Whole,
        )
        .expecting("requests a minute per caller (0: no limit)"),
        Setting::new("rate_limit_burst", "AOP_RATE_LIMIT_BURST", Kind::Whole)
            .expecting("requests at once beyond the rate, at least 1"),
    ];

    fn check(&self, problems: &mut Problems) {
        if self.api_keys.is_empty() && !self.oauth_enabled() && !self.host.is_loopback() {
            problems.push(
                "host",
                "binding beyond loopback needs API keys (AOP_API_KEYS) or an OAuth issuer (AOP_OAUTH_ISSUER)",
            );
        }
        #[cfg(feature = "server")]
        if let Err(reason) = crate::scopes::parse_key_scopes(&self.api_key_scopes) {
            problems.push("api_key_scopes", reason);
        }
        match (&self.oauth_issuer, &self.oauth_audience) {
            (Some(_), None) => problems.push(
                "oauth_audience",
                "must be set with oauth_issuer: tokens are accepted only for this resource",
            ),
            (None, Some(_)) => problems.push("oauth_issuer", "must be set with oauth_audience"),
            _ => {}
        }
        for (field, url) in [
            ("oauth_issuer", &self.oauth_issuer),
            ("oauth_audience", &self.oauth_audience),
            ("oauth_jwks_url", &self.oauth_jwks_url),
        ] {
            if let Some(url) = url
                && !secure_url(url)
            {
                problems.push(field, "must be an https:// URL (http:// only on loopback)");
            }
        }
        for name in &self.toolsets {
            if Toolset::parse(name).is_none() {
                problems.push(
                    "toolsets",
                    format!(
                        "'{name}' is not a toolset; the toolsets are {}",
                        Toolset::names()
                    ),
                );
            }
        }
        problems.at_least("max_connections", self.max_connections, 1);
        problems.at_least("header_timeout_secs", self.header_timeout_secs, 1);
        problems.at_least("body_timeout_secs", self.body_timeout_secs, 1);
        problems.at_least("max_sessions", self.max_sessions, 1);
        problems.at_least(
            "max_sessions_per_principal",
            self.max_sessions_per_principal,
            1,
        );
        problems.at_least("session_idle_secs", self.session_idle_secs, 1);
        problems.at_least("rate_limit_burst", self.rate_limit_burst, 1);
        for origin in &self.allowed_origins {
            if !(origin == "null" || origin.contains("://")) {
                problems.push(
                    "allowed_origins",
                    format!("'{origin}' needs a scheme, such as https://{origin}"),
                );
            }
        }
    }
}

/// `https://`, or `http://` to a loopback host (a local issuer in development and tests).
fn secure_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_field_is_a_setting() {
        assert_eq!(
            aop_config::undeclared::<super::ServerSettings>(),
            Vec::<String>::new()
        );
    }
}
