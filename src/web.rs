//! The web client: one page (`web/index.html`, plain HTML, CSS and JavaScript) built into
//! the binary at compile time, so there is no build step and nothing to deploy beside it.
//!
//! The page needs a few facts about the server that serves it: the WebSocket listener's
//! port (it has one of its own) and the limits the server checks input against, so that
//! the page can say what is wrong before it sends anything. None of them is copied into the
//! page by hand: [`page`] writes one [`PageSettings`] into it as JSON, in
//! `<script id="server-settings" type="application/json">`, which the page reads with
//! `JSON.parse`. The server still checks everything itself; the page only asks earlier.
//!
//! The page's script and style are inline (one file), so its Content-Security-Policy lets
//! them run by a nonce, fresh for every response ([`with_nonce`],
//! [`content_security_policy`]): nothing else on the page, or framing it, can run.

use serde::Serialize;

/// The page as written, with the settings placeholder still in it.
const TEMPLATE: &str = include_str!("../web/index.html");

/// Where the settings go: the whole content of the page's `server-settings` script.
const SETTINGS_PLACEHOLDER: &str = "__SERVER_SETTINGS__";

/// What the page is told about its server. The field names are the names the page's
/// script reads, so renaming one is a change to the page too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageSettings {
    /// The port of the WebSocket listener (SPEC: it listens on a port of its own).
    pub ws_port: u16,
    /// `max_message_bytes`: a chat frame larger than this closes the socket with 1009.
    pub max_message_bytes: usize,
    /// The longest name a socket may join with, in characters.
    pub max_name_chars: usize,
    /// The longest colour a socket may join with, in characters.
    pub max_color_chars: usize,
    /// The shortest room title, in characters after trimming.
    pub min_title_chars: usize,
    /// The longest room title, in characters after trimming.
    pub max_title_chars: usize,
    /// The longest room description, in characters.
    pub max_description_chars: usize,
    /// The shortest password of a private or hidden room, in characters.
    pub min_password_chars: usize,
    /// The longest password, in UTF-8 bytes (bcrypt reads no more than 72).
    pub max_password_bytes: usize,
}

impl PageSettings {
    /// The settings of a server whose WebSocket listener is on `ws_port`, taken from the
    /// constants the server itself validates with.
    pub fn for_server(ws_port: u16, max_message_bytes: usize) -> PageSettings {
        use crate::rooms::{
            MAX_DESCRIPTION_CHARS, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, TITLE_CHARS,
        };
        PageSettings {
            ws_port,
            max_message_bytes,
            max_name_chars: crate::event::MAX_NAME_CHARS,
            max_color_chars: crate::event::MAX_COLOR_CHARS,
            min_title_chars: *TITLE_CHARS.start(),
            max_title_chars: *TITLE_CHARS.end(),
            max_description_chars: MAX_DESCRIPTION_CHARS,
            min_password_chars: MIN_PASSWORD_CHARS,
            max_password_bytes: MAX_PASSWORD_BYTES,
        }
    }
}

/// Where each response's nonce goes: the `nonce` attribute of the page's script and style.
const NONCE_PLACEHOLDER: &str = "__CSP_NONCE__";

/// A fresh nonce for one response: 16 random bytes from the OS, hex-encoded.
pub fn nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `page` with `nonce` on its script and style.
pub fn with_nonce(page: &str, nonce: &str) -> String {
    page.replace(NONCE_PLACEHOLDER, nonce)
}

/// The page's Content-Security-Policy (SPEC, Limits): its own script and style only (by
/// `nonce`, fresh for each response: the page is one file whose script and style are
/// inline), requests to its own REST address (`'self'`) and to the WebSocket listener on
/// the same host (`host`, the request's `Host` header, port aside) and `ws_port`; no
/// plugins, no base URL, no framing by any site. A `Host` that is not a plain host name or
/// address names no WebSocket address (the page then cannot chat, but nothing odd reaches
/// the header).
pub fn content_security_policy(nonce: &str, host: Option<&str>, ws_port: u16) -> String {
    let sockets = host
        .and_then(plain_host)
        .map(|host| format!(" ws://{host}:{ws_port} wss://{host}:{ws_port}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'{sockets}; img-src 'self' data:; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The host of a `Host` header value without its port: a DNS name, an IPv4 address or a
/// bracketed IPv6 address, made only of the characters those use; `None` otherwise.
fn plain_host(host: &str) -> Option<&str> {
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host.split(':').next()?,
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    (!name.is_empty() && name.chars().all(allowed)).then_some(name)
}

/// The page for a server with these settings.
pub fn page(settings: &PageSettings) -> String {
    let json = serde_json::to_string(settings)
        .expect("PageSettings, a struct of numbers, always serialises");
    TEMPLATE.replace(SETTINGS_PLACEHOLDER, &script_safe(&json))
}

/// JSON that can sit inside a `<script>` element. The HTML parser ends a script at the
/// first `</script`, whatever the JSON around it means, so no `<` may appear: `\u003c` is
/// the same character to `JSON.parse` and no tag at all to the HTML parser. (`<` can only
/// occur inside a JSON string, where the escape is valid.)
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const OPEN: &str = r#"<script id="server-settings" type="application/json">"#;

    fn settings() -> PageSettings {
        PageSettings {
            ws_port: 9999,
            max_message_bytes: 4096,
            max_name_chars: 32,
            max_color_chars: 32,
            min_title_chars: 2,
            max_title_chars: 70,
            max_description_chars: 70,
            min_password_chars: 8,
            max_password_bytes: 72,
        }
    }

    /// The text of the page's settings script, as the browser would hand it to JSON.parse.
    fn settings_script(page: &str) -> &str {
        let start = page
            .find(OPEN)
            .expect("the page has a server-settings script")
            + OPEN.len();
        let length = page[start..]
            .find("</script>")
            .expect("the script is closed");
        &page[start..start + length]
    }

    #[test]
    fn the_settings_are_written_into_the_page_as_json() {
        let page = page(&settings());
        assert!(!page.contains(SETTINGS_PLACEHOLDER));
        assert_eq!(page.matches(OPEN).count(), 1);
        let written: Value = serde_json::from_str(settings_script(&page)).unwrap();
        assert_eq!(
            written,
            json!({
                "ws_port": 9999,
                "max_message_bytes": 4096,
                "max_name_chars": 32,
                "max_color_chars": 32,
                "min_title_chars": 2,
                "max_title_chars": 70,
                "max_description_chars": 70,
                "min_password_chars": 8,
                "max_password_bytes": 72,
            })
        );
    }

    /// SPEC, Limits: only the page's own script and style run, it talks to its own REST
    /// and WebSocket addresses only, and no site frames it.
    #[test]
    fn the_policy_names_the_nonce_and_the_websocket_address_and_forbids_framing() {
        let policy = content_security_policy("abc", Some("127.0.0.1:8080"), 8081);
        assert_eq!(
            policy,
            "default-src 'none'; script-src 'nonce-abc'; style-src 'nonce-abc'; \
             connect-src 'self' ws://127.0.0.1:8081 wss://127.0.0.1:8081; img-src 'self' data:; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        let v6 = content_security_policy("abc", Some("[::1]:8080"), 9);
        assert!(
            v6.contains("connect-src 'self' ws://[::1]:9 wss://[::1]:9;"),
            "{v6}"
        );
        for odd in [
            None,
            Some(""),
            Some("a b"),
            Some("x;script-src *"),
            Some("[::1"),
        ] {
            let policy = content_security_policy("abc", odd, 9);
            assert!(policy.contains("connect-src 'self'; "), "{odd:?}: {policy}");
        }
    }

    #[test]
    fn each_nonce_is_new_and_goes_on_the_script_and_the_style() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let page = with_nonce(&page(&settings()), &a);
        assert!(!page.contains(NONCE_PLACEHOLDER));
        assert!(page.contains(&format!("<style nonce=\"{a}\">")));
        assert!(page.contains(&format!("<script nonce=\"{a}\">")));
    }

    #[test]
    fn a_less_than_sign_cannot_close_the_script() {
        let value = json!({"note": "</script><script>alert(1)</script> <!-- a < b"});
        let safe = script_safe(&value.to_string());
        assert!(!safe.contains('<'), "{safe}");
        assert_eq!(serde_json::from_str::<Value>(&safe).unwrap(), value);
    }
}
