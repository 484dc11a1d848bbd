//! Findings of the fuzz targets (fuzz/fuzz_targets/, `make fuzz`) that are about the whole
//! server rather than one parser: each test names the target and the input that found it.
//! Parser findings are pinned beside the parser (`path.rs`, `token.rs` unit tests).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{read_response, TestServer, TIMEOUT};

/// Found by `http_request` with `GET /chats/1/messages?since=0&limit=2 HTTP/2.0\r\n\r\n`:
/// no answer ever came and the connection was never closed. tiny_http writes its 505 for a
/// version above 1.1 through the connection's *next* writer, which waits for the request's
/// own writer to be dropped, and that request is still alive on the same thread: the
/// connection thread blocks forever (no read timeout applies), so each such request keeps a
/// thread and a socket for good. Fix belongs in vendor/tiny_http (`ClientConnection::next`,
/// src/client.rs): answer through the request's writer, or drop it without its 500 first.
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
