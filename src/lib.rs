//! ChitChat: a small, fast chat server. People create rooms over a JSON REST API, get a
//! token for password-protected rooms, and chat in real time over WebSockets.
//!
//! # Why blocking threads and no async runtime
//! ChitChat runs on small hosts and is read in classrooms. A thread per connection, with
//! plain blocking I/O, keeps every request and every socket a straight line of code that a
//! reader can follow, and keeps the dependency tree small (no tokio, no futures executor).
//! The cost, a parked thread per idle socket, is measured in BENCHMARKS.md and kept small
//! on purpose: one thread per socket that sleeps in `poll(2)` on the socket and on its
//! bell, a channel that is empty when idle, small buffers. ARCHITECTURE.md draws the
//! threads, the locks and the paths below with the figures behind each decision.
//!
//! # Layout, in reading order
//! One room, REST and chat first; limits, the store and Redis last.
//! - `rooms`: one room's live side (`room`: its members' crossbeam channels, the fan-out,
//!   who waits), how a socket's thread is woken (`bell`, `waker`), the `Rooms`
//!   seam every request and socket goes through, and the one-node backend (`map`: rooms
//!   by id and title, disk first then memory; `catalog`: what a valid room is).
//! - [`event`]: chat events on the wire; `error`: every error a client can see (code,
//!   message, HTTP status, JSON body); [`path`]: `/chats/<id-or-title>/...`, parsed once.
//! - `http`: the REST API, the page, `/healthz` and `/metrics`, answered on the HTTP
//!   workers (`workers`: as many threads as requests in hand, plus two spares;
//!   `http/rooms.rs`: the room endpoints; `http/tokens.rs`: the token endpoints and the
//!   token check).
//! - `ws`: the WebSocket listener, the handshake, and a thread per socket (`session`).
//! - [`token`]: JWTs (HS256 only): room tokens and owner tokens, a key per room and kind,
//!   signed through `hs256` (jsonwebtoken's crypto provider, HMAC-SHA256 and nothing
//!   else); `access`: who may do what to a room (owner token or `admin_key` to change it,
//!   hidden rooms not found by id, each join checked against the room as it is now);
//!   `hasher`: bcrypt on low-priority threads, its queue bounded (`bcrypt_queue_len`).
//! - `origin`: which pages may change anything (`Origin`, `allowed_origins`); `visible`:
//!   the characters a title or name may not hold.
//! - [`config`]: defaults, `config.json` (with the Go version's key aliases), environment.
//! - `limits`: who a client is (`trusted_proxies`), and the limits checked before expensive
//!   work; `metrics`: the counters and the text `/metrics` serves.
//! - `store`: the SQLite file behind the one-node map, and its writer thread.
//! - `cluster`: several nodes (`redis_url`): the same seam over Redis. A reader of one node
//!   never needs to open it.
//! - `clock`: RFC 3339 times; `web`: the page; `sync`: taking locks.
//!
//! # One REST request: `POST /chats`
//! 1. A tiny_http thread reads the request; an HTTP worker (`workers`) takes it and calls
//!    `http::answer`; `http::route` names it `Route::CreateRoom`.
//! 2. `http::rooms::create_room`: the client's `rooms_per_minute`, then `read_json` (the body
//!    through a byte cap) into a `RoomInput`.
//! 3. `RoomMap::create` (`rooms/map.rs`): `RoomInput::new_room` validates; `hash_for`
//!    runs bcrypt on a `hasher` thread, no lock held.
//! 4. The writers' lock; the index's read lock: the title is free, the next id.
//! 5. `Store::save_room`: the store's writer thread commits it; a 201 means it is on disk.
//! 6. The index's write lock: the room goes in. `Reply::json(201, ...)` with `Location`,
//!    written by `http::respond`; any `Err(ApiError)` on the way becomes its JSON error.
//!
//! # One chat message on one node: `{"event_type":"send","msg":"hi"}`
//! 1. The speaker's thread (`ws::session`) wakes in `poll`: its socket is readable.
//!    `read_available` reads the frame, the socket's `FrameLimit` lets it through,
//!    `ClientEvent::parse` checks it, `handle` calls `Membership::send`.
//! 2. `RoomMap::send` (`rooms/map.rs`), under the room's lock (`Room::locked`): the name
//!    this socket joined with, never the frame's; room in every member's channel
//!    (`RoomState::make_space`); the next message id; the event serialised once.
//! 3. `RoomState::broadcast` (`rooms/room.rs`): a `try_send` of the shared `Arc<String>` to
//!    each member's channel; members asleep are noted. The message is kept in the history.
//! 4. The lock released, the speaker's thread hands the noted members to the `room-waker`
//!    thread (`rooms::waker`) and queues the message for the store's writer thread.
//! 5. For each sleeping member the waker calls its bell (`Bell::wake`): its courier
//!    (`ws::frame::Courier`) takes the events from the member's channel and writes them to
//!    the member's socket, one write, the member's thread left asleep; only if the socket
//!    does not take them all is the thread rung (one eventfd write), to write the rest
//!    itself (`Chat::move_events`). A member whose thread is awake writes them itself.
//!
//! Threads crossed: the speaker's, which puts the event in every member's channel; then the
//! waker, which writes to the sleeping members' sockets (ARCHITECTURE.md: why it pays for
//! itself), or a member's own thread when it is awake or its socket is full. Locks: the
//! room's, once; each member's outgoing buffer, once.
//!
//! # With several nodes
//! Step 2 only checks the name and the channels' room; then the speaker's thread runs one
//! Lua script in Redis (`cluster/chat.rs`, no lock held) that numbers the message, keeps it
//! and publishes it. Every node's `redis-subscriber` thread, the speaker's too, hands it to
//! its local room (`RoomState::deliver`), which broadcasts it as in step 3; steps 4 and 5
//! follow. One script at a time gives every socket, on every node, the channel's order.
//!
//! [`start`] builds one [`State`], chooses the backend, hands both to the listeners, and
//! returns a [`Running`] server; `main` only parses arguments, sets up logging, starts and
//! waits for a signal.

#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used)]

mod access;
mod clock;
#[cfg(feature = "redis")]
mod cluster;
pub mod config;
mod error;
pub mod event;
mod hasher;
mod hs256;
mod http;
mod limits;
mod metrics;
mod net;
mod origin;
pub mod path;
mod rooms;
mod store;
mod sync;
pub mod token;
mod visible;
mod web;
mod workers;
mod ws;

use std::fmt;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::{Config, ConfigError};
pub use net::AddrRange;
/// What `token::verify` checks a token against; public so the token fuzz target
/// (`fuzz/fuzz_targets/token.rs`) can build one.
pub use rooms::{RoomKey, Visibility};

#[cfg(feature = "redis")]
use cluster::Cluster;
use hasher::Hasher;
use limits::Limits;
use metrics::Metrics;
use rooms::{Bounds, RoomMap, Rooms};
use store::StoreError;
use workers::Workers;
use ws::WsServer;

/// The HTTP workers' ceiling, for everything but bcrypt. A token request's worker waits,
/// with no lock held, while a `hasher` thread runs bcrypt (tens of milliseconds), so
/// [`start`] allows one more worker per bcrypt job that may wait (`bcrypt_queue_len`) and
/// per hashing thread: with 16 workers and a queue of 64, a flood of wrong passwords left
/// every worker waiting on bcrypt and a `GET /chats/1` waited seconds behind them (the
/// `guess` bench scenario). Past the queue, token requests are refused at once (604) and
/// take no worker for long. Workers are started as requests need them and end when idle
/// (`workers`): at rest only `workers::SPARE` wait.
const HTTP_WORKERS: usize = 16;
/// The most workers added for bcrypt, whatever `bcrypt_queue_len` says (0 is unbounded).
const MAX_BCRYPT_WORKERS: usize = 256;

/// Everything the request handlers and sockets share, built once in [`start`].
pub struct State {
    /// The configuration the server was started with.
    pub config: Config,
    /// The token signing secret: configured, or generated at start.
    pub secret: String,
    /// Every room and its members: one node or several, chosen in [`start`].
    pub rooms: Arc<dyn Rooms>,
    /// Runs bcrypt on threads of its own, for token requests (and, through `rooms`, for
    /// room passwords).
    pub hasher: Hasher,
    /// The web page, with the server's settings (WebSocket port, limits) filled in.
    pub page: String,
    /// The WebSocket listener's port: the page's Content-Security-Policy names it.
    pub ws_port: u16,
    /// The limits, and the per-address state they keep (see `limits`).
    pub limits: Limits,
    /// The counters `/metrics` shows; shared with the bcrypt threads' handle.
    pub metrics: Arc<Metrics>,
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
    /// `redis_url` cannot be used (a Redis that is only down is waited for, not this).
    Redis(String),
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
            StartError::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    http_addr: SocketAddr,
    http_workers: Workers,
    ws: Arc<WsServer>,
    ws_accept: JoinHandle<()>,
    state: Arc<State>,
}

/// Opens the database (or connects to Redis: SPEC, Several nodes), binds both listeners and
/// starts serving.
pub fn start(config: Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let hasher = Hasher::start(
        config.bcrypt_cost,
        config.bcrypt_queue_len,
        Arc::clone(&metrics),
    )
    .map_err(StartError::Thread)?;
    // The backend, chosen once: nothing past this line asks which one runs. First, so that
    // a database problem stops start-up before anything listens.
    let bounds = Bounds {
        queue_len: config.send_queue_len,
        history_len: config.history_len,
        max_rooms: config.max_rooms,
    };
    let rooms: Arc<dyn Rooms> = match &config.redis_url {
        // The URL may carry a password: it is not logged.
        #[cfg(feature = "redis")]
        Some(url) => Cluster::start(url, config.presence_ttl, hasher.clone(), bounds)
            .map_err(StartError::Redis)?,
        // `Config::load` refuses the key in such a build; a `Config` built by hand is
        // refused here, never run as one node while it names a Redis.
        #[cfg(not(feature = "redis"))]
        Some(_) => return Err(StartError::Redis(
            "redis_url is set, but this chitchat was built without Redis (cargo feature `redis`)"
                .into(),
        )),
        None => {
            let (store, saved) = store::open(config.db_path.as_deref(), config.history_len)
                .map_err(StartError::Store)?;
            let map = RoomMap::restore(store, saved, hasher.clone(), bounds)
                .map_err(StartError::Store)?;
            Arc::new(map)
        }
    };
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
    let limits = Limits::new(&config, Arc::clone(&metrics));
    // One thread answers and drains the connections both listeners refuse.
    let refuser = tiny_http::Refuser::start().map_err(StartError::Thread)?;
    let refusal = |kind| error::ApiError::new(kind).to_raw_http();
    let http_options = tiny_http::ServerOptions {
        read_timeout: Some(config.read_timeout),
        write_timeout: Some(config.write_timeout),
        // main's logger keeps only `chitchat*` targets; the accept thread's lines are ours.
        log_target: "chitchat::http",
        // SPEC, Limits: past `max_http_connections`, or `max_http_connections_per_ip` from
        // one peer, a new connection gets 503, code 601, at once from tiny_http's accept
        // thread, not a queued pool thread; 0 turns either off.
        connection_limit: connection_limit(&config, &limits, &refuser),
        // SPEC, Limits: 414 / 431 / 408 with the JSON error body, and close.
        request_limits: tiny_http::RequestLimits {
            max_request_line: limits::MAX_REQUEST_LINE_BYTES,
            max_head_bytes: limits::MAX_HEAD_BYTES,
            max_header_lines: limits::MAX_HEADER_LINES,
            head_timeout: config.head_timeout,
            body_timeout: config.body_timeout,
            uri_too_long: refusal(error::ErrorKind::RequestLineTooLong),
            head_too_large: refusal(error::ErrorKind::HeadTooLarge),
            timed_out: refusal(error::ErrorKind::RequestTimeout),
        },
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
        hasher,
        limits,
        metrics,
        page: web::page(&web::PageSettings::for_server(
            ws_port,
            config.max_message_bytes,
        )),
        ws_port,
        secret,
        config,
    });
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let bcrypt_waiters = match state.config.bcrypt_queue_len {
        0 => MAX_BCRYPT_WORKERS,
        len => len.min(MAX_BCRYPT_WORKERS),
    } + cores;
    let http_workers = Workers::start(
        Arc::new(http),
        Arc::clone(&state),
        HTTP_WORKERS + bcrypt_waiters,
    )
    .map_err(StartError::Thread)?;
    let (ws, ws_accept) =
        WsServer::start(Arc::clone(&state), ws_listener, refuser).map_err(StartError::Thread)?;
    Ok(Running {
        http_addr,
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
        self.ws.shutdown();
        self.http_workers.shutdown();
        let _ = self.ws_accept.join();
        self.state.rooms.close();
    }
}

/// tiny_http's limit on open connections: `max_http_connections` in all, and
/// `max_http_connections_per_ip` per peer; `None` when both are off.
fn connection_limit(
    config: &Config,
    limits: &Limits,
    refuser: &tiny_http::Refuser,
) -> Option<tiny_http::ConnectionLimit> {
    let per_peer = limits.http_peers();
    if config.max_http_connections == 0 && per_peer.is_none() {
        return None;
    }
    Some(tiny_http::ConnectionLimit {
        max: match config.max_http_connections {
            0 => usize::MAX,
            max => max,
        },
        refusal: error::ApiError::new(error::ErrorKind::TooManyConnections).to_raw_http(),
        per_peer: per_peer.map(|peers| Arc::new(peers) as Arc<dyn tiny_http::PeerLimit>),
        refuser: Some(refuser.clone()),
    })
}

/// 32 random bytes from the OS, hex-encoded.
fn random_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
