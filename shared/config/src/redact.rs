//! What may be shown of a value a user gave: URLs without their credentials (the `user:password@`
//! part, the query string, the fragment) and long text cut short. Used wherever configuration or
//! request input is echoed in an error or a log line.

/// `text` with, if it is a URL, its userinfo and query replaced by `***` and its fragment
/// dropped. A password with an unencoded `/` or `@` still counts as userinfo: everything before
/// the last `@` ahead of the query is.
pub fn url(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (before_query, query) = match rest.split_once('?') {
        Some((before, _)) => (before, "?***"),
        None => (rest, ""),
    };
    match before_query.rsplit_once('@') {
        Some((_, host_and_path)) => format!("{scheme}://***@{host_and_path}{query}"),
        None => format!("{scheme}://{before_query}{query}"),
    }
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
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("ééé", 3), "é… (4 more bytes)");
        assert_eq!(shorten(&"x".repeat(1000), 4), "xxxx… (996 more bytes)");
    }
}
