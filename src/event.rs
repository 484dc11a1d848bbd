//! Chat events on the wire: [`ClientEvent`] (what a socket sends) and [`ServerEvent`] (what
//! the room broadcasts).
//!
//! A client frame is parsed in one place, into one enum, so an unknown `event_type` is a
//! variant-less error rather than a crash (the Go version indexed a map by whatever name a
//! frame carried). A server event is built by the server, with the server's time and the
//! name the socket joined with; it is serialised once and the same text goes to every member.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};

/// The longest name a socket may join with, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// The longest colour string accepted, in characters (`#rrggbb`, a CSS name, ...).
pub const MAX_COLOR_CHARS: usize = 32;
/// The colour used when a join carries none.
pub const DEFAULT_COLOR: &str = "#000000";

/// A frame a client sent, once it has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Take `name` in the room; replay the kept messages with an id above `since` (all of
    /// them without it) first.
    Join {
        name: String,
        color: String,
        since: Option<u64>,
    },
    /// Say `msg` under the name this socket joined with.
    Send { msg: String },
    /// Give the name up; the socket stays open.
    Leave,
}

/// The raw shape of a client frame. Every field is optional here so that a missing field
/// becomes an error naming it, not a generic parse failure.
#[derive(Deserialize)]
struct RawClientEvent {
    event_type: Option<String>,
    name: Option<String>,
    color: Option<String>,
    msg: Option<String>,
    /// Any JSON here: a `since` that is not a whole number is named in the error.
    since: Option<serde_json::Value>,
}

impl ClientEvent {
    /// Parses and checks one text frame. Errors are code 303, with `field` when one field
    /// is at fault. Never inlined: serde's 968 bytes of frame would otherwise sit under a
    /// join's whole call into its room, and take every socket's stack to a third page
    /// (`ws::SESSION_STACK_BYTES`).
    #[inline(never)]
    pub fn parse(text: &str) -> Result<ClientEvent, ApiError> {
        let raw: RawClientEvent =
            serde_json::from_str(text).map_err(|_| ApiError::new(ErrorKind::InvalidJson))?;
        let invalid = |field| ApiError::field(ErrorKind::InvalidJson, field);
        match raw.event_type.as_deref() {
            Some("join") => {
                let name = raw.name.as_deref().map(str::trim).unwrap_or_default();
                if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
                    return Err(invalid("name"));
                }
                // SPEC, Rooms: a name that shows nothing where it holds something could
                // pass for another person's: refused as a duplicate (202).
                if !crate::visible::is_visible(name) {
                    return Err(ApiError::field(ErrorKind::DuplicateUsername, "name"));
                }
                let color = raw.color.as_deref().map(str::trim).unwrap_or_default();
                if color.chars().count() > MAX_COLOR_CHARS {
                    return Err(invalid("color"));
                }
                let color = if color.is_empty() {
                    DEFAULT_COLOR
                } else {
                    color
                };
                let since = match raw.since {
                    None | Some(serde_json::Value::Null) => None,
                    Some(since) => Some(since.as_u64().ok_or_else(|| invalid("since"))?),
                };
                Ok(ClientEvent::Join {
                    name: name.to_owned(),
                    color: color.to_owned(),
                    since,
                })
            }
            Some("send") => match raw.msg {
                Some(msg) if !msg.trim().is_empty() => Ok(ClientEvent::Send { msg }),
                _ => Err(invalid("msg")),
            },
            Some("leave") => Ok(ClientEvent::Leave),
            _ => Err(invalid("event_type")),
        }
    }
}

/// What a chat event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// Someone took a name in the room.
    Join,
    /// Someone said something.
    Send,
    /// Someone gave their name up, closed their socket, or was dropped.
    Leave,
}

/// An event broadcast to every member of a room. Built only by the server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerEvent<'a> {
    pub event_type: EventType,
    pub name: &'a str,
    pub color: &'a str,
    pub msg: &'a str,
    pub room_id: u64,
    pub time: &'a str,
    /// A `send` event's message number in its room; joins and leaves have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

impl ServerEvent<'_> {
    /// The event as JSON text, serialised once for all members.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a ServerEvent has only strings and numbers")
    }
}

/// A kept `send` event as it is replayed to a socket that joins: the broadcast text with
/// `"replay":true` added as its last field. The text is always a `ServerEvent` this module
/// serialised (an object ending in `}`), so adding the field is a splice, not a re-parse.
pub fn as_replay(text: &str) -> String {
    let body = text.strip_suffix('}').unwrap_or(text);
    format!("{body},\"replay\":true}}")
}

/// The broadcast text of a join: `"<name> entered the room."`.
pub fn join_message(name: &str) -> String {
    format!("{name} entered the room.")
}

/// The broadcast text of a leave: `"<name> has left the room."`.
pub fn leave_message(name: &str) -> String {
    format!("{name} has left the room.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> Option<&'static str> {
        ClientEvent::parse(text).unwrap_err().field
    }

    #[test]
    fn join_needs_a_name_and_defaults_the_colour() {
        assert_eq!(
            ClientEvent::parse(r#"{"event_type":"join","name":" ann "}"#).unwrap(),
            ClientEvent::Join {
                name: "ann".into(),
                color: DEFAULT_COLOR.into(),
                since: None,
            }
        );
        assert_eq!(
            ClientEvent::parse(r#"{"event_type":"join","name":"a","since":7}"#).unwrap(),
            ClientEvent::Join {
                name: "a".into(),
                color: DEFAULT_COLOR.into(),
                since: Some(7),
            }
        );
        for bad in ["-1", "1.5", "\"3\"", "true"] {
            let frame = format!(r#"{{"event_type":"join","name":"a","since":{bad}}}"#);
            assert_eq!(field_of(&frame), Some("since"), "{frame}");
        }
        assert_eq!(field_of(r#"{"event_type":"join"}"#), Some("name"));
        assert_eq!(
            field_of(r#"{"event_type":"join","name":"  "}"#),
            Some("name")
        );
        assert_eq!(
            field_of(&format!(
                r#"{{"event_type":"join","name":"{}"}}"#,
                "x".repeat(33)
            )),
            Some("name")
        );
    }

    /// Found by the `client_event` fuzz target (its artifact: a join whose name is U+FFFD
    /// replacement characters with a DEL among them): a name holding a control character
    /// is refused as a look-alike, 202 naming `name`, after the length check's 303.
    #[test]
    fn a_name_with_a_control_character_is_a_look_alike() {
        let frame = "{\"event_type\":\"join\",\"name\":\"\u{FFFD}\u{FFFD}\u{7F}\u{FFFD}n.\"}";
        let error = ClientEvent::parse(frame).unwrap_err();
        assert_eq!((error.code(), error.field), (202, Some("name")));
    }

    #[test]
    fn send_needs_a_message_and_ignores_the_claimed_name() {
        assert_eq!(
            ClientEvent::parse(r#"{"event_type":"send","name":"bob","msg":"hi"}"#).unwrap(),
            ClientEvent::Send { msg: "hi".into() }
        );
        assert_eq!(field_of(r#"{"event_type":"send","msg":""}"#), Some("msg"));
    }

    #[test]
    fn a_replayed_event_is_the_broadcast_one_with_the_flag_last() {
        let event = ServerEvent {
            event_type: EventType::Send,
            name: "ann",
            color: "red",
            msg: "hi}",
            room_id: 1,
            time: "t",
            id: Some(4),
        };
        assert_eq!(
            as_replay(&event.to_text()),
            r#"{"event_type":"send","name":"ann","color":"red","msg":"hi}","room_id":1,"time":"t","id":4,"replay":true}"#
        );
    }

    #[test]
    fn bad_frames_are_303() {
        for text in [
            "not json",
            "[]",
            r#"{"event_type":"dance"}"#,
            r#"{"event_type":7}"#,
            "{}",
        ] {
            assert_eq!(ClientEvent::parse(text).unwrap_err().code(), 303, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(ClientEvent::parse(&deep).unwrap_err().code(), 303);
    }
}
