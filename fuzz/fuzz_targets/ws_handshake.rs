//! Fuzz target: the WebSocket listener, in process: the input's raw bytes (a handshake,
//! and perhaps frames after it) go to a fresh TCP connection to the running server's
//! WebSocket port (see `common/server.rs`).
//!
//! Invariants beyond "no panic": the answer ends (no hang); an answer, when there is one,
//! begins with an HTTP/1.1 status line; a refusal (any status but 101) carries the JSON
//! error body; and after every input the listener still upgrades a good handshake and the
//! REST side still answers `GET /healthz` with 200.

#![no_main]

#[path = "common/server.rs"]
mod common;

use common::{
    assert_http_alive, assert_json_error_body, assert_ws_alive, exchange, parse_response, server,
    Tally,
};
use libfuzzer_sys::fuzz_target;

static TALLY: Tally = Tally::new("ws_handshake");

fuzz_target!(|data: &[u8]| {
    let answer = exchange(server().ws, data);
    let outcome = check(data, &answer.bytes, answer.reset);
    TALLY.count(outcome);
    assert_ws_alive();
    assert_http_alive();
});

fn check(data: &[u8], bytes: &[u8], reset: bool) -> String {
    if bytes.is_empty() {
        return if reset {
            "reset, no answer"
        } else {
            "no answer"
        }
        .into();
    }
    let context = format!("handshake {:?}", String::from_utf8_lossy(data));
    assert!(
        bytes.starts_with(b"HTTP/1.1 "),
        "{context}: answer {:?}",
        String::from_utf8_lossy(bytes)
    );
    let response = match parse_response(bytes, false) {
        Ok((response, _)) => response,
        Err(_) if reset => return "reset mid-answer".into(),
        // After a 101 the frames follow, so only the headers need to parse.
        Err(problem) if bytes.starts_with(b"HTTP/1.1 101 ") => {
            panic!("{context}: malformed 101 ({problem})")
        }
        Err(problem) => panic!(
            "{context}: malformed answer ({problem}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    if response.status != 101 {
        assert_eq!(
            response.header("Content-Type"),
            Some("application/json"),
            "{context}: a {} without the JSON error body",
            response.status
        );
        assert_json_error_body(&response, &context);
    }
    format!("{}{}", response.status, if reset { ", reset" } else { "" })
}
