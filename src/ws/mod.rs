//! The WebSocket listener: accept, one thread per socket, and shutdown with close 1001.
//!
//! Layout of `ws/`, in reading order:
//! - this file: the accept loop, a thread per socket, and the registry of live sockets
//!   (for shutdown);
//! - `handshake`: the whole handshake: room, token, protocol echo, refusals as JSON;
//! - `session`: one socket's chat on its own thread (join / send / leave, heartbeats);
//! - `ending`: how a socket's chat ended: its close code and how `/metrics` counts it;
//! - `frame`: encoding server frames, and the buffered non-blocking writer;
//! - `head`: the handshake's request head, read within its caps and deadline.
//!
//! A socket's thread is woken and closed through its `rooms::Bell`, by its room and, at
//! shutdown, by this listener.
//!
//! The listener has its own port (`ws_address`) so the REST side can stay on tiny_http.
//!
//! Every accepted connection is counted (`max_connections`, and `max_connections_per_ip`
//! for a peer that is not a trusted proxy) before anything else happens to it; the count
//! is a `limits::ConnectionGuard` that moves with the socket, from the handshake thread to
//! the session thread, and is released when the socket's last thread ends, however it
//! ends. A connection past a limit gets its 503 from the accept loop, through the
//! `tiny_http::Refuser` the REST listener's connection limit uses too (one thread drains
//! the refused connections of both listeners; `vendor/tiny_http/PATCHES.md`, patch 6).

mod ending;
mod frame;
mod handshake;
mod head;
mod session;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::limits::ConnectionGuard;
use crate::metrics::CloseReason;
use crate::rooms::Bell;
use crate::sync::lock;
use crate::State;
use session::Session;

/// The stack of a socket's chat thread. A stack is virtual memory: only the pages a thread
/// touches cost RSS, and they stay touched while it lives. A session touches two pages
/// (glibc's thread block and TLS at the top, then its frames down to a join's or a send's
/// deepest call, under 8 KiB from the top), once `Session` travels to its thread boxed:
/// moved by value through std's thread start it cost 2.4 KiB more, and every idle socket
/// kept another page (`make bench`, scenario scale: 21.4 -> 20.0 KiB per socket). A socket
/// with a token keeps the token's checked claims (`token::Pass`): decoding the JWT again
/// at each join took it to five pages. The third page went with glibc's room for
/// `dlopen`'s TLS (`main.rs`) and two deep frames (`clock`, `ClientEvent::parse`).
///
/// The stack is large on purpose: glibc keeps exited threads' stacks for reuse up to
/// 40 MiB of *size*, with their touched pages, so after a wave of leaves 512 KiB stacks
/// leave at most 80 stacks (about 1 MiB of RSS) cached where 128 KiB ones left 320 (5 MiB).
const SESSION_STACK_BYTES: usize = 512 * 1024;
/// The stack of a socket's handshake thread, which parses the request with a 124-header
/// array on the stack and touches five pages. Its size keeps glibc from handing an exited
/// handshake's stack, touched pages and all, to a new session: a cached stack is reused
/// only by a thread asking for between a quarter of its size and all of it (sizes with
/// their guard page), and a session asks for less than a quarter of this. At 2 MiB + 4 KiB
/// it did not: two thirds of the sessions of a join storm ran on handshake stacks and kept
/// a page more each. The size is address space, not memory: a handshake in flight costs the
/// pages it touches, as before (scenario 13's slow heads: +1 MiB of RSS).
const HANDSHAKE_STACK_BYTES: usize = 4 * SESSION_STACK_BYTES + 64 * 1024;
const _: () =
    assert!(HANDSHAKE_STACK_BYTES + GUARD_BYTES > 4 * (SESSION_STACK_BYTES + GUARD_BYTES));
/// The guard page glibc adds to each thread's stack.
const GUARD_BYTES: usize = 4096;
/// How long shutdown waits for sockets to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The running WebSocket side.
pub struct WsServer {
    addr: SocketAddr,
    stopping: AtomicBool,
    /// Live sockets by id, so shutdown can close each with 1001.
    sockets: Mutex<HashMap<u64, Arc<Bell>>>,
    /// Signalled whenever a socket leaves `sockets`.
    socket_ended: Condvar,
    next_id: AtomicU64,
}

impl WsServer {
    /// Starts accepting on `listener`: returns the server and its accept thread.
    /// Connections past the limits are answered through `refuser`.
    pub fn start(
        state: Arc<State>,
        listener: TcpListener,
        refuser: tiny_http::Refuser,
    ) -> io::Result<(Arc<WsServer>, JoinHandle<()>)> {
        let server = Arc::new(WsServer {
            addr: listener.local_addr()?,
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            socket_ended: Condvar::new(),
            next_id: AtomicU64::new(1),
        });
        let accepting = Arc::clone(&server);
        let handle = std::thread::Builder::new()
            .name("ws-accept".into())
            .spawn(move || accepting.accept_loop(&listener, &state, &refuser))?;
        Ok((server, handle))
    }

    /// The address the listener is bound to (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts until shutdown. A failed `accept` (out of descriptors, say) never ends the
    /// loop: it waits, 5 ms doubling to 1 s, and logs once per burst of failures. The policy
    /// is tiny_http's `AcceptBackoff`, the one the REST listener's accept thread follows,
    /// so both listeners behave alike with one implementation.
    fn accept_loop(
        self: &Arc<Self>,
        listener: &TcpListener,
        state: &Arc<State>,
        refuser: &tiny_http::Refuser,
    ) {
        let mut backoff = tiny_http::AcceptBackoff::new("WebSocket listener", module_path!());
        for stream in listener.incoming() {
            if self.stopping.load(SeqCst) {
                return;
            }
            match stream {
                Ok(stream) => {
                    backoff.succeeded();
                    match admit(state, &stream) {
                        Ok(connection) => self.spawn_session(stream, state, connection),
                        Err(error) => refuser.refuse(stream, &error.to_raw_http()),
                    }
                }
                Err(e) => {
                    if let Some(pause) = backoff.failed(&e) {
                        state.metrics.ws_accept_failed();
                        std::thread::sleep(pause);
                    }
                }
            }
        }
    }

    fn spawn_session(
        self: &Arc<Self>,
        stream: TcpStream,
        state: &Arc<State>,
        mut connection: ConnectionGuard,
    ) {
        let id = self.next_id.fetch_add(1, SeqCst);
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(state.config.write_timeout));
        let bell = match Bell::new() {
            Ok(bell) => Arc::new(bell),
            Err(e) => return log::error!("socket {id}: cannot make its bell: {e}"),
        };
        self.lock_sockets().insert(id, Arc::clone(&bell));
        let (server, state) = (Arc::clone(self), Arc::clone(state));
        // The handshake runs on a short-lived thread and the chat on a fresh one, so the
        // handshake's deep stack is not kept by every idle socket.
        let handshake = move || match handshake::accept(&state, stream, &mut connection) {
            Some((ws, admission)) => {
                // Boxed: the thread's start moves its closure by value several times, and
                // each copy is stack that every idle socket keeps (see SESSION_STACK_BYTES).
                let session = Box::new(Session::new(state, id, admission, bell, ws));
                let ended = Arc::clone(&server);
                server.spawn(id, "ws-session", SESSION_STACK_BYTES, move || {
                    session.run();
                    drop(connection);
                    ended.forget(id);
                });
            }
            None => server.forget(id),
        };
        self.spawn(id, "ws-handshake", HANDSHAKE_STACK_BYTES, handshake);
    }

    /// Starts `work` for socket `id` on a thread of its own. A socket whose thread cannot
    /// start, or panics, is dropped and forgotten.
    fn spawn(
        self: &Arc<Self>,
        id: u64,
        name: &str,
        stack_bytes: usize,
        work: impl FnOnce() + Send + 'static,
    ) {
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .stack_size(stack_bytes)
            .spawn(move || {
                if guarded(id, work).is_none() {
                    server.forget(id);
                }
            });
        if let Err(e) = spawned {
            log::error!("socket {id}: cannot start a thread: {e}");
            self.forget(id);
        }
    }

    fn forget(&self, id: u64) {
        self.lock_sockets().remove(&id);
        self.socket_ended.notify_all();
    }

    fn lock_sockets(&self) -> MutexGuard<'_, HashMap<u64, Arc<Bell>>> {
        lock(&self.sockets)
    }

    /// Stops accepting, closes every socket with 1001, and waits (a bounded time) for them
    /// to finish.
    pub fn shutdown(&self) {
        self.stopping.store(true, SeqCst);
        // Wake the accept loop, blocked in `accept`, with a connection of our own.
        let wake_addr = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], a.port()))
            }
            addr => addr,
        };
        let _ = TcpStream::connect_timeout(&wake_addr, Duration::from_secs(1));
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut sockets = self.lock_sockets();
        for bell in sockets.values() {
            bell.close(CloseReason::Shutdown);
        }
        while !sockets.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            sockets = match self.socket_ended.wait_timeout(sockets, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Counts a new connection: in all, and against its peer's address unless the peer is a
/// trusted proxy (then the handshake counts it, once it has read `X-Forwarded-For`).
fn admit(state: &State, stream: &TcpStream) -> Result<ConnectionGuard, ApiError> {
    let limits = &state.limits;
    let mut connection = limits.connections.open()?;
    if let Ok(peer) = stream.peer_addr() {
        if !limits.is_trusted_proxy(peer.ip()) {
            connection.count_address(peer.ip())?;
        }
    }
    Ok(connection)
}

/// Runs `work`, turning a panic into `None` and an error line: a bug in one socket must
/// not take the server down.
fn guarded<T>(id: u64, work: impl FnOnce() -> T) -> Option<T> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    if result.is_err() {
        log::error!("socket {id}: its thread panicked; the socket is dropped");
    }
    result.ok()
}
