//! What may be shown of a value a user gave: URLs without their credentials (the `user:password@`
//! part, the query string, the fragment) and long text cut short. Used wherever configuration or
//! request input is echoed in an error or a log line.

/// `text` with, if it is a URL (with or without its scheme), its userinfo and query replaced
/// by `***` and its fragment dropped. A password with an unencoded `/` or `@` still counts as
/// userinfo: everything before the last `@` ahead of the query is. Text that is no URL at all
/// (no `://`, no `user:password@`) is returned as it is.
pub fn url(text: &str) -> String {
    let is_scheme = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    };
    let (prefix, body) = match text.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => (Some(scheme), rest),
        _ => (None, text),
    };
    // Everything before the last `@` is userinfo: in a URL, or where it holds a `user:password`.
    let (body, userinfo) = match body.rfind('@') {
        Some(at) if prefix.is_some() || body[..at].contains(':') => (&body[at + 1..], "***@"),
        _ => (body, ""),
    };
    if prefix.is_none() && userinfo.is_empty() {
        return text.to_owned();
    }
    let body = body.split_once('#').map_or(body, |(before, _)| before);
    let (body, query) = match body.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (body, ""),
    };
    let prefix = prefix.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{prefix}{userinfo}{body}{query}")
}

/// A sentence with every word in it that is a URL or holds `user:password@` treated as
/// [`url`] treats it: for messages that may quote what a user wrote.
pub fn words(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") || word.contains('@') {
                url(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was left out.
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_never_show() {
        assert_eq!(url("bolt://neo:pw@db:7687"), "bolt://***@db:7687");
        assert_eq!(url("bolt://neo:p/w@d@db:7687/x"), "bolt://***@db:7687/x");
        assert_eq!(
            url("https://api.example.com/v1?api-key=SECRET#frag"),
            "https://api.example.com/v1?***"
        );
        assert_eq!(
            url("https://api.example.com/v1"),
            "https://api.example.com/v1"
        );
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("neo:pw@db:7687/x?k=v"), "***@db:7687/x?***");
        assert_eq!(url("alice@example.com"), "alice@example.com");
        assert_eq!(url("//a:pw@x-bolt://a:pw@y:1"), "***@y:1");
        assert_eq!(url("?bolt://neo:pw@db:7687"), "***@db:7687");
        assert_eq!(url("h#ttps://u:pw@llm/v1?k=v"), "***@llm/v1?***");
        assert_eq!(url("what? this"), "what? this");
    }

    #[test]
    fn sentences_keep_their_words_but_lose_credentials() {
        assert_eq!(
            words("'s://proxy:pass@llm/v1?key=abc' is not host:port"),
            "***@llm/v1?*** is not host:port"
        );
        assert_eq!(words("must be at least 1"), "must be at least 1");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("ééé", 3), "é… (4 more bytes)");
        assert_eq!(shorten(&"x".repeat(1000), 4), "xxxx… (996 more bytes)");
    }
}
