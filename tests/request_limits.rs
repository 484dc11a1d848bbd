//! What one client may cost the server (issue 19; SPEC, Limits, the second table): bounded
//! request heads on both listeners (414, 431), deadlines for a whole head and a whole body
//! however slowly it trickles (408), HTTP connections per address, and bcrypt jobs per
//! address. Each test fails against the code before issue 19: a request line or head of
//! any size was read whole, a trickling client was never cut off, and nothing counted an
//! address's connections or its successful token requests.
//!
//! The trickling tests send a byte now and then on purpose (that is the attack); the
//! deadlines under test are made short (1 s) so the refusal comes quickly, and each test
//! checks it came by the deadline, not by the much longer `read_timeout_s`.

mod common;
mod prometheus;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{read_response, Response, TestServer, TIMEOUT};
use prometheus::Scrape;
use serde_json::{json, Value};

/// The JSON body of a refused head (SPEC, Limits: code 105 on both listeners).
fn invalid_content() -> Value {
    json!({"status": false, "error": {"code": 105, "error": "Room error: Invalid content"}})
}

/// The JSON body of a request that missed its deadline.
fn timed_out() -> Value {
    json!({"status": false, "error": {"code": 408, "error": "Request timeout"}})
}

/// A deadline short enough for a test, with a `read_timeout_s` ten times longer, so a
/// refusal that comes by the deadline cannot have come from the read timeout.
const DEADLINE: Duration = Duration::from_secs(1);

fn short_deadlines() -> TestServer {
    TestServer::start_with(|c| {
        c.head_timeout = Some(DEADLINE);
        c.body_timeout = Some(DEADLINE);
        c.read_timeout = 10 * DEADLINE;
    })
}

/// Writes `bytes` to `addr` as they are (the server may answer and close before it has read
/// them all) and reads the answer.
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(bytes);
    read_response(stream)
}

/// A GET whose request line is `length` bytes long, CRLF aside.
fn request_line_of(length: usize) -> Vec<u8> {
    let path = "x".repeat(length - "GET / HTTP/1.1".len());
    format!("GET /{path} HTTP/1.1\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A GET with `count` header lines of `size` bytes each.
fn headers_of(count: usize, size: usize) -> Vec<u8> {
    let mut head = String::from("GET /healthz HTTP/1.1\r\nConnection: close\r\n");
    for i in 0..count - 1 {
        let name = format!("X-Filler-{i:03}: ");
        head.push_str(&format!("{name}{}\r\n", "v".repeat(size - name.len())));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A WebSocket handshake for room 1 with `extra` header lines, as raw bytes.
fn ws_handshake(path_padding: usize, extra: &[String]) -> Vec<u8> {
    let mut head = format!(
        "GET /chats/1/ws?pad={} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "p".repeat(path_padding)
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn refusals(server: &TestServer, limit: &str) -> f64 {
    let response = server.get("/metrics");
    Scrape::parse(&response.body).value("chitchat_limit_refusals_total", &[("limit", limit)])
}

// ---------------------------------------------------------------------------------------------
// Bounded heads

/// A request line of 8 KiB is served; one byte more is 414 with the JSON error body.
#[test]
fn a_request_line_over_8_kib_is_answered_414_with_code_105() {
    let server = TestServer::start();
    let at_limit = send_raw(server.http_addr, &request_line_of(8 * 1024));
    assert_eq!(at_limit.status, 404, "{}", at_limit.body);
    let over = send_raw(server.http_addr, &request_line_of(8 * 1024 + 1));
    assert_eq!((over.status, over.json()), (414, invalid_content()));
    assert_eq!(over.header("Content-Type"), Some("application/json"));
    assert_eq!(refusals(&server, "request_line"), 1.0);
}

/// A request line that never ends is cut off: answered 414 at 8 KiB, and the connection
/// closed (after a short linger) while the client is still sending. Before, the line was
/// read into memory for as long as the client sent it.
#[test]
fn an_endless_request_line_is_answered_and_cut_off() {
    let server = TestServer::start();
    let stream = TcpStream::connect(server.http_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut writer = writer;
        let chunk = vec![b'a'; 64 * 1024];
        let began = Instant::now();
        let mut sent = writer.write_all(b"GET /");
        // Bounded in time: the server must end it long before.
        while sent.is_ok() && began.elapsed() < TIMEOUT {
            sent = writer.write_all(&chunk);
        }
        sent.is_err()
    });
    let answer = read_response(stream);
    assert_eq!((answer.status, answer.json()), (414, invalid_content()));
    assert!(sending.join().unwrap(), "still sending after {TIMEOUT:?}");
    assert_eq!(server.get("/healthz").status, 200);
}

/// 100 header lines are served; 101 are 431.
#[test]
fn more_than_100_header_lines_are_answered_431_with_code_105() {
    let server = TestServer::start();
    let at_limit = send_raw(server.http_addr, &headers_of(100, 20));
    assert_eq!(at_limit.status, 200, "{}", at_limit.body);
    let over = send_raw(server.http_addr, &headers_of(101, 20));
    assert_eq!((over.status, over.json()), (431, invalid_content()));
    assert_eq!(refusals(&server, "request_head"), 1.0);
}

/// A head over 32 KiB in few lines is 431.
#[test]
fn a_head_over_32_kib_is_answered_431_with_code_105() {
    let server = TestServer::start();
    let over = send_raw(server.http_addr, &headers_of(6, 7000));
    assert_eq!((over.status, over.json()), (431, invalid_content()));
}

/// A `HEAD` refused for its head gets the same status and headers and no body (RFC 9110,
/// 9.3.2): the body of a 414 or 431 sent to it was found by the `http_request` fuzz target.
#[test]
fn a_head_request_refused_for_its_head_gets_no_body() {
    let server = TestServer::start();
    let too_many_lines = headers_of(101, 20);
    let long_line = request_line_of(8 * 1024 + 1);
    for (request, status) in [(too_many_lines, "431"), (long_line, "414")] {
        let request = [b"HEAD".as_slice(), &request[3..]].concat();
        let mut stream = TcpStream::connect(server.http_addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let _ = stream.write_all(&request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("Content-Length: 76"), "{head}");
        assert_eq!(body, "", "{status}: nothing after the head");
    }
    assert_eq!(server.get("/healthz").status, 200);
}

/// The WebSocket listener answers the same 414 and 431, with the same body; before, it
/// answered 400 (305).
#[test]
fn the_websocket_listener_answers_414_and_431_the_same_way() {
    let server = TestServer::start();
    let long_line = send_raw(server.ws_addr, &ws_handshake(8 * 1024, &[]));
    assert_eq!(
        (long_line.status, long_line.json()),
        (414, invalid_content())
    );
    let many: Vec<String> = (0..101).map(|i| format!("X-Filler-{i}: v")).collect();
    let many_lines = send_raw(server.ws_addr, &ws_handshake(0, &many));
    assert_eq!(
        (many_lines.status, many_lines.json()),
        (431, invalid_content())
    );
    let big: Vec<String> = (0..5)
        .map(|i| format!("X-Big-{i}: {}", "v".repeat(7000)))
        .collect();
    let big_head = send_raw(server.ws_addr, &ws_handshake(0, &big));
    assert_eq!((big_head.status, big_head.json()), (431, invalid_content()));
    assert_eq!(refusals(&server, "request_line"), 1.0);
    assert_eq!(refusals(&server, "request_head"), 2.0);
    // A handshake within the caps still opens a socket.
    let _socket = server.ws("/chats/1/ws");
}

// ---------------------------------------------------------------------------------------------
// Deadlines

/// Sends `start`, then `trickle` one byte every 200 ms until the server answers; returns the
/// answer and how long after `start` it came.
fn trickle(addr: SocketAddr, start: &[u8], trickle: u8) -> (Response, Duration) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(start).unwrap();
    let began = Instant::now();
    let writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut writer = writer;
        // Bounded: 15 s at most, far past any deadline under test.
        for _ in 0..75 {
            std::thread::sleep(Duration::from_millis(200));
            if writer.write_all(&[trickle]).is_err() {
                return;
            }
        }
    });
    let answer = read_response(stream);
    (answer, began.elapsed())
}

/// A head that trickles in is answered 408 by `head_timeout_s`, though every read gets a
/// byte well within `read_timeout_s`. Before, it was never cut off.
#[test]
fn a_trickling_head_is_answered_408_by_head_timeout() {
    let server = short_deadlines();
    let (answer, took) = trickle(server.http_addr, b"GET /healthz HTTP/1.1\r\nX-Slow: ", b'a');
    assert_eq!((answer.status, answer.json()), (408, timed_out()));
    assert!(took < 3 * DEADLINE, "answered after {took:?}");
    assert_eq!(refusals(&server, "head_timeout_s"), 1.0);
}

/// The same on the WebSocket listener.
#[test]
fn a_trickling_handshake_is_answered_408_by_head_timeout() {
    let server = short_deadlines();
    let (answer, took) = trickle(
        server.ws_addr,
        b"GET /chats/1/ws HTTP/1.1\r\nX-Slow: ",
        b'a',
    );
    assert_eq!((answer.status, answer.json()), (408, timed_out()));
    assert!(took < 3 * DEADLINE, "answered after {took:?}");
}

/// A POST whose body trickles in is answered 408 by `body_timeout_s`, both a small body
/// (read before the request reaches a worker) and a large one (read by the worker).
#[test]
fn a_trickling_body_is_answered_408_by_body_timeout() {
    let server = short_deadlines();
    for length in [100, 4000] {
        let head = format!(
            "POST /chats HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
        );
        let (answer, took) = trickle(server.http_addr, head.as_bytes(), b' ');
        assert_eq!(
            (answer.status, answer.json()),
            (408, timed_out()),
            "{length}"
        );
        assert!(took < 3 * DEADLINE, "{length}: answered after {took:?}");
    }
    assert_eq!(refusals(&server, "body_timeout_s"), 2.0);
}

/// More trickling bodies than there are HTTP workers do not keep anyone else waiting
/// longer than the deadline: the workers are given back by then.
#[test]
fn trickling_bodies_hold_no_worker_past_the_deadline() {
    let server = TestServer::start_with(|c| {
        c.body_timeout = Some(DEADLINE);
        c.read_timeout = 10 * DEADLINE;
        // All from 127.0.0.1.
        c.max_http_connections_per_ip = 0;
    });
    // More than the workers (16, plus the bcrypt queue's and one per core).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let clients = 16 + 64 + cores + 4;
    let head = "POST /chats/1/token HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{";
    let slow: Vec<_> = (0..clients)
        .map(|_| {
            let addr = server.http_addr;
            std::thread::spawn(move || trickle(addr, head.as_bytes(), b' ').0.status)
        })
        .collect();
    let began = Instant::now();
    let health = server.get("/healthz");
    assert_eq!(health.status, 200);
    assert!(
        began.elapsed() < 3 * DEADLINE,
        "waited {:?}",
        began.elapsed()
    );
    for handle in slow {
        assert_eq!(handle.join().unwrap(), 408);
    }
}

// ---------------------------------------------------------------------------------------------
// Connections per address

/// Opens a keep-alive connection and has one request answered on it, so the server has
/// surely counted it.
fn counted_connection(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.http_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.ends_with(b"{\"status\":true}\n") {
        let n = stream.read(&mut buf).expect("the keep-alive answer");
        assert!(n > 0, "closed before answering");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Past `max_http_connections_per_ip` a new connection is answered 503 (601) at once and
/// counted; a closed connection frees its place.
#[test]
fn http_connections_past_the_per_address_limit_get_503_at_once() {
    let server = TestServer::start_with(|c| c.max_http_connections_per_ip = 2);
    let first = counted_connection(&server);
    let _second = counted_connection(&server);
    let refused = send_raw(server.http_addr, b"");
    let too_many = json!({"status": false, "error": {"code": 601, "error": "Limit error: Too many connections"}});
    assert_eq!((refused.status, refused.json()), (503, too_many));
    drop(first);
    // Served again once the server has seen the first close.
    let deadline = Instant::now() + TIMEOUT;
    let metrics = loop {
        let response = server.get("/metrics");
        if response.status == 200 {
            break response;
        }
        assert!(Instant::now() < deadline, "never served again");
    };
    let scrape = Scrape::parse(&metrics.body);
    let refused = scrape.value(
        "chitchat_limit_refusals_total",
        &[("limit", "max_http_connections_per_ip")],
    );
    assert!(refused >= 1.0, "{refused}");
}

// ---------------------------------------------------------------------------------------------
// bcrypt per address

/// bcrypt slow enough that a check is surely still running when the test looks.
const SLOW_BCRYPT_COST: u32 = 12;

/// `POST path` with `body` from `client` (through the trusted proxy 127.0.0.1), answered
/// however long bcrypt takes.
fn post_from(addr: SocketAddr, client: &str, path: &str, body: &Value) -> Response {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nConnection: close\r\nX-Forwarded-For: {client}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    read_response(stream)
}

/// Waits until `/metrics` shows `n` addresses with a bcrypt job in flight.
fn await_bcrypt_jobs_from(server: &TestServer, n: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let scrape = Scrape::parse(&server.get("/metrics").body);
        let tracked = scrape.value(
            "chitchat_limit_tracked_addresses",
            &[("limit", "bcrypt_per_ip")],
        );
        if tracked == n {
            return;
        }
        assert!(Instant::now() < deadline, "{tracked} addresses, not {n}");
    }
}

/// With `bcrypt_per_ip` checks of the right password in flight from one address, its next
/// token request is 429 (602, `Retry-After: 1`) before any bcrypt, while another address is
/// served. Before, right passwords counted nothing and one address could fill the queue.
#[test]
fn an_address_past_bcrypt_per_ip_is_answered_429_and_others_are_served() {
    let server = TestServer::start_with(|c| {
        c.bcrypt_per_ip = 1;
        c.bcrypt_cost = SLOW_BCRYPT_COST;
        c.trusted_proxies = vec![chitchat::AddrRange::parse("127.0.0.1").unwrap()];
    });
    let room = json!({"title": "Vault", "visibility": "private", "password": "correct horse"});
    let created = post_from(server.http_addr, "203.0.113.1", "/chats", &room);
    assert_eq!(created.status, 201, "{}", created.body);
    let path = format!("/chats/{}/token", created.json()["id"]);
    let right = json!({"name": "ann", "secret": "correct horse"});
    let addr = server.http_addr;
    let (first_path, first_body) = (path.clone(), right.clone());
    let first =
        std::thread::spawn(move || post_from(addr, "198.51.100.7", &first_path, &first_body));
    await_bcrypt_jobs_from(&server, 1.0);
    let refused = post_from(server.http_addr, "198.51.100.7", &path, &right);
    let too_many =
        json!({"status": false, "error": {"code": 602, "error": "Limit error: Too many attempts"}});
    assert_eq!((refused.status, refused.json()), (429, too_many));
    assert_eq!(refused.header("Retry-After"), Some("1"));
    let other = post_from(server.http_addr, "192.0.2.9", &path, &right);
    assert_eq!(other.status, 201, "{}", other.body);
    assert_eq!(first.join().unwrap().status, 201);
    assert_eq!(refusals(&server, "bcrypt_per_ip"), 1.0);
}
