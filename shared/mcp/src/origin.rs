//! DNS-rebinding protection for the routes beside `/mcp` (`/health`, `/metrics`): the `Host` and
//! `Origin` rules rmcp applies to `/mcp`, with the same allow lists and the same meaning (a host
//! entry without a port takes any port; an origin entry may end in `:*`; an origin without a
//! port has its scheme's default), so a page a browser loads from another site can read none of
//! the endpoints.

use axum::http::{HeaderMap, Uri, header};

/// Host and port, lower-cased, IPv6 brackets removed.
#[derive(PartialEq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

fn authority(text: &str) -> Option<Authority> {
    let parsed = axum::http::uri::Authority::try_from(text.trim()).ok()?;
    Some(Authority {
        host: parsed.host().trim_matches(['[', ']']).to_ascii_lowercase(),
        port: parsed.port_u16(),
    })
}

/// `scheme://host[:port]`, or `None` for anything else (including `null`, handled apart).
fn origin(text: &str) -> Option<(String, Authority)> {
    let uri = Uri::try_from(text.trim()).ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    Some((scheme, authority(uri.authority()?.as_str())?))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn host_allowed(host: &Authority, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .filter_map(|a| authority(a))
            .any(|a| a.host == host.host && a.port.is_none_or(|port| host.port == Some(port)))
}

fn origin_allowed(given: &str, allowed: &[String]) -> bool {
    if given.trim().eq_ignore_ascii_case("null") {
        return allowed
            .iter()
            .any(|a| a.trim().eq_ignore_ascii_case("null"));
    }
    let Some((scheme, from)) = origin(given) else {
        return false;
    };
    allowed.iter().any(|entry| {
        let (entry, any_port) = match entry.trim().strip_suffix(":*") {
            Some(base) => (base, true),
            None => (entry.trim(), false),
        };
        let Some((a_scheme, a)) = origin(entry) else {
            return false;
        };
        let port_matches =
            any_port || a.port.is_none() || from.port.or_else(|| default_port(&scheme)) == a.port;
        a_scheme == scheme && a.host == from.host && port_matches
    })
}

/// Why a request's `Host` or `Origin` is refused, or `None` when both are acceptable.
pub(crate) fn refusal(
    uri: &Uri,
    headers: &HeaderMap,
    allowed_hosts: &[String],
    allowed_origins: &[String],
) -> Option<&'static str> {
    let host = match headers.get(header::HOST) {
        Some(value) => value.to_str().ok().and_then(authority),
        None => uri.authority().and_then(|a| authority(a.as_str())),
    };
    match host {
        None => return Some("the Host header is missing or malformed"),
        Some(host) if !host_allowed(&host, allowed_hosts) => {
            return Some("the Host header is not allowed");
        }
        Some(_) => {}
    }
    match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(given)) if origin_allowed(given, allowed_origins) => None,
        Some(_) => Some("the Origin header is not allowed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str, origin: Option<&str>) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        let hosts = ["localhost".to_owned(), "api.example.com:443".to_owned()];
        let origins = [
            "http://localhost:*".to_owned(),
            "https://app.example.com".to_owned(),
            "https://admin.example.com:8443".to_owned(),
        ];
        refusal(&Uri::from_static("/health"), &headers, &hosts, &origins)
    }

    #[test]
    fn hosts_match_by_name_and_by_port_when_the_entry_names_one() {
        assert_eq!(check("localhost:8000", None), None);
        assert_eq!(check("LOCALHOST", None), None);
        assert_eq!(check("api.example.com:443", None), None);
        assert!(check("api.example.com:8443", None).is_some());
        assert!(check("evil.example.net", None).is_some());
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        assert_eq!(check("localhost", Some("http://localhost:5173")), None);
        assert_eq!(check("localhost", Some("https://app.example.com")), None);
        assert_eq!(
            check("localhost", Some("https://admin.example.com:8443")),
            None
        );
        assert!(check("localhost", Some("https://admin.example.com")).is_some());
        assert!(check("localhost", Some("https://localhost:5173")).is_some());
        assert!(check("localhost", Some("https://evil.example.net")).is_some());
        assert!(check("localhost", Some("null")).is_some());
        assert!(check("localhost", Some("not an origin")).is_some());
    }
}
