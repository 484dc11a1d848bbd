//! The web client: one page (`web/index.html`, plain HTML, CSS and JavaScript) built into
//! the binary at compile time, so there is no build step and nothing to deploy beside it.
//!
//! The page needs a few facts about the server that serves it: the WebSocket listener's
//! port (it has one of its own) and the limits the server checks input against, so that
//! the page can say what is wrong before it sends anything. None of them is copied into the
//! page by hand: [`page`] writes one [`PageSettings`] into it as JSON, in
//! `<script id="server-settings" type="application/json">`, which the page reads with
//! `JSON.parse`. The server still checks everything itself; the page only asks earlier.

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

    #[test]
    fn a_less_than_sign_cannot_close_the_script() {
        let value = json!({"note": "</script><script>alert(1)</script> <!-- a < b"});
        let safe = script_safe(&value.to_string());
        assert!(!safe.contains('<'), "{safe}");
        assert_eq!(serde_json::from_str::<Value>(&safe).unwrap(), value);
    }
}
