//! The two listeners under resource pressure (SPEC, "Limits"): an accept error never stops
//! a listener, and `max_http_connections` refuses HTTP connections past the limit with an
//! immediate 503 instead of a thread. These pin patches 5 and 6 of `vendor/tiny_http`
//! (see its PATCHES.md): against upstream tiny_http 0.12.0 the REST listener died at its
//! first `EMFILE`, and had no connection limit.
//!
//! Every test runs the real binary (`CARGO_BIN_EXE_chitchat`), killed when its guard
//! drops; every wait polls a condition with a deadline, so a listener that never comes
//! back fails its test instead of hanging it.

mod common;
mod prometheus;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_request, read_response, Scratch, TIMEOUT};
use prometheus::Scrape;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;

/// How long a connect may take before the listener counts as not accepting.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A pause between two attempts while polling for a condition (not a synchronisation).
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// A configuration on free ports, console logging only, no database file, and a read
/// timeout long enough that idle connections stay open for the whole test.
fn config(extra: Value) -> Value {
    let mut config = json!({
        "address": "127.0.0.1:0",
        "ws_address": "127.0.0.1:0",
        "log_file": null,
        "db_path": null,
        "secret_key": "listeners-test-secret",
        "read_timeout_s": 60,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

/// A running `chitchat` process, killed (and reaped) when dropped.
struct Chitchat {
    child: Child,
    http: SocketAddr,
    ws: SocketAddr,
    /// Every line the server wrote to stderr (its console log) so far.
    log: Arc<Mutex<Vec<String>>>,
    _scratch: Scratch,
}

impl Chitchat {
    /// Starts the binary with `config`, its descriptors limited to `nofile` when given, and
    /// waits for the ready line.
    fn start(test: &str, config: &Value, nofile: Option<u32>) -> Chitchat {
        let scratch = Scratch::new(test);
        let path = scratch.config("config.json", config);
        let binary = env!("CARGO_BIN_EXE_chitchat");
        let mut command = match nofile {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!(r#"ulimit -n {limit} && exec "$0" --config "$1""#))
                    .arg(binary)
                    .arg(&path);
                sh
            }
            None => {
                let mut direct = Command::new(binary);
                direct.arg("--config").arg(&path);
                direct
            }
        };
        let mut child = command
            .current_dir(&scratch.dir)
            .env_remove("PORT")
            .env_remove("WS_PORT")
            .env_remove("SECRET_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the chitchat binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (ready, stdout) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = ready.send(line);
            }
        });
        let line = stdout.recv_timeout(TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "no ready line ({e}); log:\n{}",
                log.lock().unwrap().join("\n")
            )
        });
        let (http, ws) = parse_ready_line(&line);
        Chitchat {
            child,
            http,
            ws,
            log,
            _scratch: scratch,
        }
    }

    /// Whether some log line so far contains `text`.
    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    /// The whole log so far, for failure messages.
    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Chitchat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP and WebSocket addresses of `ChitChat <version> started at http://A (ws://B)`.
fn parse_ready_line(line: &str) -> (SocketAddr, SocketAddr) {
    let addresses = line
        .split_once(" started at http://")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(" (ws://"))
        .unwrap_or_else(|| panic!("not a ready line: {line:?}"));
    let parse = |text: &str| -> SocketAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("bad address {text:?} in {line:?}: {e}"))
    };
    (parse(addresses.0), parse(addresses.1))
}

/// Polls `attempt` until it returns `Some`, for at most [`TIMEOUT`]; panics naming `what`
/// and showing the server's log.
fn poll<T>(server: &Chitchat, what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(done) = attempt() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "timed out awaiting {what}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

/// `GET /healthz` on a fresh connection: the status and body, or `None` if the
/// connection or the response failed.
fn try_healthz(addr: SocketAddr) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = serde_json::from_str(raw.split_once("\r\n\r\n")?.1).ok()?;
    Some((status, body))
}

/// The server's `/metrics`, parsed as Prometheus text.
fn scrape(addr: SocketAddr) -> Scrape {
    let response = http_request(addr, "GET", "/metrics", &[], None);
    assert_eq!(response.status, 200, "{}", response.body);
    Scrape::parse(&response.body)
}

/// A WebSocket handshake to room 1 on a fresh connection; `None` if it failed.
fn try_ws_handshake(addr: SocketAddr) -> Option<()> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let url = format!("ws://{addr}/chats/1/ws");
    let (mut socket, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream)).ok()?;
    let _ = socket.close(None);
    Some(())
}

/// A keep-alive connection that has had one `GET /healthz` answered 200, so the server has
/// surely accepted it and counts it as open.
fn open_served_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let response = read_response(stream.try_clone().unwrap());
    assert_eq!(response.status, 200, "{}", response.body);
    stream
}

/// The server's threads now, from `/proc`.
fn thread_count(server: &Chitchat) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("read the server's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// The server's `http-worker` threads now, from `/proc`.
fn http_workers(server: &Chitchat) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .expect("read the server's /proc tasks");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "http-worker")
        .count()
}

/// A raw HTTP response split into status, headers and body.
fn parse_raw_response(raw: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let raw = std::str::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {raw:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line has a colon");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, body.to_owned())
}

/// With its descriptors limited to 200 and idle connections to both ports holding them
/// all, the server cannot accept (or, on the WebSocket side, cannot set up what it
/// accepted); once they close, `GET /healthz` and a WebSocket handshake succeed again.
/// Upstream tiny_http's accept thread ended at its first `EMFILE`, so the REST API stayed
/// dead (connection refused) while the process lived on.
#[test]
fn rest_and_websocket_listeners_come_back_after_descriptors_run_out() {
    const MAX_CONNECTIONS: usize = 400;
    let server = Chitchat::start("listeners-descriptors", &config(json!({})), Some(200));
    assert_eq!(
        try_healthz(server.http),
        Some((200, json!({"status": true})))
    );
    // Until both ports' backlogs are full (a connect hangs) or 400: about 100 connections
    // take the server's descriptors, the rest wait in the backlogs of both listeners.
    let mut idle = Vec::new();
    while idle.len() < MAX_CONNECTIONS {
        let addr = [server.http, server.ws][idle.len() % 2];
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => idle.push(stream),
            Err(_) => break,
        }
    }
    poll(
        &server,
        "the HTTP listener to log an accept failure",
        || {
            server
                .logged("HTTP listener: accepting a connection failed")
                .then_some(())
        },
    );
    assert!(!server.logged("panicked"), "log:\n{}", server.log_text());
    drop(idle);
    // Until the server has seen every idle connection close, the address's connection
    // count may still be full: a 503 (601) is "not yet", anything else is the answer.
    let health = poll(&server, "GET /healthz to answer again", || {
        try_healthz(server.http).filter(|(status, _)| *status != 503)
    });
    assert_eq!(health, (200, json!({"status": true})));
    poll(&server, "a WebSocket handshake to succeed again", || {
        try_ws_handshake(server.ws)
    });
    poll(
        &server,
        "the HTTP listener to log that it accepts again",
        || {
            server
                .logged("HTTP listener: accepting connections again")
                .then_some(())
        },
    );
    // The WebSocket side may have failed after its accepts instead (its bell's
    // eventfd), so only its series is asked for there.
    let metrics = scrape(server.http);
    let http_errors = metrics.value("chitchat_accept_errors_total", &[("listener", "http")]);
    assert!(
        http_errors >= 1.0,
        "HTTP accept errors counted: {http_errors}"
    );
    metrics.value("chitchat_accept_errors_total", &[("listener", "ws")]);
}

/// With `max_http_connections: 3` and three keep-alive connections open, a fourth gets 503
/// with error 601 at once (the held connections would keep their threads for the 60 s
/// read timeout) and is closed gracefully: the whole response, a clean end of stream, and
/// the server still reading what the client sends rather than resetting. Refused
/// connections cost the server no thread. Once one of the three closes, a new connection
/// is served again.
#[test]
fn http_connections_past_max_http_connections_get_503_at_once() {
    let server = Chitchat::start(
        "listeners-limit",
        &config(json!({"max_http_connections": 3})),
        None,
    );
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| open_served_connection(server.http))
        .collect();
    let threads_before = thread_count(&server);

    let started = Instant::now();
    let mut fourth = TcpStream::connect(server.http).expect("connect a fourth time");
    fourth.set_read_timeout(Some(TIMEOUT)).unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    fourth
        .read_to_end(&mut raw)
        .expect("the refusal and then the end of the stream, not a reset");
    let elapsed = started.elapsed();
    // A refused socket closed at once would answer these with a reset (and a reset can
    // destroy a response the client has not read yet); the server drains them instead.
    fourth
        .write_all(b"more")
        .and_then(|()| fourth.write_all(b"more"))
        .expect("the server still reads a refused connection after its response");
    let (status, headers, body) = parse_raw_response(&raw);
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "{\"status\":false,\"error\":{\"code\":601,\"error\":\"Limit error: Too many connections\"}}\n"
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("connection"), Some("close"));
    assert_eq!(
        header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert!(elapsed < Duration::from_secs(5), "the 503 took {elapsed:?}");

    let refused: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.http).expect("connect past the limit"))
        .collect();
    for mut stream in refused {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("a refusal");
        assert_eq!(parse_raw_response(&raw).0, 503);
    }
    assert!(
        thread_count(&server) <= threads_before,
        "refusals started threads: {threads_before} before, {} after",
        thread_count(&server)
    );

    held.pop();
    // Until the server has seen the close, a new connection is still refused.
    let mut refused_meanwhile = 0;
    let health = poll(
        &server,
        "a new connection to be served after one closed",
        || {
            let answer = try_healthz(server.http);
            refused_meanwhile += usize::from(matches!(answer, Some((503, _))));
            answer.filter(|(status, _)| *status == 200)
        },
    );
    assert_eq!(health, (200, json!({"status": true})));
    // The scrape, too, waits for the server to see that connection closed.
    let metrics = poll(&server, "/metrics to be served", || {
        let response = http_request(server.http, "GET", "/metrics", &[], None);
        refused_meanwhile += usize::from(response.status == 503);
        (response.status == 200).then(|| Scrape::parse(&response.body))
    });
    let refusals = metrics.value(
        "chitchat_limit_refusals_total",
        &[("limit", "max_http_connections")],
    );
    assert_eq!(
        refusals,
        (21 + refused_meanwhile) as f64,
        "the fourth connection, the twenty after it and {refused_meanwhile} while one closed"
    );
}

/// `max_http_connections: 0` turns the limit off: twenty keep-alive connections open at
/// once are all served, and so is one more.
#[test]
fn max_http_connections_of_0_serves_every_connection() {
    let server = Chitchat::start(
        "listeners-no-limit",
        &config(json!({"max_http_connections": 0})),
        None,
    );
    let held: Vec<TcpStream> = (0..20)
        .map(|_| open_served_connection(server.http))
        .collect();
    assert_eq!(
        try_healthz(server.http),
        Some((200, json!({"status": true})))
    );
    drop(held);
}

/// The HTTP workers grow with the requests in hand and shrink back when idle (`workers`):
/// at rest 2 `http-worker` threads wait, where 82 waited before; 12 requests whose bodies
/// trickle hold 12 workers at once and a `GET /healthz` beside them is still answered at
/// once; once they are done, the workers beyond the 2 spares end after 5 s idle.
#[test]
fn http_workers_grow_with_requests_in_hand_and_shrink_back_when_idle() {
    let server = Chitchat::start("workers", &config(json!({"body_timeout_s": 60})), None);
    poll(&server, "2 workers waiting at rest", || {
        (http_workers(&server) == 2).then_some(())
    });
    let held: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut stream = TcpStream::connect(server.http).expect("connect");
            // One byte of a 2,000-byte body (tiny_http reads bodies up to 1 KiB itself before
            // handing the request over): its worker waits in `read_json` for the rest.
            stream
                .write_all(b"POST /chats HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{")
                .expect("send the head");
            stream
        })
        .collect();
    poll(
        &server,
        "a worker per request in hand, and one spare",
        || (http_workers(&server) >= 13).then_some(()),
    );
    assert_eq!(
        try_healthz(server.http),
        Some((200, json!({"status": true})))
    );
    drop(held);
    poll(&server, "the workers beyond the spares to end", || {
        (http_workers(&server) == 2).then_some(())
    });
}
