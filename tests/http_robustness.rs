//! Robustness of the HTTP side against clients that misbehave or arrive all at once (SPEC:
//! "a malformed or oversized body is a clear 4xx error, never a panic, never a hang"). The
//! three tests pin the patches in `vendor/tiny_http` (see its PATCHES.md): each fails
//! against upstream tiny_http 0.12.0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{error_body, read_response, TestServer, TIMEOUT};

/// A body declared as 100 TB is refused with 413 and a JSON error, and the server lives on.
/// Upstream tiny_http drained an unread body by allocating all of it at once: the
/// allocation failed and the whole process aborted.
#[test]
fn huge_declared_content_length_is_refused_and_the_server_lives() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.http_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"POST /chats HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n{\"title\":")
        .unwrap();
    let response = read_response(stream);
    assert_eq!(response.status, 413);
    assert_eq!(response.json(), error_body(413, None));
    let health = server.get("/healthz");
    assert_eq!(
        (health.status, health.json()),
        (200, serde_json::json!({"status": true}))
    );
}

/// A connection that sends nothing is closed after `read_timeout_s`, so idle clients cannot
/// hold the server's connection threads forever (upstream set no timeout at all).
#[test]
fn idle_http_connection_is_closed_after_the_read_timeout() {
    let server = TestServer::start_with(|c| c.read_timeout = Duration::from_millis(300));
    let mut idle = TcpStream::connect(server.http_addr).unwrap();
    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let read = idle
        .read(&mut buf)
        .expect("the server closes the idle connection before TIMEOUT");
    assert_eq!(
        read, 0,
        "nothing but the close is sent to an idle connection"
    );
    assert_eq!(server.get("/healthz").status, 200);
}

/// Two dozen keep-alive connections opened at once are all answered while all stay open.
/// Upstream queued a new connection behind any idle pool thread, and the queue waited for
/// threads that keep-alive connections kept busy: some requests got no answer at all.
#[test]
fn many_keep_alive_connections_at_once_are_all_answered() {
    let server = TestServer::start();
    let connections: Vec<TcpStream> = (0..24)
        .map(|_| {
            let mut stream = TcpStream::connect(server.http_addr).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    for connection in &connections {
        let response = read_response(connection.try_clone().unwrap());
        assert_eq!(response.status, 200, "{}", response.body);
    }
}
