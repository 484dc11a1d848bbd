//! The subscriber thread: one `PSUBSCRIBE` to every room's channel, the node's
//! registration and heartbeat, reconnecting with back-off, and handing each event to the
//! [`Listener`](super::Listener).

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use crate::sync::lock;

use super::link::{
    is_interrupted, key, millis, Kind, Link, StoredRoom, COMMAND_TIMEOUT, FIRST_BACKOFF,
    MAX_BACKOFF, PREFIX,
};

impl Link {
    /// Connects, subscribes and delivers until the link fails, then waits and starts over.
    pub(super) fn run(self: Arc<Self>) {
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
                // A signal, not a lost connection: the subscription must still answer.
                Err(e) if is_interrupted(&e) => {
                    pubsub
                        .set_read_timeout(Some(COMMAND_TIMEOUT))
                        .map_err(failed)?;
                    pubsub
                        .ping::<redis::Value>()
                        .map_err(|e| format!("subscription ping after {e}"))?;
                }
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
            // are gone (docs/several-nodes.md: run Redis with an append-only file).
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

    pub(super) fn retire(&self, connection: &mut Connection) -> RedisResult<()> {
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

    pub(super) fn alive_key(&self) -> String {
        key(&format!("node:{}:alive", self.node))
    }

    /// Refreshes this node's heartbeat and reaps nodes whose heartbeat expired. A heartbeat
    /// key that is gone means this node was taken for dead and its members reaped: its
    /// sockets must go and it must register again.
    fn heartbeat(&self) -> Result<(), String> {
        let alive_for = millis(self.alive_for());
        let refreshed = self.command(|c| {
            redis::cmd("SET")
                .arg(self.alive_key())
                .arg(1)
                .arg("PX")
                .arg(alive_for)
                .arg("XX")
                .query::<Option<String>>(c)
        });
        let reaped = match refreshed {
            Ok(Some(_)) => self.command(|c| {
                self.scripts
                    .reap
                    .key(key("nodes"))
                    .arg(PREFIX)
                    .arg(crate::clock::now_rfc3339())
                    .arg("")
                    .invoke::<i64>(c)
            }),
            Ok(None) => return Err("this node's heartbeat expired".into()),
            Err(down) => Err(down),
        };
        // A failure that took the link down ends the subscription; one that did not (an
        // interrupted call) is tried again at the next beat.
        let reaped = match reaped {
            Ok(reaped) => reaped,
            Err(_) if self.is_up() => return Ok(()),
            Err(_) => return Err("heartbeat failed".into()),
        };
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
            "a" => Kind::AccessChanged,
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
}
