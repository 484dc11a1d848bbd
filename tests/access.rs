//! Access that follows the room, and hidden rooms that cannot be found by id (SPEC, "Who may
//! change a room" and "Rooms"; issue 20). Each test here failed on main: a member removed
//! by a password change kept reading and posting on the socket they had; a socket opened on
//! a public room that was then made private joined under any name and got the history; an
//! expired token could still join again; and every path answered a hidden id differently
//! from a missing one, so walking the ids listed the hidden rooms.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{error_body, Client, TestServer, TIMEOUT};
use serde_json::{json, Value};

const PASSWORD: &str = "open sesame";

/// The error event with `code`, as a socket receives it.
fn error_event(code: u16) -> Value {
    let mut event = error_body(code, None);
    event["event_type"] = json!("error");
    event
}

/// A socket on room `id` opened with `token` (as the page sends it: the subprotocol).
fn ws_with_token(server: &TestServer, id: u64, token: &str) -> Client {
    server.ws(&format!("/chats/{id}/ws?token={token}"))
}

/// Reads until the server's error event, then its close frame: both returned.
fn error_then_close(client: &mut Client) -> (Value, u16) {
    let error = client.next_event_where("an error event", |e| e["event_type"] == "error");
    (error, client.expect_close())
}

/// A change of password closes every socket of the room, joined or not: each gets error
/// 104, then close 1008; the old token opens nothing any more, the new password does.
#[test]
fn a_password_change_closes_every_socket_with_104_then_1008() {
    let server = TestServer::start();
    let room = server.create_room("Club", "private", Some(PASSWORD));
    let owner = room["owner_token"].as_str().unwrap();
    let token = server.token("Club", "ann", PASSWORD);
    let mut ann = ws_with_token(&server, 2, &token);
    ann.join("ann");
    let mut lurker = ws_with_token(&server, 2, &token);
    let change = json!({"password": "only for some"});
    let put = server.send("PUT", "/chats/2", Some(owner), Some(&change));
    assert_eq!(put.status, 200, "{}", put.body);
    for client in [&mut ann, &mut lurker] {
        assert_eq!(error_then_close(client), (error_event(104), 1008));
    }
    let old = server.send("GET", "/chats/2/token/renew", Some(&token), None);
    assert_eq!((old.status, old.json()), (401, error_body(401, None)));
    let fresh = server.token("Club", "ann", "only for some");
    ws_with_token(&server, 2, &fresh).join("ann");
}

/// A public room lets anyone in: a token presented to it that opens nothing (not a token
/// at all here) is not kept and refuses nothing, at the handshake or at the join.
#[test]
fn a_public_room_ignores_a_token_that_opens_nothing() {
    let server = TestServer::start();
    let mut ann = ws_with_token(&server, 1, "not.a.token");
    assert_eq!(ann.join("ann")["name"], "ann");
}

/// A socket opened on a public room and never joined is closed when the room is made
/// private: it cannot join afterwards under any name and be replayed the history.
#[test]
fn making_a_public_room_private_closes_its_sockets_even_unjoined_ones() {
    let server = TestServer::start();
    let room = server.create_room("Open house", "public", None);
    let owner = room["owner_token"].as_str().unwrap();
    let mut speaker = server.ws("/chats/2/ws");
    speaker.join("bob");
    speaker.say("the plan");
    let mut watcher = server.ws("/chats/2/ws");
    let change = json!({"visibility": "private", "password": "members only"});
    let put = server.send("PUT", "/chats/2", Some(owner), Some(&change));
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(error_then_close(&mut watcher), (error_event(104), 1008));
    assert_eq!(error_then_close(&mut speaker), (error_event(104), 1008));
}

/// A change of title or description leaves the sockets alone: only what entering the room
/// asks for (password, visibility) closes them.
#[test]
fn a_change_of_description_keeps_the_sockets() {
    let server = TestServer::start();
    let room = server.create_room("Steady", "public", None);
    let owner = room["owner_token"].as_str().unwrap();
    let mut ann = server.ws("/chats/2/ws");
    ann.join("ann");
    let change = json!({"title": "Steady still", "description": "new words"});
    assert_eq!(
        server
            .send("PUT", "/chats/2", Some(owner), Some(&change))
            .status,
        200
    );
    ann.say("still here");
    let event = ann.next_event_where("the message", |e| e["event_type"] == "send");
    assert_eq!(event["msg"], "still here");
}

/// A `join` on a socket whose handshake token has expired meanwhile is refused with 403;
/// the socket stays open (it may still be told things), and a fresh token joins.
#[test]
fn a_join_after_the_handshake_token_expired_is_refused_403() {
    let server = TestServer::start_with(|c| c.token_ttl = Duration::from_secs(2));
    server.create_room("Brief", "private", Some(PASSWORD));
    let token = server.token("Brief", "ann", PASSWORD);
    let exp = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["exp"]
            .as_u64()
            .unwrap()
    };
    let mut ann = ws_with_token(&server, 2, &token);
    ann.join("ann");
    // Frames of one socket are handled in order: the leave is done before the next join.
    ann.send_json(&json!({"event_type": "leave"}));
    // Waiting for the clock, not for another thread: the token's `exp` must pass.
    let deadline = Instant::now() + TIMEOUT;
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= exp
    {
        assert!(Instant::now() < deadline, "the token never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    ann.send_json(&json!({"event_type": "join", "name": "ann"}));
    let refused = ann.next_event();
    assert_eq!(refused, error_event(403));
    ann.say("anyone?");
    let not_joined = ann.next_event();
    assert_eq!(not_joined["error"]["code"], 201);
    let fresh = server.token("Brief", "ann", PASSWORD);
    ws_with_token(&server, 2, &fresh).join("ann");
}

/// One raw HTTP/1.1 request to `addr` and its whole answer, with the `Date` header left out
/// (the one part that may differ between two answers given a second apart).
fn raw(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let length = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n{length}\r\n{body}");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A WebSocket handshake for `path` to the socket listener, raw, and its whole answer.
fn raw_handshake(server: &TestServer, path: &str, extra: &str) -> String {
    let head = format!(
        "GET {path} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}"
    );
    raw(server.ws_addr, head.trim_end(), "")
}

/// Every path, asked for a hidden room by id without a valid token (none, or another
/// room's), answers byte for byte what it answers for an id that was never used: 404, code
/// 101, the same headers. By title the room answers as before.
#[test]
fn a_hidden_room_by_id_answers_exactly_as_a_missing_one() {
    let server = TestServer::start();
    server.create_room("Den", "hidden", Some(PASSWORD));
    server.create_room("Lounge", "private", Some(PASSWORD));
    let stranger = server.token("Lounge", "eve", PASSWORD);
    let bearer = format!("Authorization: Bearer {stranger}");
    let (hidden, missing) = (2, 99);
    let http = server.http_addr;
    let requests: Vec<(String, &str)> = vec![
        ("GET /chats/{id} HTTP/1.1".into(), ""),
        ("PUT /chats/{id} HTTP/1.1".into(), r#"{"description":"x"}"#),
        ("DELETE /chats/{id} HTTP/1.1".into(), ""),
        ("GET /chats/{id}/messages HTTP/1.1".into(), ""),
        (
            "POST /chats/{id}/token HTTP/1.1".into(),
            r#"{"name":"eve","secret":"open sesame"}"#,
        ),
        ("GET /chats/{id}/token/renew HTTP/1.1".into(), ""),
        (format!("GET /chats/{{id}} HTTP/1.1\r\n{bearer}"), ""),
        (format!("PUT /chats/{{id}} HTTP/1.1\r\n{bearer}"), "{}"),
        (format!("DELETE /chats/{{id}} HTTP/1.1\r\n{bearer}"), ""),
        (
            format!("GET /chats/{{id}}/messages HTTP/1.1\r\n{bearer}"),
            "",
        ),
        (
            format!("GET /chats/{{id}}/token/renew HTTP/1.1\r\n{bearer}"),
            "",
        ),
    ];
    for (head, body) in &requests {
        let of = |id: u64| raw(http, &head.replace("{id}", &id.to_string()), body);
        let (hidden_answer, missing_answer) = (of(hidden), of(missing));
        assert!(
            hidden_answer.starts_with("HTTP/1.1 404 "),
            "{head}: {hidden_answer}"
        );
        let body = hidden_answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, error_body(101, None), "{head}");
        assert_eq!(hidden_answer, missing_answer, "{head}");
    }
    for extra in ["", &format!("{bearer}\r\n")] {
        let hidden_answer = raw_handshake(&server, &format!("/chats/{hidden}/ws"), extra);
        let missing_answer = raw_handshake(&server, &format!("/chats/{missing}/ws"), extra);
        assert!(
            hidden_answer.starts_with("HTTP/1.1 404 "),
            "{hidden_answer}"
        );
        assert_eq!(hidden_answer, missing_answer, "handshake {extra:?}");
    }
    let by_title = server.get("/chats/Den");
    assert_eq!(by_title.status, 200, "{}", by_title.body);
}

/// A token request for a hidden id runs no bcrypt: it is answered as fast as one for a
/// missing id, where a wrong password by title waits for bcrypt (cost 10 here).
#[test]
fn a_token_request_for_a_hidden_id_runs_no_bcrypt() {
    let server = TestServer::start_with(|c| c.bcrypt_cost = 10);
    server.create_room("Den", "hidden", Some(PASSWORD));
    let body = json!({"name": "eve", "secret": "a guess at it"});
    let timed = |path: &str| {
        let started = Instant::now();
        let response = server.post(path, &body);
        (response.status, started.elapsed())
    };
    let (status, by_title) = timed("/chats/Den/token");
    assert_eq!(status, 401);
    let slowest = |path: &str| {
        (0..3)
            .map(|_| {
                let (status, took) = timed(path);
                assert_eq!(status, 404, "{path}");
                took
            })
            .max()
            .unwrap()
    };
    let (hidden, missing) = (slowest("/chats/2/token"), slowest("/chats/99/token"));
    assert!(
        hidden * 4 < by_title && missing * 4 < by_title,
        "hidden {hidden:?}, missing {missing:?}, bcrypt {by_title:?}"
    );
}
