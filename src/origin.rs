//! Cross-site requests (SPEC, Limits): whether a request's `Origin` may change anything.
//!
//! A browser names the page a request comes from in `Origin` (`scheme://host[:port]`) on
//! every `POST`, `PUT` and `DELETE` it sends for a page of another site, form posts
//! included, and on every WebSocket handshake. The server's own page is served by the
//! server itself, so its requests name the host they are sent to: the REST port for
//! `fetch`, the same host on the WebSocket port for the chat. So a request is allowed when
//! it has no `Origin` (curl, websocat, a server-side client), when its `Origin` names the
//! host of its `Host` header (ports aside), or when the origin is listed in
//! `allowed_origins`. Everything else is refused with 607, before any other work.
//!
//! This is a leaf: strings in, a yes or no out. `http` and `ws::handshake` call
//! [`is_allowed`] with the headers they read; `config` uses [`normalize`].

/// `origin` as it is compared: lower-cased, without a trailing `/`; `None` unless it is
/// `http://` or `https://` followed by a host (and maybe a port) and nothing else.
pub fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().to_ascii_lowercase();
    let origin = origin.strip_suffix('/').unwrap_or(&origin);
    let (_, authority) = origin
        .strip_prefix("http://")
        .map(|rest| ("http", rest))
        .or_else(|| origin.strip_prefix("https://").map(|rest| ("https", rest)))?;
    let well_formed = !authority.is_empty()
        && !authority
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'));
    well_formed.then(|| origin.to_owned())
}

/// The host of `authority` (`host`, `host:port`, `[v6]`, `[v6]:port`), lower-cased.
fn host_of(authority: &str) -> String {
    let authority = authority.trim();
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.to_ascii_lowercase()
}

/// Whether a request with this `Origin` and `Host` may go on: no `Origin`, one on the
/// request's own host (any port), or one listed in `allowed` (normalised entries). An
/// `Origin` of `null` (a sandboxed frame, a local file) names no host: refused.
pub fn is_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(normal) = normalize(origin) else {
        return false;
    };
    if allowed.contains(&normal) {
        return true;
    }
    let authority = normal.split_once("://").map_or("", |(_, rest)| rest);
    host.is_some_and(|host| !host_of(host).is_empty() && host_of(host) == host_of(authority))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_or_refused() {
        assert_eq!(
            normalize("HTTPS://Chat.Example.org/").as_deref(),
            Some("https://chat.example.org")
        );
        assert_eq!(
            normalize("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        for bad in [
            "null",
            "chat.example.org",
            "ftp://a",
            "http://",
            "http://a/b",
            "http://u@a",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    /// SPEC, Limits: no `Origin` is curl or websocat; the same host on another port is the
    /// page's own WebSocket; another host is another site, unless listed.
    #[test]
    fn the_same_host_any_port_or_a_listed_origin_is_allowed() {
        let listed = ["https://chat.example.org".to_owned()];
        assert!(is_allowed(None, Some("127.0.0.1:8081"), &[]));
        assert!(is_allowed(
            Some("http://127.0.0.1:8080"),
            Some("127.0.0.1:8081"),
            &[]
        ));
        assert!(is_allowed(
            Some("http://Example.org"),
            Some("example.org:80"),
            &[]
        ));
        assert!(is_allowed(
            Some("http://[::1]:8080"),
            Some("[::1]:8081"),
            &[]
        ));
        assert!(!is_allowed(
            Some("http://localhost:8080"),
            Some("127.0.0.1:8080"),
            &[]
        ));
        assert!(!is_allowed(Some("http://evil.example"), None, &[]));
        assert!(!is_allowed(Some("null"), Some("127.0.0.1:8080"), &[]));
        assert!(is_allowed(
            Some("https://chat.example.org"),
            Some("api.example.org"),
            &listed
        ));
        assert!(!is_allowed(
            Some("http://chat.example.org"),
            Some("api.example.org"),
            &listed
        ));
    }
}
