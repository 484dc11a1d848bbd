//! Fuzz target: the WebSocket listener, in process, over real TCP (see `common/server.rs`):
//! a handshake, then (once it is upgraded) frames.
//!
//! The input up to its first empty line (`\r\n\r\n`) is the handshake (or, when the input
//! starts with a NUL byte, a good handshake for the public room stands in for it and the
//! rest of the input follows it). What follows, if
//! anything, is sent only after a `101`, as a client must: its first byte picks how. Even:
//! the rest as raw bytes. Odd: each line of the rest as one masked text frame (so mutated
//! JSON reaches the session's join/send/leave), with a close frame after them when bit 1
//! is set.
//!
//! Invariants beyond "no panic": the answer ends (no hang); an answer, when there is one,
//! begins with an HTTP/1.1 status line; a refusal (any status but 101) carries the JSON
//! error body; after a 101 the server sends only whole, unmasked text, close, ping or pong
//! frames, every text frame a JSON event (an error event with its code), every close code
//! one the server uses; and after every input the listener still upgrades a good
//! handshake and the REST side still answers `GET /healthz` with 200.

#![no_main]

#[path = "common/server.rs"]
mod common;

use common::{
    assert_http_alive, assert_json_error_body, assert_ws_alive, exchange_in_two, parse_response,
    server, Tally,
};
use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static TALLY: Tally = Tally::new("ws_handshake");

/// The close codes ChitChat sends (SPEC: 1001 shutdown or deleted room, 1008 slow or
/// flooding, 1009 too big) and those tungstenite answers protocol errors with.
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011];

/// A good handshake for the public room, for inputs that start with a NUL byte.
const GOOD_HANDSHAKE: &[u8] = b"GET /chats/1/ws HTTP/1.1\r\nHost: fuzz\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let (handshake, after) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        // Few mutated handshakes are still good: this way most of the time goes to chat.
        _ if data.first() == Some(&0) => (GOOD_HANDSHAKE, &data[1..]),
        Some(end) => data.split_at(end + 4),
        None => (data, &[][..]),
    };
    let after = after.split_first().map(|(&mode, rest)| frames(mode, rest));
    let answer = exchange_in_two(server().ws, handshake, after.as_deref());
    let echoable = client_close_codes(after.as_deref().unwrap_or_default());
    let outcome = check(data, &answer.bytes, answer.reset, &echoable);
    TALLY.count(outcome);
    assert_ws_alive();
    assert_http_alive();
});

/// What to send after the upgrade (see the module doc).
fn frames(mode: u8, rest: &[u8]) -> Vec<u8> {
    if mode.is_multiple_of(2) {
        return rest.to_vec();
    }
    let mut out = Vec::new();
    for line in rest.split(|&b| b == b'\n') {
        client_frame(&mut out, 0x1, line);
    }
    if mode & 2 != 0 {
        client_frame(&mut out, 0x8, &1000u16.to_be_bytes());
    }
    out
}

/// One final client frame: masked, with a zero key (so the payload reads as it is).
fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

/// Checks the answer; `echoable` are close codes the client sent, which the server may echo.
fn check(data: &[u8], bytes: &[u8], reset: bool, echoable: &[u16]) -> String {
    if bytes.is_empty() {
        return if reset {
            "reset, no answer"
        } else {
            "no answer"
        }
        .into();
    }
    let context = format!(
        "input {:?}, answer {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
    );
    assert!(bytes.starts_with(b"HTTP/1.1 "), "{context}");
    let (response, rest) = match parse_response(bytes, false) {
        Ok(parsed) => parsed,
        Err(_) if reset => return "reset mid-answer".into(),
        Err(problem) => panic!("{context}: malformed answer ({problem})"),
    };
    if response.status != 101 {
        assert_eq!(
            response.header("Content-Type"),
            Some("application/json"),
            "{context}: a {} without the JSON error body",
            response.status
        );
        assert_json_error_body(&response, &context);
        return format!("{}{}", response.status, if reset { ", reset" } else { "" });
    }
    let (kinds, cut) = server_frames(rest, echoable, &context);
    assert!(
        !cut || reset,
        "{context}: a frame cut short without a reset"
    );
    format!("101 then {kinds}{}", if reset { ", reset" } else { "" })
}

/// Checks the frames the server sent after its 101; returns a summary (the kinds of event,
/// error codes and close codes seen) and whether the last frame was cut short.
fn server_frames(mut bytes: &[u8], echoable: &[u16], context: &str) -> (String, bool) {
    let mut summary = BTreeSet::new();
    let summarise = |summary: &BTreeSet<String>| {
        let kinds: Vec<&str> = summary.iter().map(String::as_str).collect();
        format!("[{}]", kinds.join(", "))
    };
    while !bytes.is_empty() {
        let Some((opcode, payload, rest)) = server_frame(bytes, context) else {
            return (summarise(&summary), true);
        };
        bytes = rest;
        match opcode {
            0x1 => {
                let event: Value = serde_json::from_slice(payload).unwrap_or_else(|e| {
                    panic!("{context}: a text frame that is not JSON ({e}): {payload:?}")
                });
                let kind = event["event_type"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{context}: an event without event_type: {event}"));
                assert!(
                    ["join", "send", "leave", "error"].contains(&kind),
                    "{context}: event {event}"
                );
                if kind == "error" {
                    assert_eq!(event["status"], false, "{context}: {event}");
                    let code = event["error"]["code"].as_u64();
                    let code = code.unwrap_or_else(|| panic!("{context}: error {event}"));
                    summary.insert(format!("error {code}"));
                } else {
                    summary.insert(kind.to_owned());
                }
            }
            0x8 => {
                let code = match payload {
                    [] => None,
                    [high, low, reason @ ..] => {
                        assert!(std::str::from_utf8(reason).is_ok(), "{context}: reason");
                        Some(u16::from_be_bytes([*high, *low]))
                    }
                    [_] => panic!("{context}: a close frame with a one-byte payload"),
                };
                if let Some(code) = code {
                    assert!(
                        CLOSE_CODES.contains(&code) || echoable.contains(&code),
                        "{context}: close code {code}"
                    );
                }
                summary.insert(format!("close {}", code.unwrap_or(0)));
            }
            0x9 | 0xA => {}
            other => panic!("{context}: the server sent a frame with opcode {other:#x}"),
        }
    }
    (summarise(&summary), false)
}

/// One server frame off the front of `bytes`: `None` if it is cut short.
fn server_frame<'a>(bytes: &'a [u8], context: &str) -> Option<(u8, &'a [u8], &'a [u8])> {
    let frame = split_frame(bytes)?;
    assert_eq!(frame.first & 0x70, 0, "{context}: reserved bits set");
    assert_eq!(
        frame.first & 0x80,
        0x80,
        "{context}: the server fragments frames"
    );
    assert!(
        frame.mask.is_none(),
        "{context}: a server frame is never masked"
    );
    Some((frame.first & 0x0f, frame.payload, frame.rest))
}

/// The close codes in the client's frames, in the order the server reads them: the server
/// may echo one back (RFC 6455, 5.5.1), a code of the client's own choosing (3000-4999).
fn client_close_codes(mut sent: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    while let Some(frame) = split_frame(sent) {
        if let (0x8, [high, low, ..], Some(mask)) = (frame.first & 0x0f, frame.payload, frame.mask)
        {
            codes.push(u16::from_be_bytes([high ^ mask[0], low ^ mask[1]]));
        }
        sent = frame.rest;
    }
    codes
}

/// A WebSocket frame as it is on the wire, payload still masked.
struct Frame<'a> {
    /// FIN, the reserved bits and the opcode.
    first: u8,
    mask: Option<[u8; 4]>,
    payload: &'a [u8],
    /// The bytes after the frame.
    rest: &'a [u8],
}

/// One frame off the front of `bytes`: `None` if it is cut short.
fn split_frame(bytes: &[u8]) -> Option<Frame<'_>> {
    let (&first, rest) = bytes.split_first()?;
    let (&second, mut rest) = rest.split_first()?;
    let length = match second & 0x7f {
        126 => {
            let (length, after) = rest.split_at_checked(2)?;
            rest = after;
            usize::from(u16::from_be_bytes([length[0], length[1]]))
        }
        127 => {
            let (length, after) = rest.split_at_checked(8)?;
            rest = after;
            let length = u64::from_be_bytes(length.try_into().expect("eight bytes"));
            usize::try_from(length).ok()?
        }
        n => usize::from(n),
    };
    let mask = if second & 0x80 != 0 {
        let (key, after) = rest.split_at_checked(4)?;
        rest = after;
        Some(key.try_into().expect("four bytes"))
    } else {
        None
    };
    let (payload, rest) = rest.split_at_checked(length)?;
    Some(Frame {
        first,
        mask,
        payload,
        rest,
    })
}
