//! Cursor pagination: opaque cursors that encode the last key a page returned.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::error::ServiceError;

/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Page size when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// An opaque position in a listing. It wraps the sort key of the last item returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    pub fn after(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    pub fn key(&self) -> &str {
        &self.0
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}", self.0))
    }

    /// Parses a cursor a previous page returned.
    ///
    /// # Errors
    /// `Invalid` naming `field` when the text is not a cursor this service issued.
    pub fn decode(field: &str, text: &str) -> Result<Self, ServiceError> {
        let bad = || ServiceError::invalid(field, "not a cursor returned by a previous page");
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let key = text.strip_prefix("v1:").ok_or_else(bad)?;
        if key.is_empty() || key.len() > 256 {
            return Err(bad());
        }
        Ok(Self(key.to_owned()))
    }
}

/// Where a page starts and how long it is, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<Cursor>,
    pub limit: u32,
}

impl PageRequest {
    /// Validates a raw cursor and limit.
    ///
    /// # Errors
    /// `Invalid` naming `cursor` or `limit`.
    pub fn parse(cursor: Option<&str>, limit: Option<u32>) -> Result<Self, ServiceError> {
        let limit = match limit {
            None => DEFAULT_PAGE_SIZE,
            Some(0) => return Err(ServiceError::invalid("limit", "must be at least 1")),
            Some(n) if n > MAX_PAGE_SIZE => {
                return Err(ServiceError::invalid(
                    "limit",
                    format!("must be at most {MAX_PAGE_SIZE} (got {n})"),
                ));
            }
            Some(n) => n,
        };
        let after = cursor
            .filter(|c| !c.trim().is_empty())
            .map(|c| Cursor::decode("cursor", c))
            .transpose()?;
        Ok(Self { after, limit })
    }
}

impl PageRequest {
    /// The cursor's key as a number (version or message number); 0 without a cursor.
    pub fn after_number(&self) -> u32 {
        self.after
            .as_ref()
            .and_then(|c| c.key().parse().ok())
            .unwrap_or(0)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            after: None,
            limit: DEFAULT_PAGE_SIZE,
        }
    }
}

/// One page of a listing, with the cursor of the next page when there is one.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass this back as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_foreign_text() {
        let c = Cursor::after("agt_123");
        assert_eq!(Cursor::decode("cursor", &c.encode()).unwrap(), c);
        let err = Cursor::decode("cursor", "garbage!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cursor"), "{err}");
        assert!(Cursor::decode("cursor", &URL_SAFE_NO_PAD.encode("v2:x")).is_err());
    }

    #[test]
    fn page_limits_are_bounded() {
        assert_eq!(
            PageRequest::parse(None, None).unwrap().limit,
            DEFAULT_PAGE_SIZE
        );
        let err = PageRequest::parse(None, Some(0)).unwrap_err().to_string();
        assert!(err.contains("limit"), "{err}");
        let err = PageRequest::parse(None, Some(MAX_PAGE_SIZE + 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 200"), "{err}");
    }
}
