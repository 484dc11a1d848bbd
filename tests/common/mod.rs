//! Test support: a real ChitChat server on port 0, and small HTTP and WebSocket clients.
//!
//! Every test starts its own [`TestServer`] (both listeners on 127.0.0.1:0, a fresh secret,
//! the cheapest bcrypt cost) and talks to it over real sockets, the way `curl` and
//! `websocat` would. Every read has a timeout; a helper that gives up panics naming what it
//! was waiting for, so a broken server fails a test instead of hanging it.
//!
//! The few tests that need a real process (the ready line, exit codes, signals, `kill -9`)
//! run the `chitchat` binary through [`Binary`], in a [`Scratch`] directory of their own.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use chitchat::Config;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::Request;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before it counts as a hang.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A running server, stopped when dropped.
pub struct TestServer {
    /// The REST listener's address.
    pub http_addr: SocketAddr,
    /// The WebSocket listener's address.
    pub ws_addr: SocketAddr,
    /// The secret tokens are signed with.
    pub secret: String,
    running: Option<chitchat::Running>,
}

/// The operator's key every [`TestServer`] is started with (`admin_key`): what
/// [`TestServer::put`] and [`TestServer::delete`] present, so that tests about something
/// else than who may change a room can change one. Tests of that rule use `send`.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// The configuration every test starts from: port 0 for both listeners, console-free
/// logging, bcrypt at its minimum cost, a secret of its own, [`ADMIN_KEY`], and no
/// database (rooms and history in memory only; tests/persistence.rs sets `db_path`).
pub fn test_config() -> Config {
    Config {
        address: "127.0.0.1:0".into(),
        ws_address: "127.0.0.1:0".into(),
        secret_key: Some(format!("test-secret-{}", std::process::id())),
        admin_key: Some(ADMIN_KEY.into()),
        log_file: None,
        bcrypt_cost: 4,
        db_path: None,
        ..Config::default()
    }
}

impl TestServer {
    /// Starts a server with [`test_config`].
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// Starts a server with [`test_config`] adjusted by `adjust`.
    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        adjust(&mut config);
        let secret = config.secret_key.clone().unwrap_or_default();
        let running = chitchat::start(config).expect("the test server starts");
        TestServer {
            http_addr: running.http_addr(),
            ws_addr: running.ws_addr(),
            secret,
            running: Some(running),
        }
    }

    /// Stops the server now, the way SIGTERM would (sockets get close code 1001).
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown();
        }
    }

    /// Sends one HTTP/1.1 request with `Connection: close` and reads the whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        http_request(self.http_addr, method, path, headers, body)
    }

    /// `method path` with an optional bearer token and an optional JSON body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.request(method, path, &headers, body.as_deref())
    }

    pub fn get(&self, path: &str) -> Response {
        self.send("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.send("POST", path, None, Some(body))
    }

    /// `PUT` as the operator (with [`ADMIN_KEY`]).
    pub fn put(&self, path: &str, body: &Value) -> Response {
        self.send("PUT", path, Some(ADMIN_KEY), Some(body))
    }

    /// `DELETE` as the operator (with [`ADMIN_KEY`]).
    pub fn delete(&self, path: &str) -> Response {
        self.send("DELETE", path, Some(ADMIN_KEY), None)
    }

    /// Creates a room and returns its JSON, `owner_token` included; panics unless the
    /// answer is 201.
    pub fn create_room(&self, title: &str, visibility: &str, password: Option<&str>) -> Value {
        let mut body = json!({"title": title, "description": "", "visibility": visibility});
        if let Some(password) = password {
            body["password"] = json!(password);
        }
        let response = self.post("/chats", &body);
        assert_eq!(response.status, 201, "create {title}: {}", response.body);
        response.json()
    }

    /// Gets a token for `name` in `room` (an id or a title) and returns it; panics unless 201.
    pub fn token(&self, room: &str, name: &str, secret: &str) -> String {
        let response = self.post(
            &format!("/chats/{room}/token"),
            &json!({"name": name, "secret": secret}),
        );
        assert_eq!(
            response.status, 201,
            "token for {name} in {room}: {}",
            response.body
        );
        response.json()["token"]
            .as_str()
            .expect("a token string")
            .to_owned()
    }

    /// Opens a WebSocket to `path` (e.g. `/chats/1/ws`); panics if the handshake fails.
    pub fn ws(&self, path: &str) -> Client {
        ws_connect(self.ws_addr, path)
    }

    /// Opens a WebSocket to `path` on a socket whose receive buffer is set to `bytes` before
    /// it connects: a client whose kernel takes little at a time, so the server's writes to
    /// it are cut short.
    pub fn ws_with_receive_buffer(&self, path: &str, bytes: usize) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(self.ws_addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.set_recv_buffer_size(bytes).unwrap();
        socket
            .connect(&self.ws_addr.into())
            .expect("connect to the WebSocket listener");
        let url = self.ws_url(path);
        ws_request_over(socket.into(), url.as_str().into_client_request().unwrap())
            .unwrap_or_else(|e| panic!("WebSocket handshake to {url} failed: {e}"))
    }

    /// The `ws://` URL of `path` on this server.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws_addr, path)
    }

    /// Opens a WebSocket with a prepared request (extra headers, subprotocols).
    pub fn ws_request(&self, request: Request<()>) -> Result<Client, tungstenite::Error> {
        ws_request_to(self.ws_addr, request)
    }
}

/// Opens a WebSocket to the listener at `addr` with a prepared request: for servers the test
/// did not start in-process (the binary), and for [`TestServer::ws_request`].
pub fn ws_request_to(addr: SocketAddr, request: Request<()>) -> Result<Client, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("connect to the WebSocket listener");
    ws_request_over(stream, request)
}

/// Runs the handshake of `request` on a connected `stream`.
fn ws_request_over(stream: TcpStream, request: Request<()>) -> Result<Client, tungstenite::Error> {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (socket, response) =
        tungstenite::client(request, MaybeTlsStream::Plain(stream)).map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("handshake interrupted"),
        })?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok(Client { socket, protocol })
}

/// Opens a WebSocket to `path` on the listener at `addr`; panics if the handshake fails.
pub fn ws_connect(addr: SocketAddr, path: &str) -> Client {
    let url = format!("ws://{addr}{path}");
    ws_request_to(addr, url.as_str().into_client_request().unwrap())
        .unwrap_or_else(|e| panic!("WebSocket handshake to {url} failed: {e}"))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The body parsed as JSON; panics (showing the body) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a whole `Connection: close` response: status line, headers, then the body (by
/// Content-Length when given, decoded when chunked, else to the end).
pub fn read_response(stream: TcpStream) -> Response {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read the status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = vec![];
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read a header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("a header line has a colon");
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = vec![];
    match length {
        // tiny_http chunks any body of 32 KiB or more (a long room list, for one).
        None if chunked => read_chunks(&mut reader, &mut body),
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).expect("read the body");
        }
        None => {
            reader.read_to_end(&mut body).expect("read the body");
        }
    }
    Response {
        status,
        headers,
        body: String::from_utf8(body).expect("a UTF-8 body"),
    }
}

/// Reads a chunked body into `body`: each chunk's hex size line, its bytes and CRLF, up to
/// the empty last chunk and the (empty) trailer.
fn read_chunks(reader: &mut impl BufRead, body: &mut Vec<u8>) {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("read a chunk size");
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|e| panic!("bad chunk size line {line:?}: {e}"));
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).expect("read a chunk");
        assert_eq!(
            body.split_off(start + size),
            b"\r\n",
            "a chunk ends with CRLF"
        );
        if size == 0 {
            return;
        }
    }
}

/// A WebSocket client with helpers that never wait forever.
pub struct Client {
    pub socket: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The `Sec-WebSocket-Protocol` the server echoed, if any.
    pub protocol: Option<String>,
}

impl Client {
    /// Sends one JSON text frame.
    pub fn send_json(&mut self, event: &Value) {
        self.socket
            .send(Message::text(event.to_string()))
            .expect("send a frame");
    }

    /// Joins the room as `name` and returns the join broadcast this socket receives.
    pub fn join(&mut self, name: &str) -> Value {
        self.send_json(&json!({"event_type": "join", "name": name, "color": "#123456"}));
        self.next_event_where(&format!("{name}'s own join"), |e| {
            e["event_type"] == "join" && e["name"] == name
        })
    }

    /// Sends a chat message (the `name` the frame claims is ignored by the server).
    pub fn say(&mut self, msg: &str) {
        self.send_json(&json!({"event_type": "send", "msg": msg}));
    }

    /// The next message of any kind, or `None` on timeout.
    pub fn next_message(&mut self, within: Duration) -> Option<Message> {
        set_read_timeout(&self.socket, within);
        match self.socket.read() {
            Ok(message) => Some(message),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading a frame failed: {e}"),
        }
    }

    /// The next JSON text event; panics on timeout, on a close, or on a non-JSON frame.
    pub fn next_event(&mut self) -> Value {
        self.next_event_where("any event", |_| true)
    }

    /// Skips events until one satisfies `wanted`; panics naming `what` on timeout.
    pub fn next_event_where(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left.max(Duration::from_millis(1))) {
                Some(Message::Text(text)) => {
                    let event: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("event is not JSON ({e}): {text}"));
                    if wanted(&event) {
                        return event;
                    }
                }
                Some(Message::Close(frame)) => {
                    panic!("socket closed ({frame:?}) while awaiting {what}")
                }
                Some(_) => {}
                None => panic!("timed out awaiting {what}"),
            }
            assert!(Instant::now() < deadline, "timed out awaiting {what}");
        }
    }

    /// Reads until the server's close frame and returns its code; panics on timeout.
    pub fn expect_close(&mut self) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            set_read_timeout(
                &self.socket,
                deadline.saturating_duration_since(Instant::now()),
            );
            match self.socket.read() {
                Ok(Message::Close(Some(frame))) => return frame.code.into(),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => {}
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("timed out awaiting a close frame");
    }
}

fn set_read_timeout(socket: &WebSocket<MaybeTlsStream<TcpStream>>, within: Duration) {
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .unwrap();
    }
}

// Helpers for the REST, token and command-line tests (issue 3).

/// The message SPEC's error table gives `code`, plus the routing errors the server adds
/// (404 unknown path, 405 wrong method, 413 body too large) and 607 (a cross-site request).
/// Panics on any other code.
pub fn error_message(code: u16) -> &'static str {
    match code {
        101 => "Room error: Room not found",
        102 => "Room error: Duplicate room",
        103 => "Room error: Invalid JSON",
        104 => "Room error: Unauthorized operation",
        105 => "Room error: Invalid content",
        201 => "Client error: User not found",
        202 => "Client error: Duplicate username",
        203 => "Client error: Invalid JSON",
        204 => "Client error: Unauthorized operation",
        301 => "Could not establish session",
        303 => "Invalid JSON",
        304 => "Unauthorized operation",
        305 => "Unsupported client device",
        401 => "Token error: Invalid signature",
        402 => "Token error: Unauthorized signing method",
        403 => "Token error: Invalid token",
        404 => "Not found",
        405 => "Method not allowed",
        413 => "Request body too large",
        606 => "Limit error: Too many rooms",
        607 => "Origin not allowed",
        _ => panic!("no error code {code} in SPEC"),
    }
}

/// The whole HTTP error body SPEC prescribes for `code`, blaming `field` when given:
/// `{"status":false,"error":{"code":C,"error":"<message>","field":"<field>"}}`.
pub fn error_body(code: u16, field: Option<&str>) -> Value {
    let mut detail = json!({"code": code, "error": error_message(code)});
    if let Some(field) = field {
        detail["field"] = json!(field);
    }
    json!({"status": false, "error": detail})
}

/// True if `text` is an RFC 3339 date-time such as `2026-11-28T15:19:28.123Z` (the fraction
/// is optional; the zone is `Z` or `+hh:mm` / `-hh:mm`).
pub fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| !b.is_empty() && b.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, allowed: &[u8]| bytes.get(i).is_some_and(|b| allowed.contains(b));
    let date_time = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let width = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if width == 0 {
            return false;
        }
        rest = &fraction[width..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// A room's JSON without `createdAt` and `updatedAt`, after checking both are RFC 3339
/// strings, so the rest can be compared whole with `json!`; a created room's `owner_token`
/// is left out too, after checking it is a JWT (tests/owners.rs looks inside).
pub fn room_without_times(room: &Value) -> Value {
    let mut copy = room.clone();
    let object = copy
        .as_object_mut()
        .unwrap_or_else(|| panic!("a room is a JSON object: {room}"));
    if let Some(token) = object.remove("owner_token") {
        let parts = token.as_str().map_or(0, |t| t.split('.').count());
        assert_eq!(parts, 3, "owner_token is not a JWT: {token}");
    }
    for key in ["createdAt", "updatedAt"] {
        let time = object
            .remove(key)
            .unwrap_or_else(|| panic!("the room has no {key}"));
        let time = time
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not a string: {time}"));
        assert!(is_rfc3339(time), "{key} is not RFC 3339: {time:?}");
    }
    copy
}

/// Sends one HTTP/1.1 request to `addr` and reads the whole response: [`TestServer::request`]
/// for servers the test did not start in-process (the binary, or from other threads).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // The server may answer (413) and close before it has read everything.
        let _ = stream.write_all(body);
    }
    read_response(stream)
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch {
    pub dir: std::path::PathBuf,
}

impl Scratch {
    /// A fresh, empty directory named after the test.
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("chitchat-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch { dir }
    }

    /// The path of `name` inside the directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }

    /// Writes a JSON configuration file and returns its path as a string.
    pub fn config(&self, name: &str, config: &Value) -> String {
        self.write(name, &config.to_string()).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One line the binary printed, and the stream it came from.
#[derive(Debug, Clone)]
pub struct Line {
    /// True for stdout, false for stderr.
    pub stdout: bool,
    /// The line without its newline.
    pub text: String,
}

/// The `chitchat` binary (`CARGO_BIN_EXE_chitchat`) running as a child process, both its
/// output streams read line by line as they come. Killed with SIGKILL and reaped when
/// dropped, so a test that fails half-way leaves no server behind.
pub struct Binary {
    child: Child,
    /// Lines from the two reader threads; disconnected once both streams have ended.
    lines: Receiver<Line>,
    /// Every line received so far, in the order received.
    seen: Vec<Line>,
}

/// How a [`Binary`] ended.
#[derive(Debug)]
pub struct Exit {
    /// Its exit status: code 0 after a clean shutdown, 2 after a bad configuration.
    pub status: ExitStatus,
    /// Everything it printed, both streams, one line each.
    pub output: String,
    /// Its stderr alone.
    pub stderr: String,
}

impl Binary {
    /// Starts the binary in `dir` with `args` (e.g. `["--config", path]`); its environment has
    /// no `PORT`, `WS_PORT`, `SECRET_KEY` or `GLIBC_TUNABLES` other than those in `env`.
    pub fn spawn(dir: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chitchat"))
            .args(args)
            .current_dir(&dir.dir)
            .env_remove("PORT")
            .env_remove("WS_PORT")
            .env_remove("SECRET_KEY")
            .env_remove("GLIBC_TUNABLES")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the chitchat binary");
        let (sender, lines) = mpsc::channel();
        forward_lines(
            child.stdout.take().expect("piped stdout"),
            true,
            sender.clone(),
        );
        forward_lines(child.stderr.take().expect("piped stderr"), false, sender);
        Binary {
            child,
            lines,
            seen: vec![],
        }
    }

    /// Writes `config` to `config.json` in `dir` and starts the binary there with `--config`
    /// naming that file; `env` as for [`Binary::spawn`].
    pub fn spawn_with_config(dir: &Scratch, config: &Value, env: &[(&str, &str)]) -> Binary {
        let path = dir.config("config.json", config);
        Binary::spawn(dir, &["--config", &path], env)
    }

    /// Starts the binary in `dir` on free ports with its database `chitchat.db` there,
    /// quiet logs, bcrypt at its cheapest and `secret` as `SECRET_KEY`, so that restarts on
    /// the same directory keep rooms, history and tokens.
    pub fn spawn_on_database(dir: &Scratch, secret: &str) -> Binary {
        Binary::spawn_on_database_with(dir, secret, json!({}))
    }

    /// [`Binary::spawn_on_database`] with the keys of `extra` added to its configuration.
    pub fn spawn_on_database_with(dir: &Scratch, secret: &str, extra: Value) -> Binary {
        let mut config = json!({
            "address": "127.0.0.1:0",
            "ws_address": "127.0.0.1:0",
            "log_file": null,
            "log_level": "warn",
            "bcrypt_cost": 4,
            "db_path": "chitchat.db",
        });
        if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
            config.extend(extra.clone());
        }
        Binary::spawn_with_config(dir, &config, &[("SECRET_KEY", secret)])
    }

    /// The process id of the running binary.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the ready line on stdout, checks it is exactly `ChitChat <version> started at
    /// http://<addr> (ws://<addr>)`, and returns the HTTP and WebSocket addresses it names.
    pub fn ready(&mut self) -> (SocketAddr, SocketAddr) {
        let line = self.wait_for_line("the ready line", |l| {
            l.stdout && l.text.starts_with("ChitChat ")
        });
        parse_ready_line(&line.text)
    }

    /// Waits for an output line satisfying `wanted` (lines already read count); panics naming
    /// `what`, with the output so far, on timeout or if the binary's output ends first.
    pub fn wait_for_line(&mut self, what: &str, wanted: impl Fn(&Line) -> bool) -> Line {
        if let Some(line) = self.seen.iter().find(|l| wanted(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.next_line(deadline, what) {
                Some(line) if wanted(&line) => return line,
                Some(_) => {}
                None => panic!("the server ended before {what}; output:\n{}", self.output()),
            }
        }
    }

    /// Sends `SIG<name>` (`TERM`, `INT`) with kill(1), as a service manager or a shell would.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// `kill -9`, sent at once (no kill(1) to start first): no shutdown, no flush, nothing
    /// but what was already on disk. [`Binary::wait_exit`] reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
    }

    /// Waits for the binary to exit and returns how it ended; panics, showing its output, if
    /// it is still running after [`TIMEOUT`].
    pub fn wait_exit(mut self) -> Exit {
        let deadline = Instant::now() + TIMEOUT;
        // The pipes close as the process exits, so the end of the output comes first.
        while self.next_line(deadline, "the server's exit").is_some() {}
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server closed its output but did not exit; output:\n{}",
                self.output()
            );
            // Polling a process that is already exiting, not synchronising.
            std::thread::sleep(Duration::from_millis(1));
        };
        let stderr = self.seen.iter().filter(|l| !l.stdout);
        Exit {
            status,
            output: self.output(),
            stderr: stderr.map(|l| format!("{}\n", l.text)).collect(),
        }
    }

    /// The next output line (also kept in `seen`), or `None` once both streams have ended;
    /// panics naming `what` if none comes by `deadline`.
    fn next_line(&mut self, deadline: Instant, what: &str) -> Option<Line> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out awaiting {what}; output:\n{}", self.output())
            }
        }
    }

    /// Everything printed so far, both streams, one line each.
    fn output(&self) -> String {
        self.seen.iter().map(|l| format!("{}\n", l.text)).collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Both are no-ops once `wait_exit` has reaped the process (std keeps its status).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards each line of `stream` to `sender` from a thread of its own, until the stream ends.
fn forward_lines(stream: impl Read + Send + 'static, stdout: bool, sender: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        for text in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(Line { stdout, text }).is_err() {
                return;
            }
        }
    });
}

/// Checks `line` is exactly `ChitChat <version> started at http://<addr> (ws://<addr>)` and
/// returns the two addresses.
fn parse_ready_line(line: &str) -> (SocketAddr, SocketAddr) {
    let prefix = format!("ChitChat {} started at http://", env!("CARGO_PKG_VERSION"));
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("ready line {line:?} lacks {prefix:?}"));
    let (http, ws) = rest
        .split_once(" (ws://")
        .unwrap_or_else(|| panic!("ready line {line:?} lacks (ws://"));
    let ws = ws
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("ready line {line:?} does not end with )"));
    let http: SocketAddr = http
        .parse()
        .unwrap_or_else(|e| panic!("bad HTTP address in {line:?}: {e}"));
    let ws: SocketAddr = ws
        .parse()
        .unwrap_or_else(|e| panic!("bad WebSocket address in {line:?}: {e}"));
    (http, ws)
}
