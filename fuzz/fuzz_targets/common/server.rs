//! The real server the network targets (`http_request`, `ws_handshake`) talk to: started
//! once per fuzz process, on port 0, in memory, and reached over real TCP connections.
//!
//! One input is one connection: its bytes are written, the writing half is shut (so the
//! server sees the end of the request at once and never waits for its read timeout), and
//! the answer is read to the end. An answer that does not end within [`ANSWER_DEADLINE`]
//! (well past the server's own read timeout) is a hang and panics, which libFuzzer records
//! as a crash with the input. After each input the target checks the server still serves.

// Shared by two targets, each of which uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chitchat::Config;

/// How long an answer may take to end. The server gives up on a silent client after
/// [`SERVER_TIMEOUT`]; anything much longer is the server stuck.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// The server's read and write timeouts.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the fuzzed server listens.
pub struct Addrs {
    pub http: SocketAddr,
    pub ws: SocketAddr,
}

/// The server, started on first use and kept for the life of the process.
pub fn server() -> &'static Addrs {
    static SERVER: OnceLock<Addrs> = OnceLock::new();
    SERVER.get_or_init(|| {
        // libFuzzer's `main` is not Rust's, so SIGPIPE is not ignored as it is in
        // `chitchat`'s binary: a write to a closed socket would kill the process.
        // SAFETY: setting a signal's disposition to SIG_IGN, before any socket exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let config = Config {
            address: "127.0.0.1:0".into(),
            ws_address: "127.0.0.1:0".into(),
            db_path: None,
            log_file: None,
            bcrypt_cost: 4,
            secret_key: Some("fuzz-secret".into()),
            read_timeout: SERVER_TIMEOUT,
            write_timeout: SERVER_TIMEOUT,
            // A whole head or body must arrive by then too (SPEC, Limits), so no input can
            // hold a connection past ANSWER_DEADLINE however it is cut.
            head_timeout: Some(SERVER_TIMEOUT),
            body_timeout: Some(SERVER_TIMEOUT),
            ..Default::default()
        };
        let running = chitchat::start(config).expect("the fuzzed server starts");
        let addrs = Addrs {
            http: running.http_addr(),
            ws: running.ws_addr(),
        };
        // Serves until the process ends; dropping `Running` would not stop it either.
        std::mem::forget(running);
        addrs
    })
}

/// What came back on one connection.
pub struct Answer {
    pub bytes: Vec<u8>,
    /// The connection ended with a reset (or another error) rather than an orderly close.
    pub reset: bool,
}

/// Writes `input` to a new connection to `addr`, shuts the writing half, and reads the
/// answer to its end. Panics (a finding) if the end does not come within the deadline.
pub fn exchange(addr: SocketAddr, input: &[u8]) -> Answer {
    exchange_in_two(addr, input, None)
}

/// Like [`exchange`], for a WebSocket: writes `handshake`, and when the answer's headers say
/// `101`, then writes `after` (frames: a client may only send them once upgraded); then
/// shuts the writing half and reads to the end. `after` is not sent after a refusal.
pub fn exchange_in_two(addr: SocketAddr, handshake: &[u8], after: Option<&[u8]>) -> Answer {
    let deadline = Instant::now() + ANSWER_DEADLINE;
    let mut stream = connect(addr);
    // The server may answer and close before reading everything (a 413, a bad request
    // line): a failed write is then expected, and the answer is still read.
    let _ = stream.write_all(handshake);
    let mut answer = Answer {
        bytes: Vec::new(),
        reset: false,
    };
    if let Some(after) = after {
        // A handshake the server is still waiting to see the end of gets no answer until
        // its read timeout: give up waiting soon, and end the input instead.
        let patience = (Instant::now() + UPGRADE_PATIENCE).min(deadline);
        let upgraded = read_until(&mut stream, &mut answer, patience, false, |bytes| {
            find(bytes, b"\r\n\r\n").is_some()
        });
        if upgraded && answer.bytes.starts_with(b"HTTP/1.1 101 ") {
            let _ = stream.write_all(after);
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    read_until(&mut stream, &mut answer, deadline, true, |_| false);
    answer
}

/// How long [`exchange_in_two`] waits for a handshake's answer before it ends the input.
const UPGRADE_PATIENCE: Duration = Duration::from_millis(300);

/// Reads into `answer` until `done` says so (true), the connection ends or `until` passes
/// (false). Past `until` is a hang, and panics, when `hang` is set.
fn read_until(
    stream: &mut TcpStream,
    answer: &mut Answer,
    until: Instant,
    hang: bool,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let mut buffer = [0u8; 16 * 1024];
    while !done(&answer.bytes) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() && !hang {
            return false;
        }
        if left.is_zero() {
            panic!(
                "hang: the answer did not end within {ANSWER_DEADLINE:?}; {} bytes so far: {:?}",
                answer.bytes.len(),
                String::from_utf8_lossy(&answer.bytes[..answer.bytes.len().min(400)])
            );
        }
        stream
            .set_read_timeout(Some(left))
            .expect("a non-zero timeout is accepted");
        match stream.read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => answer.bytes.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(_) => {
                answer.reset = true;
                return false;
            }
        }
    }
    true
}

/// A connection to `addr`, retried briefly: under load the local ports can run short.
fn connect(addr: SocketAddr) -> TcpStream {
    let started = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, ANSWER_DEADLINE) {
            Ok(stream) => return stream,
            Err(e) if started.elapsed() < ANSWER_DEADLINE => {
                if e.kind() == ErrorKind::ConnectionRefused {
                    panic!("the server no longer accepts connections on {addr}: {e}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {addr} within {ANSWER_DEADLINE:?}: {e}"),
        }
    }
}

/// The REST side still answers `GET /healthz` with 200.
pub fn assert_http_alive() {
    let answer = exchange(
        server().http,
        b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.bytes.starts_with(b"HTTP/1.1 200 "),
        "the server stopped serving /healthz: {:?}",
        String::from_utf8_lossy(&answer.bytes)
    );
}

/// The WebSocket side still upgrades a good handshake for the public room.
pub fn assert_ws_alive() {
    let answer = exchange(
        server().ws,
        b"GET /chats/1/ws HTTP/1.1\r\nHost: fuzz\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(
        answer.bytes.starts_with(b"HTTP/1.1 101 "),
        "the WebSocket listener stopped upgrading: {:?}",
        String::from_utf8_lossy(&answer.bytes)
    );
}

/// One HTTP response read off the wire.
pub struct Response {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body; `None` when it cannot be known (an answer to HEAD).
    pub body: Option<Vec<u8>>,
}

impl Response {
    /// The first header called `name` (case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response from the front of `bytes`; returns it and what follows. `head` says
/// the request was HEAD (no body follows whatever the headers say).
pub fn parse_response(bytes: &[u8], head: bool) -> Result<(Response, &[u8]), String> {
    let end = find(bytes, b"\r\n\r\n").ok_or("no end of the headers")?;
    let head_text = std::str::from_utf8(&bytes[..end]).map_err(|_| "headers not UTF-8")?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    let status = parts
        .next()
        .and_then(|s| (s.len() == 3).then(|| s.parse::<u16>().ok()).flatten())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    if !version.starts_with("HTTP/") || parts.next().is_none() {
        return Err(format!("bad status line {status_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut response = Response {
        version,
        status,
        headers,
        body: None,
    };
    let rest = &bytes[end + 4..];
    if head {
        return Ok((response, rest));
    }
    if status < 200 || status == 204 || status == 304 {
        response.body = Some(Vec::new());
        return Ok((response, rest));
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    if chunked {
        let (body, rest) = dechunk(rest)?;
        response.body = Some(body);
        return Ok((response, rest));
    }
    match response.header("Content-Length") {
        Some(length) => {
            let length: usize = length
                .parse()
                .map_err(|_| format!("bad Content-Length {length:?}"))?;
            if rest.len() < length {
                return Err(format!("body cut short: {} of {length} bytes", rest.len()));
            }
            response.body = Some(rest[..length].to_vec());
            Ok((response, &rest[length..]))
        }
        None => {
            response.body = Some(rest.to_vec());
            Ok((response, &[]))
        }
    }
}

fn dechunk(mut bytes: &[u8]) -> Result<(Vec<u8>, &[u8]), String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(bytes, b"\r\n").ok_or("chunk size line cut short")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).map_err(|_| "chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            // No trailers are sent: the last chunk is followed by an empty line.
            let rest = bytes
                .strip_prefix(b"\r\n")
                .ok_or("no end after the last chunk")?;
            return Ok((body, rest));
        }
        if bytes.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = bytes[size..]
            .strip_prefix(b"\r\n")
            .ok_or("no line end after a chunk")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks an error body the server wrote: `{"status":false,"error":{"code":N,...}}`.
pub fn assert_json_error_body(response: &Response, context: &str) {
    let Some(body) = &response.body else { return };
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{context}: a {} with a JSON content type has a body that is not JSON ({e}): {:?}",
            response.status,
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(value["status"], false, "{context}: {value}");
    assert!(value["error"]["code"].is_u64(), "{context}: {value}");
    assert!(value["error"]["error"].is_string(), "{context}: {value}");
}

/// Counts of what the answers were, printed now and then so a run's log says what was
/// reached (statuses, empty answers, resets), not only that nothing broke.
pub struct Tally {
    name: &'static str,
    execs: AtomicU64,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    pub const fn new(name: &'static str) -> Tally {
        Tally {
            name,
            execs: AtomicU64::new(0),
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one outcome; prints the table at 1k, 10k, 100k, ... and every 100k inputs.
    /// `CHITCHAT_FUZZ_VERBOSE=1` prints every outcome (for running a few inputs by hand).
    pub fn count(&self, outcome: impl Into<String>) {
        static VERBOSE: OnceLock<bool> = OnceLock::new();
        let outcome = outcome.into();
        if *VERBOSE.get_or_init(|| std::env::var_os("CHITCHAT_FUZZ_VERBOSE").is_some()) {
            eprintln!("{}: {outcome}", self.name);
        }
        let n = self.execs.fetch_add(1, Ordering::Relaxed) + 1;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(outcome).or_default() += 1;
        if n == 1_000 || n == 10_000 || n.is_multiple_of(100_000) {
            eprintln!("{} after {n} inputs: {counts:?}", self.name);
        }
    }
}
