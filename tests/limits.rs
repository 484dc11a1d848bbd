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

use common::{read_response, Response, TestServer, TIMEOUT};
use prometheus::Scrape;
use serde_json::{json, Value};

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
