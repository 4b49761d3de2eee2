//! Sorting failures into transient (retry) and permanent (report), keeping the status code,
//! `Retry-After` and the provider's message.

use std::time::Duration;

use async_openai::error::OpenAIError;

/// A non-2xx answer, captured before the client library parses it.
#[derive(Debug)]
pub(crate) struct HttpStatusError {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl std::fmt::Display for HttpStatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, provider_message(&self.body))
    }
}

impl std::error::Error for HttpStatusError {}

/// A failed attempt, classified.
#[derive(Debug)]
pub(crate) struct Failure {
    pub transient: bool,
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// `retry-after-ms` (OpenAI) or `Retry-After` in seconds; the HTTP-date form falls back to our
/// own backoff.
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    // Bounded: a gateway that asks for years must not make us wait (or overflow a Duration).
    const MAX: Duration = Duration::from_secs(3_600);
    let seconds = |s: f64| Duration::try_from_secs_f64(s).map_or(MAX, |d| d.min(MAX));
    number("retry-after-ms")
        .map(|ms| seconds(ms / 1000.0))
        .or_else(|| number("retry-after").map(seconds))
}

/// The human message in an error body of any OpenAI-compatible server.
pub(crate) fn provider_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let pick = |p: &str| v.pointer(p).and_then(|m| m.as_str()).map(str::to_owned);
        if let Some(m) = pick("/error/message")
            .or_else(|| pick("/message"))
            .or_else(|| pick("/detail"))
            .or_else(|| pick("/error"))
        {
            return m;
        }
    }
    body.chars().take(500).collect()
}

fn transient_status(status: u16, body: &str) -> bool {
    match status {
        // A 429 for an exhausted quota is a billing problem, not a rate limit.
        429 => !body.contains("insufficient_quota"),
        408 | 409 => true,
        s => s >= 500,
    }
}

pub(crate) fn classify(error: &OpenAIError) -> Failure {
    match error {
        OpenAIError::Boxed(inner) => match inner.downcast_ref::<HttpStatusError>() {
            Some(h) => Failure {
                transient: transient_status(h.status, &h.body),
                status: Some(h.status),
                retry_after: h.retry_after,
                message: match h.status {
                    // The provider's own text names the key (masked, but still part of it).
                    401 => "the LLM provider refused the API key".to_owned(),
                    403 => "the LLM provider refused access with this API key".to_owned(),
                    _ => provider_message(&h.body),
                },
            },
            None => Failure {
                transient: false,
                status: None,
                retry_after: None,
                message: inner.to_string(),
            },
        },
        OpenAIError::ApiError(api) => Failure {
            transient: transient_status(api.status_code.as_u16(), ""),
            status: Some(api.status_code.as_u16()),
            retry_after: None,
            message: match api.status_code.as_u16() {
                401 => "the LLM provider refused the API key".to_owned(),
                403 => "the LLM provider refused access with this API key".to_owned(),
                _ => api.api_error.message.clone(),
            },
        },
        OpenAIError::Reqwest(e) => Failure {
            transient: e.is_timeout() || e.is_connect() || e.is_request() || e.is_body(),
            status: e.status().map(|s| s.as_u16()),
            retry_after: None,
            message: if e.is_connect() {
                "cannot connect to the LLM endpoint".to_owned()
            } else if e.is_timeout() {
                "the LLM endpoint did not answer in time".to_owned()
            } else {
                e.to_string()
            },
        },
        OpenAIError::JSONDeserialize(e, body) => Failure {
            transient: false,
            status: None,
            retry_after: None,
            message: format!(
                "the answer does not parse ({e}): {}",
                body.chars().take(300).collect::<String>()
            ),
        },
        other => Failure {
            transient: false,
            status: None,
            retry_after: None,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_any_compatible_error_shape() {
        assert_eq!(
            provider_message(r#"{"error":{"message":"Incorrect API key provided"}}"#),
            "Incorrect API key provided"
        );
        assert_eq!(
            provider_message(r#"{"object":"error","message":"too long"}"#),
            "too long"
        );
        assert_eq!(provider_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(provider_message("Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient_refusals_are_not() {
        assert!(transient_status(429, r#"{"error":{"type":"requests"}}"#));
        assert!(!transient_status(
            429,
            r#"{"error":{"code":"insufficient_quota"}}"#
        ));
        assert!(transient_status(503, ""));
        assert!(!transient_status(401, ""));
        assert!(!transient_status(400, ""));
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(150)));
        let mut huge = reqwest::header::HeaderMap::new();
        huge.insert("retry-after", "1e20".parse().unwrap());
        assert_eq!(parse_retry_after(&huge), Some(Duration::from_secs(3_600)));
        let mut date = reqwest::header::HeaderMap::new();
        date.insert(
            "retry-after",
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&date), None);
    }
}
