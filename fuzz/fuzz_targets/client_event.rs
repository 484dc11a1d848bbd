//! Fuzz target: `ClientEvent::parse`, the one parser every WebSocket text frame goes through.
//!
//! Invariants beyond "no panic": the same text always parses the same way; every error is
//! code 303 naming one of the frame's fields or none, except a join name that shows nothing
//! where it holds something (SPEC, Rooms: 202, field `name`); a refusal of text that is not JSON
//! names no field; an accepted event obeys the limits the session relies on (trimmed,
//! non-empty, at most 32 characters), and what the server then broadcasts (a
//! `ServerEvent`, its replay form, the join and leave texts) is valid JSON carrying the same
//! name and colour.

#![no_main]

use chitchat::event::{
    as_replay, join_message, leave_message, ClientEvent, EventType, ServerEvent, MAX_COLOR_CHARS,
    MAX_NAME_CHARS,
};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;

const FIELDS: [&str; 5] = ["event_type", "name", "color", "msg", "since"];

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 by the time they reach the parser (tungstenite checks); other
    // bytes are still worth parsing, as the nearest text.
    let text = String::from_utf8_lossy(data);
    let parsed = ClientEvent::parse(&text);
    assert_eq!(parsed, ClientEvent::parse(&text), "parse is deterministic");
    // JSON syntax as the parser itself reads it (numbers of any size are JSON: a `Value`
    // refuses `1e999`, the parser only skips it), and the `Value` where there is one.
    let is_json = serde_json::from_str::<IgnoredAny>(&text).is_ok();
    let json = serde_json::from_str::<Value>(&text).ok();
    match parsed {
        Err(error) if error.code() == 202 => {
            assert_eq!(error.field, Some("name"), "a 202 is about the name: {error}");
            let object = json.as_ref().and_then(Value::as_object);
            let name = object.and_then(|o| o.get("name")).and_then(Value::as_str);
            assert_eq!(object.and_then(|o| o.get("event_type")), Some(&Value::from("join")));
            assert!(name.is_some_and(|n| !n.trim().is_empty()), "a 202 name holds something");
        }
        Err(error) => {
            assert_eq!(error.code(), 303, "every other frame error is 303: {error}");
            assert_eq!(error.status(), 400);
            if let Some(field) = error.field {
                assert!(FIELDS.contains(&field), "unexpected field {field}");
            }
            if !is_json {
                assert_eq!(error.field, None, "not JSON at all names no field");
            }
            let event: Value =
                serde_json::from_str(&error.to_event()).expect("an error event is JSON");
            assert_eq!(event["event_type"], "error");
            assert_eq!(event["error"]["code"], 303);
        }
        Ok(event) => {
            assert!(is_json, "an accepted frame is JSON");
            // Only a number too large for a `Value` leaves none to compare with.
            let Some(json) = json else { return };
            let object = json
                .as_object()
                .expect("an accepted frame is a JSON object");
            let event_type = object.get("event_type").and_then(Value::as_str);
            match event {
                ClientEvent::Join { name, color, since } => {
                    assert_eq!(event_type, Some("join"));
                    assert_eq!(name, name.trim());
                    assert!(!name.is_empty() && name.chars().count() <= MAX_NAME_CHARS);
                    assert_eq!(color, color.trim());
                    assert!(!color.is_empty() && color.chars().count() <= MAX_COLOR_CHARS);
                    if let Some(since) = since {
                        assert_eq!(object.get("since").and_then(Value::as_u64), Some(since));
                    }
                    broadcast_is_json(&name, &color);
                }
                ClientEvent::Send { msg } => {
                    assert_eq!(event_type, Some("send"));
                    assert!(!msg.trim().is_empty(), "an empty message is refused");
                    broadcast_is_json("ann", &msg);
                }
                ClientEvent::Leave => assert_eq!(event_type, Some("leave")),
            }
        }
    }
});

/// What the room would broadcast for this name and colour (or message) is JSON that says
/// the same thing back.
fn broadcast_is_json(name: &str, color: &str) {
    let joined = join_message(name);
    let event = ServerEvent {
        event_type: EventType::Send,
        name,
        color,
        msg: &joined,
        room_id: 1,
        time: "2024-01-01T00:00:00Z",
        id: Some(7),
    };
    let text = event.to_text();
    let back: Value = serde_json::from_str(&text).expect("a server event is JSON");
    assert_eq!(back["name"], name);
    assert_eq!(back["color"], color);
    assert_eq!(back["msg"], joined.as_str());
    let replay: Value = serde_json::from_str(&as_replay(&text)).expect("a replay is JSON");
    assert_eq!(replay["replay"], true);
    assert_eq!(replay["id"], 7);
    assert_eq!(replay["name"], name);
    assert!(leave_message(name).starts_with(name));
}
