//! Several nodes (SPEC, "Several nodes (Redis)"): everything the nodes share, in Redis, and
//! the one subscription each node delivers from.
//!
//! This is the only module that speaks to Redis. It knows rooms only as records and texts;
//! `rooms::cluster` turns them into the room map's answers and local feeds. It uses the
//! `redis` crate's blocking API: no async runtime (SPEC, Design card).
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::{Client, Connection, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// Every key and channel starts with this.
const PREFIX: &str = "chitchat:";
/// How long a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before Redis counts as unreachable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest time between two heartbeats (and subscription pings).
const MAX_BEAT: Duration = Duration::from_secs(1);
/// How long `start` waits for the first connection before serving (503 until it comes).
const START_WAIT: Duration = Duration::from_secs(3);
/// Connections kept open for reuse; more are opened when needed and closed after.
const POOL_LEN: usize = 32;

/// Room 1 on a fresh Redis, once, whichever node starts first.
const INIT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], 1)
redis.call('HSET', KEYS[2], 1, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], 1)
return 1"#;

/// KEYS: next_room_id, rooms, titles. ARGV: lower-cased title, room JSON. The new id, or 0
/// if the title is taken.
const CREATE: &str = r#"
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], id)
return id"#;

/// KEYS: rooms, titles. ARGV: id, the JSON read before, the new JSON, old and new lower-cased
/// titles. 1 done, 0 changed meanwhile (read again), -1 gone, -2 title taken.
const UPDATE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
if ARGV[4] ~= ARGV[5] then
  if redis.call('HEXISTS', KEYS[2], ARGV[5]) == 1 then return -2 end
  redis.call('HDEL', KEYS[2], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[5], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1"#;

/// KEYS: rooms, titles, history, msgid, members. ARGV: id, the JSON read before, its
/// lower-cased title, channel, prefix. 1 done, 0 changed meanwhile, -1 gone. The members'
/// entries in their nodes' hashes go too, so no reaper meets them later.
const DELETE: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return -1 end
if current ~= ARGV[2] then return 0 end
local members = redis.call('HGETALL', KEYS[5])
for i = 1, #members, 2 do
  local node = string.match(cjson.decode(members[i + 1]).owner, '^([^:]*):')
  if node then
    redis.call('HDEL', ARGV[5] .. 'node:' .. node .. ':members', ARGV[1] .. ':' .. members[i])
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('PUBLISH', ARGV[4], 'x -\n')
return 1"#;

/// KEYS: rooms, members, history, node members, node alive. ARGV: room id, lower-cased
/// name, member JSON, owner, leave head, since, join text, channel. `{1, replay}` joined,
/// `{0}` name taken, `{-1}` room gone, `{-2}` this node was reaped (it must start over).
const JOIN: &str = r#"
if redis.call('EXISTS', KEYS[5]) == 0 then return {-2, {}} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, {}} end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {0, {}} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1] .. ':' .. ARGV[2], ARGV[4] .. '\n' .. ARGV[5])
redis.call('PUBLISH', ARGV[8], 'j ' .. ARGV[4] .. '\n' .. ARGV[7])
return {1, redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[6], '+inf')}"#;

/// KEYS: members, msgid, history. ARGV: lower-cased name, owner, member JSON, event text
/// without its id, history_len, channel. The message id, or -1 if the name is not this
/// socket's (any more).
const SEND: &str = r#"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current).owner ~= ARGV[2] then return -1 end
local id = redis.call('INCR', KEYS[2])
local text = string.sub(ARGV[4], 1, -2) .. ',' .. '"id":' .. id .. '}'
local keep = tonumber(ARGV[5])
if keep > 0 then
  redis.call('ZADD', KEYS[3], id, text)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(keep + 1))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[6], 's ' .. ARGV[2] .. '\n' .. text)
return id"#;

/// KEYS: members, node members. ARGV: lower-cased name, owner, node field, leave text,
/// channel. 1 left, 0 the name was not this socket's (reaped, or its room deleted).
const LEAVE: &str = r#"
local held = redis.call('HGET', KEYS[2], ARGV[3])
if held and string.sub(held, 1, #ARGV[2] + 1) == ARGV[2] .. '\n' then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current).owner ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[5], 'l ' .. ARGV[2] .. '\n' .. ARGV[4])
return 1"#;

/// KEYS: nodes. ARGV: prefix, the time for the leave events, and a node id to retire now
/// ('' to retire every node whose heartbeat expired). Removes those nodes' members and
/// publishes their leaves; returns how many. Keys are built inside, so this needs one Redis,
/// not a Redis Cluster.
const REAP: &str = r#"
local function retire(node)
  local held = ARGV[1] .. 'node:' .. node .. ':members'
  local fields = redis.call('HGETALL', held)
  local gone = 0
  for i = 1, #fields, 2 do
    local room, lower = string.match(fields[i], '^(%d+):(.*)$')
    local owner, head = string.match(fields[i + 1], '^([^\n]*)\n(.*)$')
    if room and owner then
      local members = ARGV[1] .. 'members:' .. room
      local current = redis.call('HGET', members, lower)
      if current and cjson.decode(current).owner == owner then
        redis.call('HDEL', members, lower)
        redis.call('PUBLISH', ARGV[1] .. 'room:' .. room, 'l -\n' .. head .. ARGV[2] .. '"}')
        gone = gone + 1
      end
    end
  end
  redis.call('DEL', held)
  redis.call('SREM', KEYS[1], node)
  return gone
end
if ARGV[3] ~= '' then return retire(ARGV[3]) end
local gone = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node .. ':alive') == 0 then
    gone = gone + retire(node)
  end
end
return gone"#;

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

/// What a script refused, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The room does not exist (any more).
    Gone,
    /// The title or name is taken.
    Taken,
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
    client: Client,
    /// This node's id: random per process.
    node: String,
    /// Idle connections for commands (the subscription has its own).
    pool: Mutex<Vec<Connection>>,
    /// True while the subscription runs and the node is registered: REST calls and chat
    /// go through only then (SPEC, Metrics and health: `chitchat_backend_up`).
    up: AtomicBool,
    /// Set once this node has seen Redis with its data, to tell a Redis that lost it.
    seen_data: AtomicBool,
    stopping: AtomicBool,
    /// A dead node's members are reaped once this long has passed without its heartbeat.
    ttl: Duration,
    /// How many `send` events each room keeps.
    history_len: usize,
    listener: Mutex<Option<Weak<dyn Listener>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    scripts: Scripts,
}

struct Scripts {
    init: Script,
    create: Script,
    update: Script,
    delete: Script,
    join: Script,
    send: Script,
    leave: Script,
    reap: Script,
}

fn key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

fn channel(room_id: u64) -> String {
    format!("{PREFIX}room:{room_id}")
}

/// Whether `error` means the connection (or Redis) is unusable, rather than a script or a
/// reply this build got wrong (a bug: logged, answered 605, but the sockets stay).
fn is_link_failure(error: &RedisError) -> bool {
    !matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError)
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::Parse
    )
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
    fn beat(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(50), MAX_BEAT)
    }

    /// How long a heartbeat keeps this node alive: the ttl less one beat, the most a reaper
    /// may take to notice.
    fn alive_for(&self) -> Duration {
        self.ttl.saturating_sub(self.beat()).max(self.beat())
    }

    /// Runs `work` on a pooled connection. Fails at once while the link is down; a failure
    /// takes the link down (see the module docs).
    fn command<T>(&self, work: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Result<T, Down> {
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

    fn connect(&self) -> RedisResult<Connection> {
        let connection = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        connection.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        connection.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        Ok(connection)
    }

    /// Handles a failed command: a link failure takes the link down; anything else is a
    /// bug here, logged. Either way the caller answers 605.
    fn fail(&self, error: &RedisError) -> Down {
        if is_link_failure(error) {
            self.lose(&format!("{error}"));
        } else {
            log::error!("Redis refused a command: {error}");
        }
        Down
    }

    /// Takes the link down, once per outage: pooled connections are dropped and the room
    /// map closes every socket.
    fn lose(&self, why: &str) {
        if self.up.swap(false, SeqCst) {
            log::warn!("Redis unreachable ({why}): closing sockets and reconnecting");
            lock(&self.pool).clear();
            let listener = lock(&self.listener).as_ref().and_then(Weak::upgrade);
            if let Some(listener) = listener {
                listener.lost();
            }
        }
    }

    // -- The subscriber thread ---------------------------------------------------------

    /// Connects, subscribes and delivers until the link fails, then waits and starts over.
    fn run(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stopping.load(SeqCst) {
            let mut served = false;
            let ended = self.subscribe_and_serve(&mut served);
            if self.stopping.load(SeqCst) {
                return;
            }
            if let Err(e) = ended {
                self.lose(&e);
            }
            if served {
                backoff = FIRST_BACKOFF;
            }
            std::thread::park_timeout(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: subscribe, register this node (retiring what it held before
    /// an outage), go up, then deliver messages and beat until something fails.
    fn subscribe_and_serve(&self, served: &mut bool) -> Result<(), String> {
        let failed = |e: RedisError| e.to_string();
        let mut subscriber = self.connect().map_err(failed)?;
        let mut commands = self.connect().map_err(failed)?;
        let mut pubsub = subscriber.as_pubsub();
        pubsub.psubscribe(key("room:*")).map_err(failed)?;
        // Subscribed first: whatever is published from now on reaches this node.
        self.register(&mut commands).map_err(failed)?;
        lock(&self.pool).push(commands);
        self.up.store(true, SeqCst);
        *served = true;
        log::info!("Redis connected: node {} serving", self.node);
        let beat = self.beat();
        let mut next_beat = Instant::now() + beat;
        loop {
            if self.stopping.load(SeqCst) {
                return Ok(());
            }
            if !self.is_up() {
                return Err("a command failed".into());
            }
            let now = Instant::now();
            if now >= next_beat {
                next_beat = now + beat;
                self.heartbeat()?;
                // A subscription that silently stopped delivering does not answer this.
                pubsub
                    .set_read_timeout(Some(COMMAND_TIMEOUT))
                    .map_err(failed)?;
                pubsub
                    .ping::<redis::Value>()
                    .map_err(|e| format!("subscription ping: {e}"))?;
            }
            let wait = next_beat.saturating_duration_since(Instant::now());
            pubsub
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
                .map_err(failed)?;
            match pubsub.get_message() {
                Ok(message) => {
                    self.dispatch(message.get_channel_name(), message.get_payload_bytes())
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(format!("subscription: {e}")),
            }
        }
    }

    /// On every (re)connection: room 1 on a fresh Redis; this node's members from before
    /// an outage retired (their sockets were closed), and the node registered alive.
    fn register(&self, connection: &mut Connection) -> RedisResult<()> {
        let room = StoredRoom {
            title: "Public Chat".into(),
            description: "Everyone is welcome here.".into(),
            visibility: "public".into(),
            password_hash: None,
            created_at: crate::clock::now_rfc3339(),
            updated_at: crate::clock::now_rfc3339(),
        };
        let json = serde_json::to_string(&room).expect("a StoredRoom serialises");
        let fresh: i64 = self
            .scripts
            .init
            .key(key("next_room_id"))
            .key(key("rooms"))
            .key(key("titles"))
            .arg(json)
            .arg("public chat")
            .invoke(connection)?;
        if fresh == 1 && self.seen_data.load(SeqCst) {
            // Without persistence a restarted Redis starts empty: rooms, ids and history
            // are gone (README, Several nodes: run Redis with an append-only file).
            log::error!("Redis came back empty: its rooms, ids and history were lost");
        }
        self.seen_data.store(true, SeqCst);
        self.retire(connection)?;
        redis::pipe()
            .atomic()
            .sadd(key("nodes"), &self.node)
            .ignore()
            .pset_ex(self.alive_key(), 1, millis(self.alive_for()))
            .ignore()
            .exec(connection)
    }

    fn retire(&self, connection: &mut Connection) -> RedisResult<()> {
        let gone: i64 = self
            .scripts
            .reap
            .key(key("nodes"))
            .arg(PREFIX)
            .arg(crate::clock::now_rfc3339())
            .arg(&self.node)
            .invoke(connection)?;
        if gone > 0 {
            log::info!(
                "node {}: {gone} members from before were retired",
                self.node
            );
        }
        Ok(())
    }

    fn alive_key(&self) -> String {
        key(&format!("node:{}:alive", self.node))
    }

    /// Refreshes this node's heartbeat and reaps nodes whose heartbeat expired. A heartbeat
    /// key that is gone means this node was taken for dead and its members reaped: its
    /// sockets must go and it must register again.
    fn heartbeat(&self) -> Result<(), String> {
        let alive_for = millis(self.alive_for());
        let refreshed = self
            .command(|c| {
                redis::cmd("SET")
                    .arg(self.alive_key())
                    .arg(1)
                    .arg("PX")
                    .arg(alive_for)
                    .arg("XX")
                    .query::<Option<String>>(c)
            })
            .map_err(|_| "heartbeat failed".to_owned())?;
        if refreshed.is_none() {
            return Err("this node's heartbeat expired".into());
        }
        let reaped = self
            .command(|c| {
                self.scripts
                    .reap
                    .key(key("nodes"))
                    .arg(PREFIX)
                    .arg(crate::clock::now_rfc3339())
                    .arg("")
                    .invoke::<i64>(c)
            })
            .map_err(|_| "reaping failed".to_owned())?;
        if reaped > 0 {
            log::info!("{reaped} members of nodes that stopped were reaped");
        }
        Ok(())
    }

    /// Hands one message of the subscription to the listener.
    fn dispatch(&self, channel_name: &str, payload: &[u8]) {
        let Some(room_id) = channel_name
            .strip_prefix(PREFIX)
            .and_then(|c| c.strip_prefix("room:"))
            .and_then(|id| id.parse::<u64>().ok())
        else {
            return;
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let Some((head, text)) = payload.split_once('\n') else {
            return;
        };
        let Some((kind, owner)) = head.split_once(' ') else {
            return;
        };
        let kind = match kind {
            "j" => Kind::Join,
            "s" => Kind::Send,
            "l" => Kind::Leave,
            "x" => Kind::Deleted,
            _ => return,
        };
        let origin = owner
            .split_once(':')
            .filter(|(node, _)| *node == self.node)
            .and_then(|(_, session)| session.parse().ok());
        let listener = lock(&self.listener).as_ref().and_then(Weak::upgrade);
        if let Some(listener) = listener {
            listener.deliver(room_id, kind, origin, text);
        }
    }

    // -- Rooms ---------------------------------------------------------------------------

    /// Every room, by id.
    pub fn rooms(&self) -> Result<Vec<RoomRead>, Down> {
        let all: HashMap<String, String> =
            self.command(|c| redis::cmd("HGETALL").arg(key("rooms")).query(c))?;
        let mut rooms: Vec<RoomRead> = all
            .into_iter()
            .filter_map(|(id, raw)| parse_room(&id, raw))
            .collect();
        rooms.sort_by_key(|r| r.id);
        Ok(rooms)
    }

    /// Room `id`, if it exists.
    pub fn room(&self, id: u64) -> Result<Option<RoomRead>, Down> {
        let raw: Option<String> =
            self.command(|c| redis::cmd("HGET").arg(key("rooms")).arg(id).query(c))?;
        Ok(raw.and_then(|raw| parse_room(&id.to_string(), raw)))
    }

    /// The room titled `lower` (lower-cased), if one is.
    pub fn room_by_title(&self, lower: &str) -> Result<Option<RoomRead>, Down> {
        let id: Option<u64> =
            self.command(|c| redis::cmd("HGET").arg(key("titles")).arg(lower).query(c))?;
        match id {
            Some(id) => self.room(id),
            None => Ok(None),
        }
    }

    /// Adds a room titled `lower` (lower-cased); returns its new id.
    pub fn create_room(&self, lower: &str, room: &StoredRoom) -> Result<u64, Refused> {
        let json = serde_json::to_string(room).expect("a StoredRoom serialises");
        let id: u64 = self.command(|c| {
            self.scripts
                .create
                .key(key("next_room_id"))
                .key(key("rooms"))
                .key(key("titles"))
                .arg(lower)
                .arg(&json)
                .invoke(c)
        })?;
        if id == 0 {
            return Err(Refused::Taken);
        }
        Ok(id)
    }

    /// Replaces room `before` with `room`, if nobody changed it meanwhile.
    pub fn update_room(
        &self,
        before: &RoomRead,
        old_lower: &str,
        new_lower: &str,
        room: &StoredRoom,
    ) -> Result<(), Refused> {
        let json = serde_json::to_string(room).expect("a StoredRoom serialises");
        let done: i64 = self.command(|c| {
            self.scripts
                .update
                .key(key("rooms"))
                .key(key("titles"))
                .arg(before.id)
                .arg(&before.raw)
                .arg(&json)
                .arg(old_lower)
                .arg(new_lower)
                .invoke(c)
        })?;
        match done {
            1 => Ok(()),
            0 => Err(Refused::Changed),
            -2 => Err(Refused::Taken),
            _ => Err(Refused::Gone),
        }
    }

    /// Deletes room `before` (titled `lower`) with its members and history, and tells every
    /// node to close its sockets.
    pub fn delete_room(&self, before: &RoomRead, lower: &str) -> Result<(), Refused> {
        let id = before.id;
        let done: i64 = self.command(|c| {
            self.scripts
                .delete
                .key(key("rooms"))
                .key(key("titles"))
                .key(key(&format!("history:{id}")))
                .key(key(&format!("msgid:{id}")))
                .key(key(&format!("members:{id}")))
                .arg(id)
                .arg(&before.raw)
                .arg(lower)
                .arg(channel(id))
                .arg(PREFIX)
                .invoke(c)
        })?;
        match done {
            1 => Ok(()),
            0 => Err(Refused::Changed),
            _ => Err(Refused::Gone),
        }
    }

    /// Room `id`'s members, by name.
    pub fn members(&self, id: u64) -> Result<Vec<StoredMember>, Down> {
        Ok(self.members_of(&[id])?.pop().unwrap_or_default())
    }

    /// The members of each room of `ids`, by name, in one round trip (for a listing).
    pub fn members_of(&self, ids: &[u64]) -> Result<Vec<Vec<StoredMember>>, Down> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HVALS").arg(key(&format!("members:{id}")));
        }
        let all: Vec<Vec<String>> = self.command(|c| pipe.query(c))?;
        Ok(all
            .into_iter()
            .map(|room| {
                let mut members: Vec<StoredMember> = room
                    .iter()
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect();
                members.sort_by(|a, b| a.username.cmp(&b.username));
                members
            })
            .collect())
    }

    /// Room `id`'s kept messages with an id above `since`, oldest first.
    pub fn history(&self, id: u64, since: u64) -> Result<Vec<String>, Down> {
        self.command(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(key(&format!("history:{id}")))
                .arg(format!("({since}"))
                .arg("+inf")
                .query(c)
        })
    }

    // -- Chat ------------------------------------------------------------------------------

    /// Takes `member`'s name (lower-cased `lower`) in room `id` and publishes `join_text`;
    /// returns the kept messages above `since`. `leave_head` is the member's leave event up
    /// to its time, for a reaper to finish.
    pub fn join(
        &self,
        id: u64,
        lower: &str,
        member: &StoredMember,
        leave_head: &str,
        since: u64,
        join_text: &str,
    ) -> Result<Vec<String>, Refused> {
        let json = serde_json::to_string(member).expect("a StoredMember serialises");
        let (status, replay): (i64, Vec<String>) = self.command(|c| {
            self.scripts
                .join
                .key(key("rooms"))
                .key(key(&format!("members:{id}")))
                .key(key(&format!("history:{id}")))
                .key(key(&format!("node:{}:members", self.node)))
                .key(self.alive_key())
                .arg(id)
                .arg(lower)
                .arg(&json)
                .arg(&member.owner)
                .arg(leave_head)
                .arg(since)
                .arg(join_text)
                .arg(channel(id))
                .invoke(c)
        })?;
        match status {
            1 => Ok(replay),
            0 => Err(Refused::Taken),
            -1 => Err(Refused::Gone),
            _ => {
                self.lose("this node was taken for dead");
                Err(Refused::Down)
            }
        }
    }

    /// Publishes `text` (a `send` event without its id) as `member`'s next message in room
    /// `id`; returns its id.
    pub fn send(
        &self,
        id: u64,
        lower: &str,
        member: &StoredMember,
        text: &str,
    ) -> Result<u64, Refused> {
        let json = serde_json::to_string(member).expect("a StoredMember serialises");
        let msg_id: i64 = self.command(|c| {
            self.scripts
                .send
                .key(key(&format!("members:{id}")))
                .key(key(&format!("msgid:{id}")))
                .key(key(&format!("history:{id}")))
                .arg(lower)
                .arg(&member.owner)
                .arg(&json)
                .arg(text)
                .arg(self.history_len)
                .arg(channel(id))
                .invoke(c)
        })?;
        u64::try_from(msg_id).map_err(|_| Refused::NotMember)
    }

    /// Gives up `owner`'s name `lower` in room `id` and publishes `leave_text`.
    pub fn leave(
        &self,
        id: u64,
        lower: &str,
        owner: &str,
        leave_text: &str,
    ) -> Result<(), Refused> {
        let left: i64 = self.command(|c| {
            self.scripts
                .leave
                .key(key(&format!("members:{id}")))
                .key(key(&format!("node:{}:members", self.node)))
                .arg(lower)
                .arg(owner)
                .arg(format!("{id}:{lower}"))
                .arg(leave_text)
                .arg(channel(id))
                .invoke(c)
        })?;
        if left == 1 {
            Ok(())
        } else {
            Err(Refused::NotMember)
        }
    }
}

fn parse_room(id: &str, raw: String) -> Option<RoomRead> {
    let id = id.parse().ok()?;
    let room = serde_json::from_str(&raw).ok()?;
    Some(RoomRead { id, room, raw })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
