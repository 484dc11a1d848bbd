//! Findings of the fuzz targets (fuzz/fuzz_targets/, `make fuzz`) that are about the whole
//! server rather than one parser: each test names the target and the input that found it.
//! Parser findings are pinned beside the parser (`path.rs`, `token.rs` unit tests).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{read_response, TestServer, TIMEOUT};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

/// Found by `http_request` with `GET /chats/1/messages?since=0&limit=2 HTTP/2.0\r\n\r\n`:
/// no answer ever came and the connection was never closed. tiny_http writes its 505 for a
/// version above 1.1 through the connection's *next* writer, which waits for the request's
/// own writer to be dropped, and that request is still alive on the same thread: the
/// connection thread blocks forever (no read timeout applies), so each such request keeps a
/// thread and a socket for good. Fixed in vendor/tiny_http (patch 7: the 505 goes through
/// the request's own writer).
#[test]
fn http_2_request_line_is_answered_505_not_left_hanging() {
    let server = TestServer::start();
    for version in ["HTTP/2.0", "HTTP/3.0"] {
        let mut stream = TcpStream::connect(server.http_addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /chats/1/messages?since=0&limit=2 {version}\r\n\r\n"
        )
        .unwrap();
        let response = read_response(stream);
        assert_eq!(response.status, 505, "{version}");
    }
    assert_eq!(server.get("/healthz").status, 200);
}

/// Found by `http_request` with two pipelined requests, the second with an `Expect` header
/// tiny_http does not know (`G!T /chats HTTP/1.1\r\nHost: fuzz\r\n\r\nPUT /c`hats
/// HTTP/1.0\r\nHost: fuzz\r\nExpect: 100-contiuken ...`): the second request's 417 came
/// *before* the first request's 405, so a pipelining client takes each answer for the
/// wrong request; with other timing the two answers came interleaved byte by byte
/// (`HTTP/1.1 404 Not Found\r\nServerHTTP/: 1tiny-http (Rust)...`). tiny_http gives each request a writer that waits for the previous one;
/// the failed request's writer was dropped unused, which passed the turn to the 417's
/// writer (the next one) before the first answer was written. Fixed in vendor/tiny_http
/// (patch 8: a writer dropped before its turn waits for it). The first request here is
/// slow on purpose (bcrypt at cost 10) so the order is not left to chance.
#[test]
fn pipelined_answers_keep_their_order_when_a_later_request_gets_417() {
    let server = TestServer::start_with(|c| c.bcrypt_cost = 10);
    let room = server.create_room("Slow room", "private", Some("password1"));
    let body = r#"{"name":"ann","secret":"password1"}"#;
    let mut stream = TcpStream::connect(server.http_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "POST /chats/{}/token HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\
         PUT /chats/1 HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n",
        room["id"],
        body.len()
    )
    .unwrap();
    // The 417 closes the connection, so both answers are read to its end.
    let mut answers = String::new();
    stream
        .read_to_string(&mut answers)
        .expect("read both answers");
    assert!(
        answers.starts_with("HTTP/1.1 201 Created\r\n"),
        "the token request is answered first: {answers:?}"
    );
    let second = answers.find("HTTP/1.1 417 ").expect("then the 417");
    assert!(
        answers[..second].contains("\"token\""),
        "the token's body comes whole before the 417: {answers:?}"
    );
}

/// Found by `ws_handshake` with raw frames after a good handshake: a text frame, a binary
/// frame, a ping, then a close with code 3851 (`88 82 02 01 02 74 0d 0a`, masked). The
/// server answered with a close of 3851, which the target did not expect of ChitChat. The
/// server was right (RFC 6455, 5.5.1: the answering close echoes the code received, and
/// 3000-4999 are the client's to choose); the target now allows an echo of a code its
/// input sent. Pinned: the echo, and the room untouched for the others.
#[test]
fn a_client_close_code_is_echoed_and_the_room_goes_on() {
    let server = TestServer::start();
    let mut leaver = server.ws("/chats/1/ws");
    let mut stayer = server.ws("/chats/1/ws");
    leaver.join("ann");
    stayer.join("bob");
    leaver
        .socket
        .close(Some(CloseFrame {
            code: CloseCode::from(3851),
            reason: "".into(),
        }))
        .unwrap();
    assert_eq!(leaver.expect_close(), 3851);
    let leave = stayer.next_event_where("ann's leave", |e| e["event_type"] == "leave");
    assert_eq!(leave["name"], "ann");
    stayer.say("still here");
    let echo = stayer.next_event_where("bob's message", |e| e["event_type"] == "send");
    assert_eq!(echo["msg"], "still here");
}
