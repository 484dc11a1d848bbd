//! The connection to Redis every thread of a node shares ([`Link`]): its pool, whether it
//! is up, what happens when it goes down, and the types that cross it. Its commands are
//! in `records` (rooms, members, history), `chat` (join, send, leave) and `subscriber`
//! (the subscription, heartbeat and reaping); the scripts in `scripts`.
//!
//! # Keys and channels (all under `chitchat:`)
//! | key | type | what |
//! |---|---|---|
//! | `next_room_id` | string | the last room id handed out: `INCR`, so ids are unique across nodes and never reused |
//! | `rooms` | hash | room id -> the room as JSON ([`StoredRoom`], password hash included) |
//! | `titles` | hash | lower-cased title -> room id: titles unique across nodes, atomically |
//! | `members:<room>` | hash | lower-cased name -> the member as JSON ([`StoredMember`], with its owner `<node>:<socket>`) |
//! | `msgid:<room>` | string | the room's last message id (`INCR`) |
//! | `history:<room>` | sorted set | the room's last `history_len` `send` events as broadcast, scored by id |
//! | `nodes` | set | the node ids that may hold members |
//! | `node:<node>:alive` | string | a node's heartbeat, expiring `presence_ttl_s` after it stops |
//! | `node:<node>:members` | hash | `<room>:<name>` -> owner and the start of its leave event, for whoever reaps it |
//!
//! Channel `room:<id>` carries the room's events, each as `<kind> <owner>\n<text>`: `j`oin,
//! `s`end, `l`eave (owner `-` for a leave a reaper broadcast), or `x` (the room was deleted).
//! Every node subscribes to `room:*` with one `PSUBSCRIBE`.
//!
//! # One order per room
//! Each room change is one Lua script ([`JOIN`], [`SEND`], [`LEAVE`], [`REAP`], [`DELETE`]),
//! and Redis runs scripts one at a time. A send's script checks the speaker still holds its
//! name, `INCR`s the room's message id, splices the id into the event, adds it to the
//! capped history and `PUBLISH`es it: ids, history and the order of the channel come from
//! one atomic step, as in centrifugal/centrifuge. Every node, the speaker's included,
//! delivers from its subscription, so every socket sees the channel's order.
//!
//! # Presence
//! Names are unique per room across nodes: `JOIN` takes the name with `HSETNX`-like logic
//! inside the script. Each node refreshes its heartbeat every `beat` ([`Link::beat`]) and
//! runs [`REAP`], which, for every node whose heartbeat has expired, removes its members
//! and publishes their leaves. Scripts run one at a time, so exactly one node reaps each.
//!
//! # Failure
//! Any failed command, a subscription that stops answering its `PING`, or a heartbeat that
//! finds its key gone (another node reaped us) makes the link *down*: the room map is told
//! ([`Listener::lost`]) and closes every socket with 1012, REST calls answer 503 code 605
//! at once, and the subscriber thread reconnects with back-off (100 ms doubling to 5 s),
//! resubscribes, retires this node's stale members (broadcasting their leaves) and only then
//! marks the link up again. Nothing acknowledged is silently lost: a write is answered only
//! after Redis ran it, and a socket that may have missed events is closed, not left behind.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use serde::{Deserialize, Serialize};

use super::scripts::{Scripts, CREATE, DELETE, INIT, JOIN, LEAVE, REAP, SEND, UPDATE};
use crate::error::ApiError;
use crate::sync::lock;

/// Every key and channel starts with this.
pub(super) const PREFIX: &str = "chitchat:";
/// How long a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before Redis counts as unreachable.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest time between two heartbeats (and subscription pings).
const MAX_BEAT: Duration = Duration::from_secs(1);
/// How long `start` waits for the first connection before serving (503 until it comes).
const START_WAIT: Duration = Duration::from_secs(3);
/// Connections kept open for reuse; more are opened when needed and closed after.
const POOL_LEN: usize = 32;

/// A room as Redis keeps it (the hash field is its id). Storage, never a response: the
/// hash is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoom {
    pub title: String,
    pub description: String,
    /// `public`, `private` or `hidden`.
    pub visibility: String,
    pub password_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A room read back, with the exact JSON it was read as (the scripts compare it to see
/// whether someone changed the room meanwhile).
#[derive(Debug, Clone)]
pub struct RoomRead {
    pub id: u64,
    pub room: StoredRoom,
    pub raw: String,
}

/// A joined person as Redis keeps them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMember {
    pub username: String,
    pub color: String,
    pub last_activity: String,
    /// `<node>:<socket>`: who holds the name, checked by every script that uses it.
    pub owner: String,
}

/// Redis cannot be used right now (or answered something this build does not understand).
/// The caller answers 503, code 605; the link is already reconnecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Down;

/// 605: Redis cannot be used now.
pub(super) fn unavailable() -> ApiError {
    ApiError::new(crate::error::ErrorKind::StorageUnavailable)
}

impl From<Down> for ApiError {
    fn from(_: Down) -> ApiError {
        unavailable()
    }
}

/// What a script refused, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The room does not exist (any more).
    Gone,
    /// The title or name is taken.
    Taken,
    /// `max_rooms` rooms exist already.
    Full,
    /// Someone changed the room since it was read: read it again.
    Changed,
    /// The name is not this socket's (any more).
    NotMember,
    /// Redis is unusable.
    Down,
}

impl From<Down> for Refused {
    fn from(_: Down) -> Refused {
        Refused::Down
    }
}

/// A room event as it arrives from the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Join,
    Send,
    Leave,
    /// The room was deleted: its sockets are closed.
    Deleted,
    /// The room's password or visibility changed: its sockets are closed (1008), the room
    /// stays.
    AccessChanged,
}

/// Who hears what the subscription brings, and that the link was lost. Called on the
/// subscriber thread: must not block.
pub trait Listener: Send + Sync {
    /// An event of room `room_id`; `origin` is the socket id when one of this node's own
    /// sockets caused it.
    fn deliver(&self, room_id: u64, kind: Kind, origin: Option<u64>, text: &str);
    /// The link is down: events may have been missed, so every socket must go (1012).
    fn lost(&self);
}

/// The connection to Redis shared by every thread of this node. See the module docs.
pub struct Link {
    pub(super) client: Client,
    /// This node's id: random per process.
    pub(super) node: String,
    /// Idle connections for commands (the subscription has its own).
    pub(super) pool: Mutex<Vec<Connection>>,
    /// True while the subscription runs and the node is registered: REST calls and chat
    /// go through only then (SPEC, Metrics and health: `chitchat_backend_up`).
    pub(super) up: AtomicBool,
    /// Set once this node has seen Redis with its data, to tell a Redis that lost it.
    pub(super) seen_data: AtomicBool,
    pub(super) stopping: AtomicBool,
    /// A dead node's members are reaped once this long has passed without its heartbeat.
    pub(super) ttl: Duration,
    /// How many `send` events each room keeps.
    pub(super) history_len: usize,
    pub(super) listener: Mutex<Option<Weak<dyn Listener>>>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) scripts: Scripts,
}

pub(super) fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

pub(super) fn channel(room_id: u64) -> String {
    format!("{PREFIX}room:{room_id}")
}

/// Whether `error` means the connection (or Redis) is unusable, rather than a script or a
/// reply this build got wrong (a bug: logged, answered 605, but the sockets stay), or a
/// system call interrupted by a signal ([`is_interrupted`]).
fn is_link_failure(error: &RedisError) -> bool {
    let wrong_reply = matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
    );
    !wrong_reply && !is_interrupted(error)
}

/// Whether `error` is a read or write that a signal interrupted (EINTR): a process stopped
/// and continued (`kill -STOP`, a debugger, Ctrl-Z) gets one from a socket call with a
/// timeout, whose connection is as good as before. The crate does not expose the I/O
/// error's kind, so this is an I/O error that is neither a timeout nor a dropped
/// connection; whoever sees one checks the connection (a `PING`) rather than assume.
pub(super) fn is_interrupted(error: &RedisError) -> bool {
    error.is_io_error() && !error.is_timeout() && !error.is_connection_dropped()
}

impl Link {
    /// A link to `url` (`redis://host:port/db`); nothing is connected yet. `None` if the URL
    /// is not one the client understands.
    pub fn new(
        url: &str,
        ttl: Duration,
        history_len: usize,
        node: String,
    ) -> Result<Arc<Link>, String> {
        let client = Client::open(url).map_err(|e| format!("redis_url {url:?}: {e}"))?;
        Ok(Arc::new(Link {
            client,
            node,
            pool: Mutex::new(Vec::new()),
            up: AtomicBool::new(false),
            seen_data: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            ttl,
            history_len,
            listener: Mutex::new(None),
            thread: Mutex::new(None),
            scripts: Scripts {
                init: Script::new(INIT),
                create: Script::new(CREATE),
                update: Script::new(UPDATE),
                delete: Script::new(DELETE),
                join: Script::new(JOIN),
                send: Script::new(SEND),
                leave: Script::new(LEAVE),
                reap: Script::new(REAP),
            },
        }))
    }

    /// Starts the subscriber thread, delivering to `listener`, and waits a little for the
    /// first connection (the node serves 503 until it comes).
    pub fn start(self: &Arc<Self>, listener: Weak<dyn Listener>) -> std::io::Result<()> {
        *lock(&self.listener) = Some(listener);
        let link = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || link.run())?;
        *lock(&self.thread) = Some(handle);
        let deadline = Instant::now() + START_WAIT;
        while !self.is_up() && Instant::now() < deadline {
            // Waiting for the subscriber thread's first connection, at start only.
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.is_up() {
            log::warn!("Redis is not reachable yet; answering 503 until it is");
        }
        Ok(())
    }

    /// Stops the subscriber thread and retires this node: its members' leaves are
    /// broadcast now rather than after `presence_ttl_s`.
    pub fn shutdown(&self) {
        self.stopping.store(true, SeqCst);
        if let Some(handle) = lock(&self.thread).take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
        if self.is_up() {
            let retired = self.command(|c| self.retire(c));
            if retired.is_err() {
                log::warn!("could not retire node {} from Redis", self.node);
            }
        }
        self.up.store(false, SeqCst);
    }

    /// Whether Redis can be used now (for `/healthz` and `chitchat_backend_up`).
    pub fn is_up(&self) -> bool {
        self.up.load(SeqCst)
    }

    /// This node's id, the first half of its sockets' owner strings.
    pub fn owner(&self, session: u64) -> String {
        format!("{}:{session}", self.node)
    }

    /// How often heartbeats (and subscription pings) go out: a quarter of the ttl, at most
    /// [`MAX_BEAT`], so a dead node's heartbeat expires and is reaped within the ttl.
    pub(super) fn beat(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(50), MAX_BEAT)
    }

    /// How long a heartbeat keeps this node alive: the ttl less one beat, the most a reaper
    /// may take to notice.
    pub(super) fn alive_for(&self) -> Duration {
        self.ttl.saturating_sub(self.beat()).max(self.beat())
    }

    /// Runs `work` on a pooled connection. Fails at once while the link is down; a failure
    /// takes the link down (see the module docs).
    pub(super) fn command<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, Down> {
        if !self.is_up() {
            return Err(Down);
        }
        let pooled = lock(&self.pool).pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.connect().map_err(|e| self.fail(&e))?,
        };
        match work(&mut connection) {
            Ok(value) => {
                let mut pool = lock(&self.pool);
                if pool.len() < POOL_LEN && self.is_up() {
                    pool.push(connection);
                }
                Ok(value)
            }
            Err(e) => Err(self.fail(&e)),
        }
    }

    pub(super) fn connect(&self) -> RedisResult<Connection> {
        let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        Ok(connection)
    }

    /// Handles a failed command: a link failure takes the link down; an interrupted call
    /// only fails this command (its connection is dropped, the link stays up); anything else
    /// is a bug here, logged. Either way the caller answers 605.
    pub(super) fn fail(&self, error: &RedisError) -> Down {
        if is_link_failure(error) {
            self.lose(&format!("{error}"));
        } else if is_interrupted(error) {
            log::info!("a Redis command was interrupted by a signal: {error}");
        } else {
            log::error!("Redis refused a command: {error}");
        }
        Down
    }

    /// Takes the link down, once per outage: pooled connections are dropped and the room
    /// map closes every socket.
    pub(super) fn lose(&self, why: &str) {
        if self.up.swap(false, SeqCst) {
            log::warn!("Redis unreachable ({why}): closing sockets and reconnecting");
            lock(&self.pool).clear();
            let listener = lock(&self.listener).as_ref().and_then(Weak::upgrade);
            if let Some(listener) = listener {
                listener.lost();
            }
        }
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
