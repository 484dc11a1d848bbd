//! ChitChat: a small, fast chat server. People create rooms over a JSON REST API, get a
//! token for password-protected rooms, and chat in real time over WebSockets.
//!
//! # Why blocking threads and no async runtime
//! ChitChat runs on small hosts and is read in classrooms. A thread per connection, with
//! plain blocking I/O, keeps every request and every socket a straight line of code that a
//! reader can follow, and keeps the dependency tree small (no tokio, no futures executor).
//! The costs (a parked thread per idle socket) are measured in BENCHMARKS.md and kept small
//! on purpose: one thread per socket that sleeps in `poll(2)` on the socket and on its
//! queue's doorbell, a queue that allocates only when used, and small buffers.
//!
//! # Layout, in reading order
//! - [`config`]: defaults, `config.json` (with the Go version's key aliases), environment.
//! - [`error`]: every error a client can see: code, message, HTTP status, JSON.
//! - [`rooms`]: the room map, the one piece of shared state: ids, titles, validation,
//!   members, each room's recent history, and the fan-out of events to them under one lock.
//! - [`store`]: the SQLite file behind the room map, so rooms and history survive a restart.
//! - [`token`]: JWTs (HS256 only), signed with a key derived per room.
//! - [`hasher`]: bcrypt on low-priority threads, so hashing never slows cheap requests.
//! - [`http`]: the REST API and the page, on tiny_http worker threads.
//! - [`ws`]: the WebSocket listener, a thread per socket, and each socket's outbox.
//! - [`event`]: chat events on the wire; [`clock`]: RFC 3339 times; [`web`]: the page.
//!
//! [`start`] builds one [`State`], hands it to both listeners, and returns a [`Running`]
//! server; `main` only parses arguments, sets up logging and waits for a signal.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

pub mod clock;
pub mod config;
pub mod error;
pub mod event;
pub mod hasher;
pub mod http;
pub mod rooms;
pub mod store;
pub mod token;
pub mod web;
pub mod ws;

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::{Config, ConfigError};

use hasher::Hasher;
use rooms::RoomMap;
use store::{Store, StoreError};
use ws::WsServer;

/// HTTP worker threads. bcrypt (tens of milliseconds) runs on them, so there are enough
/// that a burst of token requests does not hold up cheap requests behind it.
const HTTP_WORKERS: usize = 16;
/// An HTTP worker's stack: JSON bodies are capped and bcrypt needs little.
const HTTP_WORKER_STACK_BYTES: usize = 256 * 1024;

/// Everything the request handlers and sockets share, built once in [`start`].
pub struct State {
    /// The configuration the server was started with.
    pub config: Config,
    /// The token signing secret: configured, or generated at start.
    pub secret: String,
    /// Every room and its members.
    pub rooms: RoomMap,
    /// The web page, with the WebSocket port filled in.
    pub page: String,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not bind its address.
    Bind { address: String, reason: String },
    /// No random secret could be generated.
    Secret(std::io::Error),
    /// A thread could not be started.
    Thread(std::io::Error),
    /// The database cannot be used: unreadable, not a database, damaged, locked, or of an
    /// unknown schema. Never answered by starting afresh: `main` exits with code 2.
    Store(StoreError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { address, reason } => {
                write!(f, "cannot listen on {address}: {reason}")
            }
            StartError::Secret(e) => write!(f, "cannot generate a token secret: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            StartError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    http_addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    http_workers: Vec<JoinHandle<()>>,
    ws: Arc<WsServer>,
    ws_accept: JoinHandle<()>,
    state: Arc<State>,
}

/// Opens the database, binds both listeners and starts serving.
pub fn start(config: Config) -> Result<Running, StartError> {
    // First, so that a database problem stops start-up before anything listens.
    let (store, saved) =
        Store::open(config.db_path.as_deref(), config.history_len).map_err(StartError::Store)?;
    let hasher = Hasher::start(config.bcrypt_cost).map_err(StartError::Thread)?;
    let rooms =
        RoomMap::restore(store, saved, hasher, config.history_len).map_err(StartError::Store)?;
    let secret = match &config.secret_key {
        Some(secret) => secret.clone(),
        None => {
            log::warn!("no secret_key or SECRET_KEY configured: using a random one; tokens will not survive a restart");
            random_secret().map_err(StartError::Secret)?
        }
    };
    let bind_error = |address: &str, reason: String| StartError::Bind {
        address: address.to_owned(),
        reason,
    };
    let http_listener = TcpListener::bind(&config.address)
        .map_err(|e| bind_error(&config.address, e.to_string()))?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| bind_error(&config.address, e.to_string()))?;
    let http_options = tiny_http::ServerOptions {
        read_timeout: Some(config.read_timeout),
        write_timeout: Some(config.write_timeout),
        // main's logger keeps only `chitchat*` targets; the accept thread's lines are ours.
        log_target: "chitchat::http",
        // SPEC, Limits: past `max_http_connections` a new connection gets 503, code 601, at
        // once from tiny_http's accept thread, not a queued pool thread; 0 turns it off. The
        // body has the shape and key order of every error body (`error.rs`).
        connection_limit: (config.max_http_connections > 0).then(|| {
            let body = concat!(
                r#"{"status":false,"error":{"code":601,"#,
                r#""error":"Limit error: Too many connections"}}"#,
                "\n"
            );
            tiny_http::ConnectionLimit {
                max: config.max_http_connections,
                refusal: format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            }
        }),
    };
    let http = tiny_http::Server::from_listener_with_options(http_listener, None, http_options)
        .map_err(|e| bind_error(&config.address, e.to_string()))?;
    let ws_listener = TcpListener::bind(&config.ws_address)
        .map_err(|e| bind_error(&config.ws_address, e.to_string()))?;
    let ws_port = ws_listener
        .local_addr()
        .map_err(|e| bind_error(&config.ws_address, e.to_string()))?
        .port();

    let state = Arc::new(State {
        rooms,
        page: web::page(ws_port),
        secret,
        config,
    });
    let http = Arc::new(http);
    let http_workers = (0..HTTP_WORKERS)
        .map(|_| {
            let (http, state) = (Arc::clone(&http), Arc::clone(&state));
            std::thread::Builder::new()
                .name("http-worker".into())
                .stack_size(HTTP_WORKER_STACK_BYTES)
                .spawn(move || http::serve(&http, &state))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(StartError::Thread)?;
    let (ws, ws_accept) =
        WsServer::start(Arc::clone(&state), ws_listener).map_err(StartError::Thread)?;
    Ok(Running {
        http_addr,
        http,
        http_workers,
        ws,
        ws_accept,
        state,
    })
}

impl Running {
    /// Where the REST API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the WebSocket listener listens.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.addr()
    }

    /// Stops accepting, closes every WebSocket with 1001, waits for the HTTP workers, and
    /// writes out the history still queued for the database.
    pub fn shutdown(self) {
        for _ in &self.http_workers {
            self.http.unblock();
        }
        self.ws.shutdown();
        for worker in self.http_workers {
            let _ = worker.join();
        }
        let _ = self.ws_accept.join();
        self.state.rooms.close();
    }
}

/// 32 random bytes from the OS, hex-encoded.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
