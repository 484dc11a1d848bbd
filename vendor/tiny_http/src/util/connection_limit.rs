//! ChitChat patch: a limit on the connections open at once.
//!
//! Upstream gives every accepted connection a pool thread of its own, with no bound: a
//! flood of idle connections costs a thread and two descriptors each, until the process
//! runs out. With a [`ConnectionLimit`], the accept thread counts open connections (an
//! [`OpenConnection`] guard, shared by the two halves of the socket, is dropped when the
//! socket is closed) and answers a connection past the limit itself, at once, with the
//! application's refusal; the connection costs no pool thread and never waits behind one.
//!
//! A refused connection is closed gracefully, so the client reads the refusal instead of a
//! reset: the response is written and the write side shut down (the client sees the end of
//! the response), then the [`Refuser`]'s thread reads and discards whatever the client still
//! sends until it closes its side, at most [`LINGER`]. Closing a socket with unread input
//! would send a reset, and a reset can destroy the response before the client reads it.
//! That thread holds at most [`MAX_LINGERING`] connections; past that a refused connection
//! is closed without lingering. It reads each one at most [`READS_PER_POLL`] times per
//! pass, so a client that keeps sending cannot hold it.
//!
//! The [`Refuser`] is public, and cloning it shares its one thread: an application's other
//! listeners (ChitChat's WebSocket listener) refuse their connections through the same
//! thread, with the same bounds, by passing it to [`ConnectionLimit::refuser`] and keeping
//! a clone.
//!
//! A [`PeerLimit`] (`ConnectionLimit::per_peer`) lets the application refuse a connection
//! by its peer's address, the same way: it is asked for a slot on the accept thread, and
//! the slot is held until the connection is closed.

use std::any::Any;
use std::fmt::Debug;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::Counters;

/// How long a refused connection is drained, at most, before it is closed.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// How many refused connections are drained at once, at most (and as many may wait).
pub(crate) const MAX_LINGERING: usize = 64;
/// How often lingering connections are read while there are any.
const LINGER_POLL: Duration = Duration::from_millis(5);
/// At most this many reads per lingering connection per poll, so a client that keeps
/// sending cannot hold the thread.
const READS_PER_POLL: usize = 4;

/// At most `max` connections open at once (ChitChat patch). A connection accepted past it
/// gets `refusal`, and is closed, by the accept thread.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// How many connections may be open at once; 0 refuses every connection.
    pub max: usize,
    /// The whole response a connection past the limit gets: status line, headers and
    /// body. It should say `Connection: close`: the connection is closed after it.
    pub refusal: Vec<u8>,
    /// A limit per peer address, kept by the application; a connection it refuses gets
    /// `refusal` too, and is not counted in `Server::connection_refusals`.
    pub per_peer: Option<Arc<dyn PeerLimit>>,
    /// The thread that drains refused connections, shared with the application's other
    /// listeners; `None`: the server starts one of its own.
    pub refuser: Option<Refuser>,
}

/// What a [`PeerLimit`] hands out for each connection it lets in; dropped when the
/// connection is closed.
pub type PeerSlot = Box<dyn Any + Send + Sync>;

/// A limit on the connections of each peer address (ChitChat patch), kept by the
/// application, asked by the accept thread for each new connection.
pub trait PeerLimit: Send + Sync + Debug {
    /// A slot for a new connection from `peer`, held until the connection is closed; `None`
    /// refuses the connection. Runs on the accept thread: it must not block.
    fn admit(&self, peer: IpAddr) -> Option<PeerSlot>;
}

/// One open connection, counted in `Counters::open_connections` from its creation until
/// it is dropped. Both halves of the accepted socket hold it, so it is dropped when the
/// socket is closed.
pub(crate) struct OpenConnection {
    counters: Arc<Counters>,
    _peer_slot: Option<PeerSlot>,
}

impl OpenConnection {
    pub(crate) fn new(
        counters: &Arc<Counters>,
        peer_slot: Option<PeerSlot>,
    ) -> Arc<OpenConnection> {
        counters.open_connections.fetch_add(1, Relaxed);
        Arc::new(OpenConnection {
            counters: Arc::clone(counters),
            _peer_slot: peer_slot,
        })
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters.open_connections.fetch_sub(1, Relaxed);
    }
}

/// Answers refused connections and drains them on one thread of its own (ChitChat patch):
/// see the module docs. Clones share the thread, which ends once every clone is dropped and
/// the last lingering connection is closed.
#[derive(Debug, Clone)]
pub struct Refuser {
    lingering: SyncSender<Connection>,
}

impl Refuser {
    /// Starts the draining thread.
    pub fn start() -> std::io::Result<Refuser> {
        let (lingering, receiver) = mpsc::sync_channel(MAX_LINGERING);
        thread::Builder::new()
            .name("tiny_http refusals".into())
            .spawn(move || drain_refused(receiver))?;
        Ok(Refuser { lingering })
    }

    /// Answers `socket` with `answer` (a whole HTTP response, `Connection: close`) and
    /// closes it gracefully, without waiting on the client: it runs on an accept thread.
    pub fn refuse(&self, socket: TcpStream, answer: &[u8]) {
        self.refuse_connection(Connection::from(socket), answer);
    }

    fn refuse_connection(&self, mut connection: Connection, answer: &[u8]) {
        // Non-blocking, so a client cannot stall the accept thread. A new socket's send
        // buffer is empty, so a refusal of a few hundred bytes is written whole at once.
        if connection.set_nonblocking(true).is_err() || connection.write_all(answer).is_err() {
            return;
        }
        let _ = connection.shutdown(Shutdown::Write);
        // Full: the connection is closed now, without draining, and may be reset.
        let _ = self.lingering.try_send(connection);
    }
}

/// A server's [`ConnectionLimit`] with the [`Refuser`] that answers for it.
pub(crate) struct Limiter {
    limit: ConnectionLimit,
    refuser: Refuser,
}

impl Limiter {
    /// Uses the limit's refuser, or starts one.
    pub(crate) fn new(mut limit: ConnectionLimit) -> std::io::Result<Limiter> {
        let refuser = match limit.refuser.take() {
            Some(refuser) => refuser,
            None => Refuser::start()?,
        };
        Ok(Limiter { limit, refuser })
    }

    /// Whether a new connection, with `open` connections open, is past the limit.
    pub(crate) fn is_full(&self, open: usize) -> bool {
        open >= self.limit.max
    }

    /// A slot for a new connection from `peer` (`None` without a `per_peer` limit), or
    /// `Err` if the connection must be refused.
    pub(crate) fn admit(&self, peer: IpAddr) -> Result<Option<PeerSlot>, ()> {
        match &self.limit.per_peer {
            None => Ok(None),
            Some(per_peer) => per_peer.admit(peer).map(Some).ok_or(()),
        }
    }

    /// Answers `connection` with the limit's refusal and closes it.
    pub(crate) fn refuse(&self, connection: Connection) {
        self.refuser
            .refuse_connection(connection, &self.limit.refusal);
    }
}

/// The draining thread: reads and discards what refused clients send until each closes,
/// fails or has lingered [`LINGER`], then closes it.
fn drain_refused(receiver: Receiver<Connection>) {
    let mut lingering: Vec<(Connection, Instant)> = Vec::new();
    // False once the `Refuser` is gone: no more connections will come.
    let mut accepting = true;
    loop {
        if accepting && lingering.len() < MAX_LINGERING {
            // Sleeps until the next refusal when there is nothing to drain.
            let received = if lingering.is_empty() {
                receiver.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                receiver.recv_timeout(LINGER_POLL)
            };
            match received {
                Ok(connection) => lingering.push((connection, Instant::now() + LINGER)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => accepting = false,
            }
        } else if lingering.is_empty() {
            return;
        } else {
            thread::sleep(LINGER_POLL);
        }
        while accepting && lingering.len() < MAX_LINGERING {
            match receiver.try_recv() {
                Ok(connection) => lingering.push((connection, Instant::now() + LINGER)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => accepting = false,
            }
        }
        let now = Instant::now();
        lingering.retain_mut(|(connection, deadline)| now < *deadline && still_open(connection));
    }
}

/// Reads and discards what the client has sent; `false` once it has closed its side (or
/// the connection failed).
fn still_open(connection: &mut Connection) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..READS_PER_POLL {
        match connection.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::ConnectionLimit;
    use crate::{Server, ServerOptions};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n";

    /// Polls `done` for up to 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out awaiting {}", what);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A connection accepted by the test and handed to `refuser`; returns the client side.
    fn refused_client(refuser: &super::Refuser, answer: &[u8]) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        refuser.refuse(accepted, answer);
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client
    }

    /// ChitChat's WebSocket listener refuses through the same `Refuser` (a clone) as the
    /// REST listener's limit, and a client that keeps sending to its refused socket cannot
    /// hold the draining thread: another refused socket is still closed after `LINGER`.
    /// (ChitChat's own copy of this thread read each socket until it had nothing more,
    /// so a client sending without pause kept it in one socket for good.)
    #[test]
    fn a_shared_refuser_is_not_held_by_a_client_that_keeps_sending() {
        let refuser = super::Refuser::start().unwrap();
        let mut flooding = refused_client(&refuser.clone(), REFUSAL);
        let flood = std::thread::spawn(move || {
            let chunk = [b'x'; 4096];
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && flooding.write_all(&chunk).is_ok() {}
        });
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let mut other = refused_client(&refuser, b"HTTP/1.1 503 X\r\n\r\n");
        let mut answer = Vec::new();
        other.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"HTTP/1.1 503 X\r\n\r\n");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        flood.join().unwrap();
    }

    #[test]
    fn connections_past_the_limit_get_the_refusal_and_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let options = ServerOptions {
            connection_limit: Some(ConnectionLimit {
                max: 1,
                refusal: REFUSAL.to_vec(),
                per_peer: None,
                refuser: None,
            }),
            ..ServerOptions::default()
        };
        let server = Server::from_listener_with_options(listener, None, options).unwrap();
        let first = TcpStream::connect(addr).unwrap();
        eventually("the first connection to count", || {
            server.num_connections() == 1
        });

        let mut second = TcpStream::connect(addr).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        second.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, REFUSAL);
        // Still drained, not closed: a write is not answered by a reset.
        second.write_all(b"x").unwrap();
        second.write_all(b"y").unwrap();
        assert_eq!(server.connection_refusals(), 1);
        assert_eq!(server.num_connections(), 1);

        drop(first);
        eventually("the first connection to be closed", || {
            server.num_connections() == 0
        });
        let _third = TcpStream::connect(addr).unwrap();
        eventually("the third connection to count", || {
            server.num_connections() == 1
        });
        assert_eq!(server.connection_refusals(), 1);
        assert_eq!(server.accept_errors(), 0);
    }
}
