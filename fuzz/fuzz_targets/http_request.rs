//! Fuzz target: whole HTTP request handling, in process: the input's raw bytes go to a
//! fresh TCP connection to the running server's REST port (see `common/server.rs`).
//!
//! Invariants beyond "no panic": the answer ends (no hang); an answer, when there is one,
//! is a well-formed HTTP response whose version is HTTP/1.1 or the request's own; an error
//! status from ChitChat carries the JSON error body; an error without one is one of
//! tiny_http's own refusals of an unreadable request (400, 417, 505); a request line over
//! 8 KiB is 414, and a 414 or 431 (a head past its caps) carries code 105 (SPEC, Limits),
//! or to a `HEAD` nothing after its head;
//! nothing is ever a 500; and after every input `GET /healthz` still answers 200. Inputs
//! past 8 KiB need `-max_len` above libFuzzer's default 4096 (`fuzz/run.sh` passes 40000 for this target).

#![no_main]

#[path = "common/server.rs"]
mod common;

use common::{assert_http_alive, assert_json_error_body, exchange, parse_response, server, Tally};

use libfuzzer_sys::fuzz_target;

/// tiny_http answers these itself, with no body or a plain one, before ChitChat sees the
/// request: a request line or header it cannot read (400), an `Expect` it does not know
/// (417), an HTTP version above 1.1 (505). Its 408, 414 and 431 carry ChitChat's JSON body.
const TINY_HTTP_OWN: [u16; 3] = [400, 417, 505];
/// The longest request line, CRLF aside (SPEC, Limits).
const MAX_REQUEST_LINE: usize = 8 * 1024;

static TALLY: Tally = Tally::new("http_request");

fuzz_target!(|data: &[u8]| {
    let answer = exchange(server().http, data);
    let outcome = check(data, &answer.bytes, answer.reset);
    TALLY.count(outcome);
    assert_http_alive();
});

/// Checks the first answer to `data`; returns a short name for the outcome.
fn check(data: &[u8], bytes: &[u8], reset: bool) -> String {
    if bytes.is_empty() {
        return if reset {
            "reset, no answer"
        } else {
            "no answer"
        }
        .into();
    }
    // tiny_http ends a line at CRLF only, trims it, and splits it at single spaces.
    let line_end = data.windows(2).position(|w| w == b"\r\n");
    let first_line = String::from_utf8_lossy(&data[..line_end.unwrap_or(data.len())]);
    let mut words = first_line.trim().split(' ');
    let method = words.next().unwrap_or_default().to_owned();
    let asked_version = words.nth(1).unwrap_or_default().to_owned();
    // Methods are case-sensitive (RFC 9110, 9.1): `head` is some other method.
    let head = method == "HEAD";
    let context = format!(
        "request {:?}, answer {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&bytes[..bytes.len().min(600)])
    );

    let mut rest = bytes;
    let (response, after) = loop {
        match parse_response(rest, head) {
            // `Expect: 100-continue` is answered first with an interim 100.
            Ok((response, after)) if response.status == 100 => rest = after,
            Ok(answer) => break answer,
            // A reset may cut the answer anywhere; that is counted, not a finding here.
            Err(_) if reset => return "reset mid-answer".into(),
            Err(problem) => panic!("{context}: malformed answer ({problem}): {:?}", {
                String::from_utf8_lossy(bytes)
            }),
        }
    };
    let json = response
        .header("Content-Type")
        .is_some_and(|t| t == "application/json");
    if line_end.unwrap_or(data.len()) > MAX_REQUEST_LINE {
        assert_eq!(response.status, 414, "{context}: a request line over 8 KiB");
    }
    if matches!(response.status, 414 | 431) {
        assert!(json, "{context}: a {} without the JSON body", response.status);
        assert_json_error_body(&response, &context);
        let code = response
            .body
            .as_deref()
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
            .map(|value| value["error"]["code"].clone());
        // The answer to a `HEAD` is its head alone, and the connection closes after it.
        if head {
            assert!(after.is_empty(), "{context}: a body after the head of a HEAD's answer");
        } else {
            assert_eq!(code, Some(105.into()), "{context}: not code 105");
        }
    }
    assert!(
        response.version == "HTTP/1.1" || response.version == asked_version,
        "{context}: answered with {} to a request for {asked_version:?}",
        response.version
    );
    assert_ne!(response.status, 500, "{context}: a handler failed");
    if response.status >= 400 {
        if json {
            assert_json_error_body(&response, &context);
        } else {
            assert!(
                TINY_HTTP_OWN.contains(&response.status),
                "{context}: a {} without the JSON error body",
                response.status
            );
            return format!(
                "{} (tiny_http){}",
                response.status,
                if reset { ", reset" } else { "" }
            );
        }
    } else {
        assert!(
            response.header("Content-Type").is_some(),
            "{context}: a {} without a Content-Type",
            response.status
        );
    }
    format!("{}{}", response.status, if reset { ", reset" } else { "" })
}
