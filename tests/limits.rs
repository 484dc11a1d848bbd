//! The limits (SPEC, Limits; issue "limits and metrics"): for each one, its refusal (the
//! exact status, the whole JSON body, `Retry-After`, the refusal counted in `/metrics`),
//! that it lets the client in again (after `Retry-After`, or once a connection is freed),
//! and that nobody else is affected. Also who a client is: `X-Forwarded-For` believed only
//! from a `trusted_proxies` peer.
//!
//! Every test starts its own server with the limit under test made small, so it is reached
//! in a few requests; the windows are the real ones (a minute, a second), and a test that
//! shows a reset waits exactly the `Retry-After` the server gave (1 s), nothing else. The
//! bucket arithmetic itself (burst, refill, sweep) is unit-tested with an injected clock in
//! `src/limits.rs`.

mod common;
mod prometheus;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{read_response, Client, Response, TestServer, TIMEOUT};
use prometheus::Scrape;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderValue, Request};

/// The password of the private rooms these tests create.
const PASSWORD: &str = "correct horse";

/// The whole body of a limit refusal: 601 to 604 (SPEC, New error codes).
fn limit_body(code: u16) -> Value {
    let message = match code {
        601 => "Limit error: Too many connections",
        602 => "Limit error: Too many attempts",
        603 => "Limit error: Too many messages",
        604 => "Limit error: Server busy",
        _ => panic!("no limit code {code}"),
    };
    json!({"status": false, "error": {"code": code, "error": message}})
}

/// The server's `/metrics`, parsed.
fn scrape(server: &TestServer) -> Scrape {
    let response = server.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    Scrape::parse(&response.body)
}

/// How many refusals `/metrics` counts for `limit` (a config key).
fn refusals(server: &TestServer, limit: &str) -> f64 {
    scrape(server).value("chitchat_limit_refusals_total", &[("limit", limit)])
}

// ---------------------------------------------------------------------------------------------
// bcrypt_queue_len

/// bcrypt at a cost that takes a noticeable time even on a fast machine.
const SLOW_BCRYPT_COST: u32 = 11;
/// How long a request that waits for bcrypt may take: on a loaded machine the low-priority
/// hashing threads of a test server may be starved for many seconds.
const BCRYPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates a private room with the server's (slow) bcrypt cost; returns its id.
fn slow_private_room(server: &TestServer) -> u64 {
    let body = json!({"title": "Vault", "visibility": "private", "password": PASSWORD});
    let created = post_waiting_for_bcrypt(server.http_addr, "/chats", &body.to_string());
    assert_eq!(created.status, 201, "{}", created.body);
    created.json()["id"].as_u64().expect("a numeric room id")
}

/// `POST path` with a JSON `body`, waiting up to [`BCRYPT_TIMEOUT`] for the answer.
fn post_waiting_for_bcrypt(addr: SocketAddr, path: &str, body: &str) -> Response {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(BCRYPT_TIMEOUT)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    read_response(stream)
}

/// Token requests at once, as HTTP workers allow (16), each needing bcrypt: with one
/// hashing thread per core and a queue of one, those past `cores + 1` are answered 503 with
/// code 604 and `Retry-After: 1` at once; the others get their tokens. `None` on a machine
/// with so many cores that 16 requests cannot fill the queue.
fn concurrent_token_requests(server: &TestServer, room: u64) -> Option<Vec<Response>> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let requests = cores + 4;
    if requests > 16 {
        eprintln!("skipped: {cores} cores need more concurrent requests than the 16 HTTP workers");
        return None;
    }
    let addr: SocketAddr = server.http_addr;
    let body = json!({"name": "ann", "secret": PASSWORD}).to_string();
    let gate = std::sync::Arc::new(std::sync::Barrier::new(requests));
    let handles: Vec<_> = (0..requests)
        .map(|_| {
            let (gate, body) = (std::sync::Arc::clone(&gate), body.clone());
            std::thread::spawn(move || {
                gate.wait();
                post_waiting_for_bcrypt(addr, &format!("/chats/{room}/token"), &body)
            })
        })
        .collect();
    Some(handles.into_iter().map(|h| h.join().unwrap()).collect())
}

/// With bcrypt's queue full, a token request is answered 503 with code 604 and
/// `Retry-After: 1`, and the refusal is counted; the requests that got in get tokens.
#[test]
fn a_token_request_with_bcrypt_busy_is_answered_503_with_604() {
    let server = TestServer::start_with(|c| {
        c.bcrypt_cost = SLOW_BCRYPT_COST;
        c.bcrypt_queue_len = 1;
        // Every request comes from 127.0.0.1: the queue, not `bcrypt_per_ip`, is under test.
        c.bcrypt_per_ip = 0;
    });
    let room = slow_private_room(&server);
    let Some(responses) = concurrent_token_requests(&server, room) else {
        return;
    };
    let busy: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "no request was refused");
    for response in &busy {
        assert_eq!(response.json(), limit_body(604));
        assert_eq!(response.header("Retry-After"), Some("1"));
    }
    for response in responses.iter().filter(|r| r.status != 503) {
        assert_eq!(response.status, 201, "{}", response.body);
    }
    assert_eq!(refusals(&server, "bcrypt_queue_len"), busy.len() as f64);
}

/// Once the queue has drained, the next request is served.
#[test]
fn a_request_after_bcrypt_was_busy_is_served() {
    let server = TestServer::start_with(|c| {
        c.bcrypt_cost = SLOW_BCRYPT_COST;
        c.bcrypt_queue_len = 1;
        // Every request comes from 127.0.0.1: the queue, not `bcrypt_per_ip`, is under test.
        c.bcrypt_per_ip = 0;
    });
    let room = slow_private_room(&server);
    let Some(responses) = concurrent_token_requests(&server, room) else {
        return;
    };
    assert!(responses.iter().any(|r| r.status == 503));
    let body = json!({"name": "ann", "secret": PASSWORD}).to_string();
    let again = post_waiting_for_bcrypt(server.http_addr, &format!("/chats/{room}/token"), &body);
    assert_eq!(again.status, 201, "{}", again.body);
}

/// A password for a new room needs bcrypt too: with the queue full, creating a private
/// room is 503 with code 604, and the room is not created.
#[test]
fn a_private_room_with_bcrypt_busy_is_answered_503_with_604() {
    let server = TestServer::start_with(|c| {
        c.bcrypt_cost = SLOW_BCRYPT_COST;
        c.bcrypt_queue_len = 1;
        // Every request comes from 127.0.0.1: the queue, not `bcrypt_per_ip`, is under test.
        c.bcrypt_per_ip = 0;
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let requests = cores + 4;
    if requests > 16 {
        eprintln!("skipped: {cores} cores need more concurrent requests than the 16 HTTP workers");
        return;
    }
    let addr = server.http_addr;
    let gate = std::sync::Arc::new(std::sync::Barrier::new(requests));
    let handles: Vec<_> = (0..requests)
        .map(|n| {
            let gate = std::sync::Arc::clone(&gate);
            std::thread::spawn(move || {
                let body = json!({"title": format!("room {n}"), "visibility": "private", "password": PASSWORD}).to_string();
                gate.wait();
                let response = post_waiting_for_bcrypt(addr, "/chats", &body);
                (n, response)
            })
        })
        .collect();
    let responses: Vec<(usize, Response)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&(usize, Response)> = responses.iter().filter(|(_, r)| r.status == 503).collect();
    assert!(!busy.is_empty(), "no creation was refused");
    for (n, response) in busy {
        assert_eq!(response.json(), limit_body(604));
        assert_eq!(response.header("Retry-After"), Some("1"));
        let title = format!("room%20{n}");
        assert_eq!(server.get(&format!("/chats/{title}")).status, 404);
    }
}

/// While bcrypt is saturated, requests that need none are served as usual: a room
/// listing and a chat socket. Token requests are sent without pause the whole time, and
/// bcrypt refuses some of them (604) both before and after the two requests: its queue was
/// full throughout.
#[test]
fn requests_without_bcrypt_are_served_while_bcrypt_is_busy() {
    let server = TestServer::start_with(|c| {
        c.bcrypt_cost = SLOW_BCRYPT_COST;
        c.bcrypt_queue_len = 1;
        // Every request comes from 127.0.0.1: the queue, not `bcrypt_per_ip`, is under test.
        c.bcrypt_per_ip = 0;
    });
    let room = slow_private_room(&server);
    let addr = server.http_addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let load: Vec<_> = (0..cores + 2)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let body = json!({"name": "ann", "secret": PASSWORD}).to_string();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    post_waiting_for_bcrypt(addr, &format!("/chats/{room}/token"), &body);
                }
            })
        })
        .collect();
    let busy = |server: &TestServer| refusals(server, "bcrypt_queue_len");
    let await_refusal_after = |before: f64| {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = busy(&server);
            if now > before {
                return now;
            }
            assert!(Instant::now() < deadline, "bcrypt refused nothing");
        }
    };
    let before = await_refusal_after(0.0);
    let listing = server.get("/chats");
    assert_eq!(listing.status, 200, "{}", listing.body);
    let mut socket = server.ws("/chats/1/ws");
    socket.join("ann");
    await_refusal_after(before);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for thread in load {
        thread.join().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// token_attempts_per_minute

/// `Retry-After` as whole seconds; panics if it is missing or not a number.
fn retry_after(response: &Response) -> u64 {
    let value = response
        .header("Retry-After")
        .unwrap_or_else(|| panic!("no Retry-After on {} {}", response.status, response.body));
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"))
}

/// Asserts `response` is the 429 of a per-minute limit with `Retry-After` in `expected`.
fn assert_too_many_attempts(response: &Response, expected: std::ops::RangeInclusive<u64>) {
    assert_eq!(response.status, 429, "{}", response.body);
    assert_eq!(response.json(), limit_body(602));
    let retry = retry_after(response);
    assert!(
        expected.contains(&retry),
        "Retry-After {retry}, not in {expected:?}"
    );
}

/// `POST path` with a JSON body, from `client` as a proxy would say it (`X-Forwarded-For`).
fn post_as(server: &TestServer, client: &str, path: &str, body: &Value) -> Response {
    let body = body.to_string();
    server.request(
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("X-Forwarded-For", client),
        ],
        Some(body.as_bytes()),
    )
}

/// A token request for `room` with `secret`, from `client` (via `X-Forwarded-For`).
fn token_as(server: &TestServer, client: &str, room: u64, secret: &str) -> Response {
    post_as(
        server,
        client,
        &format!("/chats/{room}/token"),
        &json!({"name": "ann", "secret": secret}),
    )
}

/// A room creation with a fresh title, from `client` (via `X-Forwarded-For`).
fn create_as(server: &TestServer, client: &str, title: &str) -> Response {
    post_as(
        server,
        client,
        "/chats",
        &json!({"title": title, "visibility": "public"}),
    )
}

/// Creates a private room and returns its id.
fn private_room(server: &TestServer, title: &str) -> u64 {
    let room = server.create_room(title, "private", Some(PASSWORD));
    room["id"].as_u64().expect("a numeric room id")
}

/// Past `token_attempts_per_minute` wrong secrets for one room, the next token request is
/// 429 with code 602 and `Retry-After` (60 / 3 = 20 s until one more attempt), even with
/// the right secret, and no bcrypt runs for it.
#[test]
fn failed_token_requests_past_the_limit_are_answered_429_with_retry_after() {
    let server = TestServer::start_with(|c| c.token_attempts_per_minute = 3);
    let room = private_room(&server, "Vault");
    let started = Instant::now();
    for _ in 0..3 {
        let wrong = token_as(&server, "203.0.113.1", room, "wrong secret");
        assert_eq!(wrong.status, 401, "{}", wrong.body);
    }
    let bcrypt_before = scrape(&server).value("chitchat_bcrypt_jobs_total", &[]);
    let refused = token_as(&server, "203.0.113.1", room, PASSWORD);
    let slowest = 20 - started.elapsed().as_secs().min(19);
    assert_too_many_attempts(&refused, slowest..=20);
    let scrape = scrape(&server);
    assert_eq!(
        scrape.value("chitchat_bcrypt_jobs_total", &[]),
        bcrypt_before,
        "bcrypt ran for a refused request"
    );
    assert_eq!(
        scrape.value(
            "chitchat_limit_refusals_total",
            &[("limit", "token_attempts_per_minute")]
        ),
        1.0
    );
}

/// After `Retry-After`, the address may try again.
#[test]
fn a_refused_address_may_try_again_after_retry_after() {
    // 60 a minute: one more every second, so the wait is one second.
    let server = TestServer::start_with(|c| c.token_attempts_per_minute = 60);
    let room = private_room(&server, "Vault");
    let refused = (0..120)
        .map(|_| token_as(&server, "203.0.113.1", room, "wrong secret"))
        .find(|response| response.status == 429)
        .expect("the limit refuses within 120 attempts");
    assert_too_many_attempts(&refused, 1..=1);
    std::thread::sleep(Duration::from_secs(retry_after(&refused)));
    let again = token_as(&server, "203.0.113.1", room, PASSWORD);
    assert_eq!(again.status, 201, "{}", again.body);
}

/// Only failures count: a client with the right secret may ask for tokens again and again.
#[test]
fn successful_token_requests_do_not_count() {
    let server = TestServer::start_with(|c| c.token_attempts_per_minute = 2);
    let room = private_room(&server, "Vault");
    for _ in 0..6 {
        let response = token_as(&server, "203.0.113.1", room, PASSWORD);
        assert_eq!(response.status, 201, "{}", response.body);
    }
}

/// One address refused does not keep another address out of the same room (with a
/// trusted proxy, so that the test can be two addresses).
#[test]
fn an_address_refused_tokens_does_not_keep_another_out() {
    let server = TestServer::start_with(|c| {
        c.token_attempts_per_minute = 1;
        c.trusted_proxies = vec![chitchat::AddrRange::parse("127.0.0.0/8").unwrap()];
    });
    let room = private_room(&server, "Vault");
    assert_eq!(token_as(&server, "203.0.113.1", room, "wrong").status, 401);
    assert_eq!(token_as(&server, "203.0.113.1", room, PASSWORD).status, 429);
    let other = token_as(&server, "203.0.113.2", room, PASSWORD);
    assert_eq!(other.status, 201, "{}", other.body);
}

/// The failures are counted per room: guessing one room's password does not lock the
/// guesser out of another room.
#[test]
fn failed_token_requests_count_per_room() {
    let server = TestServer::start_with(|c| c.token_attempts_per_minute = 1);
    let vault = private_room(&server, "Vault");
    let den = private_room(&server, "Den");
    assert_eq!(token_as(&server, "203.0.113.1", vault, "wrong").status, 401);
    assert_eq!(
        token_as(&server, "203.0.113.1", vault, PASSWORD).status,
        429
    );
    assert_eq!(token_as(&server, "203.0.113.1", den, PASSWORD).status, 201);
}

// ---------------------------------------------------------------------------------------------
// rooms_per_minute

/// Past `rooms_per_minute` rooms from one address, the next creation is 429 with code 602
/// and `Retry-After` (60 / 2 = 30 s), and the room is not created.
#[test]
fn room_creation_past_the_limit_is_answered_429_with_retry_after() {
    let server = TestServer::start_with(|c| c.rooms_per_minute = 2);
    let started = Instant::now();
    for title in ["one", "two"] {
        assert_eq!(create_as(&server, "203.0.113.1", title).status, 201);
    }
    let refused = create_as(&server, "203.0.113.1", "three");
    let slowest = 30 - started.elapsed().as_secs().min(29);
    assert_too_many_attempts(&refused, slowest..=30);
    assert_eq!(server.get("/chats/three").status, 404);
    assert_eq!(refusals(&server, "rooms_per_minute"), 1.0);
}

// -----------------------------------------------------------------------------------------
// max_rooms

/// Past `max_rooms` rooms that exist, a creation is 503 with code 606 from any address,
/// nothing is created and it is counted; a delete makes room again.
#[test]
fn past_max_rooms_a_creation_is_503_606_until_a_room_is_deleted() {
    let server = TestServer::start_with(|c| c.max_rooms = 3);
    for (address, title) in [("203.0.113.1", "two"), ("203.0.113.2", "three")] {
        assert_eq!(create_as(&server, address, title).status, 201);
    }
    let refused = create_as(&server, "203.0.113.3", "four");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json(), common::error_body(606, None));
    assert_eq!(server.get("/chats/four").status, 404);
    assert_eq!(refusals(&server, "max_rooms"), 1.0);
    assert_eq!(server.delete("/chats/two").status, 200);
    assert_eq!(create_as(&server, "203.0.113.3", "four").status, 201);
}

/// After `Retry-After`, the address may create a room again.
#[test]
fn an_address_may_create_rooms_again_after_retry_after() {
    let server = TestServer::start_with(|c| c.rooms_per_minute = 60);
    let refused = (0..120)
        .map(|n| create_as(&server, "203.0.113.1", &format!("room {n}")))
        .find(|response| response.status == 429)
        .expect("the limit refuses within 120 rooms");
    assert_too_many_attempts(&refused, 1..=1);
    std::thread::sleep(Duration::from_secs(retry_after(&refused)));
    let again = create_as(&server, "203.0.113.1", "after the wait");
    assert_eq!(again.status, 201, "{}", again.body);
}

/// Requests that create nothing (a bad title, a duplicate) do not count.
#[test]
fn room_requests_that_create_nothing_do_not_count() {
    let server = TestServer::start_with(|c| c.rooms_per_minute = 1);
    for _ in 0..5 {
        assert_eq!(create_as(&server, "203.0.113.1", "x").status, 400);
    }
    assert_eq!(create_as(&server, "203.0.113.1", "the one").status, 201);
}

/// One address at its limit does not keep another from creating rooms.
#[test]
fn an_address_at_the_room_limit_does_not_keep_another_out() {
    let server = TestServer::start_with(|c| {
        c.rooms_per_minute = 1;
        c.trusted_proxies = vec![chitchat::AddrRange::parse("127.0.0.1").unwrap()];
    });
    assert_eq!(create_as(&server, "203.0.113.1", "first").status, 201);
    assert_eq!(create_as(&server, "203.0.113.1", "second").status, 429);
    assert_eq!(create_as(&server, "203.0.113.2", "third").status, 201);
}

// ---------------------------------------------------------------------------------------------
// trusted_proxies: who the client is

/// Without `trusted_proxies` (the default), `X-Forwarded-For` is ignored: two requests
/// that claim different addresses are one client, the peer.
#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let server = TestServer::start_with(|c| c.rooms_per_minute = 1);
    assert_eq!(create_as(&server, "203.0.113.1", "first").status, 201);
    let claimed_other = create_as(&server, "203.0.113.2", "second");
    assert_too_many_attempts(&claimed_other, 1..=60);
}

/// From a trusted proxy, the client is the first untrusted address from the right: a
/// fake address the client put in front does not give it a new allowance.
#[test]
fn x_forwarded_for_from_a_trusted_peer_names_the_client() {
    let server = TestServer::start_with(|c| {
        c.rooms_per_minute = 1;
        c.trusted_proxies = vec![
            chitchat::AddrRange::parse("127.0.0.1").unwrap(),
            chitchat::AddrRange::parse("10.0.0.0/8").unwrap(),
        ];
    });
    assert_eq!(
        create_as(&server, "203.0.113.1, 10.1.1.1", "first").status,
        201
    );
    let spoofed = create_as(&server, "6.6.6.6, 203.0.113.1, 10.2.2.2", "second");
    assert_too_many_attempts(&spoofed, 1..=60);
}

// ---------------------------------------------------------------------------------------------
// max_connections

/// A WebSocket request for `/chats/1/ws`, with `X-Forwarded-For: client` if given.
fn ws_request(server: &TestServer, client: Option<&str>) -> Request<()> {
    let mut request = server
        .ws_url("/chats/1/ws")
        .into_client_request()
        .expect("a valid ws:// URL");
    if let Some(client) = client {
        let value = HeaderValue::from_str(client).expect("a valid header value");
        request.headers_mut().insert("X-Forwarded-For", value);
    }
    request
}

/// A handshake the server must refuse: its status and whole JSON body.
fn ws_refusal(server: &TestServer, request: Request<()>) -> (u16, Value) {
    match server.ws_request(request) {
        Ok(_) => panic!("the handshake was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "refusal body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            });
            (response.status().as_u16(), json)
        }
        Err(e) => panic!("the handshake failed without an HTTP refusal: {e}"),
    }
}

/// Retries a handshake the server refuses with 601 until it accepts it: a freed
/// connection is released when its socket's thread ends, a moment after the close.
fn await_accepted(server: &TestServer, client: Option<&str>) -> Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match server.ws_request(ws_request(server, client)) {
            Ok(socket) => return socket,
            Err(tungstenite::Error::Http(response)) if response.status() == 503 => {}
            Err(e) => panic!("the handshake failed: {e}"),
        }
        assert!(Instant::now() < deadline, "the connection was never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Closes `client` as a browser would: a close frame, then its answer.
fn close(mut client: Client) {
    let _ = client.socket.close(None);
    while client.socket.read().is_ok() {}
}

/// Two joined sockets still chat: `a` speaks and both hear it.
fn assert_still_chatting(a: &mut Client, b: &mut Client, msg: &str) {
    a.say(msg);
    for client in [a, b] {
        client.next_event_where(msg, |e| e["event_type"] == "send" && e["msg"] == msg);
    }
}

/// Past `max_connections` open sockets a handshake is answered 503 with code 601 and the
/// JSON body (read whole by the client, not cut by a reset), and the refusal is counted.
#[test]
fn a_websocket_past_max_connections_is_answered_503_with_601() {
    let server = TestServer::start_with(|c| c.max_connections = 2);
    let _a = server.ws("/chats/1/ws");
    let _b = server.ws("/chats/1/ws");
    let (status, body) = ws_refusal(&server, ws_request(&server, None));
    assert_eq!((status, body), (503, limit_body(601)));
    assert_eq!(refusals(&server, "max_connections"), 1.0);
}

/// A refused connection is answered from the accept loop: the answer comes whole even to
/// a client that has not sent its request yet, and the connection is then closed cleanly
/// (end of file, no reset).
#[test]
fn a_connection_past_max_connections_is_answered_before_its_request_and_closed() {
    let server = TestServer::start_with(|c| c.max_connections = 1);
    let _a = server.ws("/chats/1/ws");
    let mut raw = std::net::TcpStream::connect(server.ws_addr).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let response = common::read_response(raw.try_clone().unwrap());
    assert_eq!((response.status, response.json()), (503, limit_body(601)));
    assert_eq!(response.header("Connection"), Some("close"));
    // The server has half-closed; it closes for good once the client does.
    let mut rest = Vec::new();
    use std::io::Read;
    assert_eq!(raw.read_to_end(&mut rest).map(|_| rest.len()).ok(), Some(0));
}

/// Once a socket closes, its connection is free again: a new handshake is accepted.
#[test]
fn a_closed_socket_frees_its_connection() {
    let server = TestServer::start_with(|c| c.max_connections = 1);
    let a = server.ws("/chats/1/ws");
    assert_eq!(ws_refusal(&server, ws_request(&server, None)).0, 503);
    close(a);
    let mut b = await_accepted(&server, None);
    b.join("bob");
}

/// A refused handshake disturbs nobody: the sockets already open keep chatting.
#[test]
fn a_refused_connection_leaves_open_sockets_chatting() {
    let server = TestServer::start_with(|c| c.max_connections = 2);
    let mut a = server.ws("/chats/1/ws");
    a.join("ann");
    let mut b = server.ws("/chats/1/ws");
    b.join("bob");
    for _ in 0..5 {
        assert_eq!(ws_refusal(&server, ws_request(&server, None)).0, 503);
    }
    assert_still_chatting(&mut a, &mut b, "still here");
}

// ---------------------------------------------------------------------------------------------
// max_connections_per_ip

/// Past `max_connections_per_ip` sockets from one address, its next handshake is 503 with
/// code 601, counted under its own limit.
#[test]
fn a_websocket_past_max_connections_per_ip_is_answered_503_with_601() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 2);
    let _a = server.ws("/chats/1/ws");
    let _b = server.ws("/chats/1/ws");
    let (status, body) = ws_refusal(&server, ws_request(&server, None));
    assert_eq!((status, body), (503, limit_body(601)));
    let scrape = scrape(&server);
    let limit = |l| scrape.value("chitchat_limit_refusals_total", &[("limit", l)]);
    assert_eq!(limit("max_connections_per_ip"), 1.0);
    assert_eq!(limit("max_connections"), 0.0);
}

/// An address that closes a socket may open another.
#[test]
fn an_address_that_closes_a_socket_may_open_another() {
    let server = TestServer::start_with(|c| c.max_connections_per_ip = 1);
    let a = server.ws("/chats/1/ws");
    assert_eq!(ws_refusal(&server, ws_request(&server, None)).0, 503);
    close(a);
    await_accepted(&server, None).join("bob");
}

/// One address at its limit does not keep another out. (Behind a trusted proxy, so that
/// the test can be two addresses; the handshake then counts the forwarded address.)
#[test]
fn one_address_at_max_connections_per_ip_does_not_keep_another_out() {
    let server = TestServer::start_with(|c| {
        c.max_connections_per_ip = 1;
        c.trusted_proxies = vec![chitchat::AddrRange::parse("127.0.0.1").unwrap()];
    });
    let a = Some("198.51.100.1");
    let _first = server.ws_request(ws_request(&server, a)).unwrap();
    let (status, body) = ws_refusal(&server, ws_request(&server, a));
    assert_eq!((status, body), (503, limit_body(601)));
    let mut other = server
        .ws_request(ws_request(&server, Some("198.51.100.2")))
        .unwrap();
    other.join("bob");
}

// ---------------------------------------------------------------------------------------------
// msgs_per_second, msgs_burst, flood_close_after

/// The error event a socket gets for a frame past its rate.
fn too_many_messages_event() -> Value {
    let mut event = limit_body(603);
    event["event_type"] = json!("error");
    event
}

/// A server whose sockets may send `burst` frames at once, then one a second.
fn server_with_frame_burst(burst: usize, close_after: usize) -> TestServer {
    TestServer::start_with(|c| {
        c.msgs_per_second = 1;
        c.msgs_burst = burst;
        c.flood_close_after = close_after;
    })
}

/// A frame past the socket's burst gets the 603 error event and is not broadcast: the
/// listener hears the allowed messages, then the next one someone else says, and nothing
/// between.
#[test]
fn a_frame_past_the_rate_gets_603_and_is_not_broadcast() {
    let server = server_with_frame_burst(3, 100);
    let mut listener = server.ws("/chats/1/ws");
    listener.join("lee");
    let mut other = server.ws("/chats/1/ws");
    other.join("olga");
    let mut speaker = server.ws("/chats/1/ws");
    speaker.join("sam"); // frame 1 of 3
    speaker.say("a");
    speaker.say("b");
    speaker.say("c: one too many");
    let refusal = speaker.next_event_where("the 603", |e| e["event_type"] == "error");
    assert_eq!(refusal, too_many_messages_event());
    other.say("marker");
    let mut heard = Vec::new();
    while heard.last().map(String::as_str) != Some("marker") {
        let event = listener.next_event_where("a message", |e| e["event_type"] == "send");
        heard.push(event["msg"].as_str().unwrap().to_owned());
    }
    assert_eq!(heard, ["a", "b", "marker"]);
    assert_eq!(refusals(&server, "msgs_per_second"), 1.0);
}

/// Each socket has its own allowance: one socket past its rate leaves the others theirs.
#[test]
fn a_socket_past_its_rate_leaves_others_their_allowance() {
    let server = server_with_frame_burst(3, 100);
    let mut flooder = server.ws("/chats/1/ws");
    flooder.join("flo");
    for n in 0..5 {
        flooder.say(&format!("flood {n}"));
    }
    flooder.next_event_where("a 603", |e| e["event_type"] == "error");
    let mut calm = server.ws("/chats/1/ws");
    calm.join("cal");
    calm.say("one");
    calm.say("two");
    for msg in ["one", "two"] {
        calm.next_event_where(msg, |e| e["msg"] == msg);
    }
}

/// The allowance comes back with time: a second after its burst ran out, the socket may
/// speak again.
#[test]
fn a_socket_may_speak_again_once_its_allowance_refills() {
    let server = server_with_frame_burst(2, 100);
    let mut speaker = server.ws("/chats/1/ws");
    speaker.join("sam");
    speaker.say("a");
    speaker.say("b: refused");
    speaker.next_event_where("the 603", |e| e["event_type"] == "error");
    // One frame a second: the bucket holds one frame again a second after it ran dry.
    std::thread::sleep(Duration::from_secs(1));
    speaker.say("c");
    let event = speaker.next_event_where("c or an error", |e| {
        e["msg"] == "c" || e["event_type"] == "error"
    });
    assert_eq!(event["msg"], "c", "{event}");
}

/// `flood_close_after` refused frames within a minute close the socket with 1008 (after a
/// 603 for each refusal before), and its leave is broadcast; the room goes on.
#[test]
fn a_socket_that_keeps_flooding_is_closed_with_1008_and_its_leave_broadcast() {
    let server = server_with_frame_burst(1, 3);
    let mut listener = server.ws("/chats/1/ws");
    listener.join("lee");
    let mut flooder = server.ws("/chats/1/ws");
    flooder.join("flo"); // the one frame of its burst
    for n in 0..3 {
        flooder.say(&format!("flood {n}"));
    }
    for _ in 0..2 {
        let event = flooder.next_event_where("a 603", |e| e["event_type"] == "error");
        assert_eq!(event, too_many_messages_event());
    }
    assert_eq!(flooder.expect_close(), 1008);
    let leave = listener.next_event_where("flo's leave", |e| e["event_type"] == "leave");
    assert_eq!(leave["name"], "flo");
    assert_eq!(
        scrape(&server).value("chitchat_sockets_closed_total", &[("reason", "flood")]),
        1.0
    );
}
