//! Several nodes: the steps of `Live` around a Redis script (`rooms::cluster` runs the
//! script between them), and the feed filled from the subscription. Each step runs under
//! the room's lock; `fanout` owns the rest of `Live`.
//!
//! # Several nodes: a feed filled from the subscription
//! With Redis (`rooms::cluster`), Redis orders the room's events, not this lock: a join,
//! send or leave is checked here (the speaker's own node still makes it wait while a local
//! reader is behind, see `fanout`), then run as a Redis script with no lock held, and the event
//! comes back, to every node, the speaker's too, through the subscription
//! ([`Live::deliver`]). The subscriber thread serves every room of the node, so it must never
//! wait: it appends even to a full feed. Speakers on other nodes do not see this node's
//! readers, so the feed may overshoot its capacity; at twice the capacity (a hard bound)
//! every socket still behind the oldest event is closed as a slow reader (1008), stalled or
//! not, so the subscriber is never slowed and memory stays bounded. A socket that joins
//! reads nothing until its own join comes back ([`Socket::joining`]): what came before is
//! in the history its join replayed.

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::redis_link::Kind;

use super::fanout::{Live, Member};
use super::room::{Aftermath, Refusal};

/// Several nodes: the steps around a Redis script. Each runs under the room's lock; the
/// script runs between them with no lock held (see the module docs).
impl Live {
    /// Before a join's script: the socket holds no name yet, and the feed has room (or the
    /// speaker waits, as for a local join). From here the socket counts as a reader, so the
    /// feed keeps what arrives, but reads nothing until its join comes back.
    pub(super) fn begin_join(
        &mut self,
        session: u64,
        name: &str,
        color: &str,
        after: &mut Aftermath,
    ) -> Result<Member, Refusal> {
        if self.socket(session)?.member.is_some() {
            return Err(ApiError::field(ErrorKind::DuplicateUsername, "name").into());
        }
        self.make_space(session, after)?;
        let member = Member {
            username: name.to_owned(),
            color: color.to_owned(),
            last_activity: now_rfc3339(),
        };
        let head = self.head();
        let socket = self.socket(session)?;
        socket.member = Some(member.clone());
        socket.joining = true;
        socket.subscriber.set_cursor(head);
        socket.reads_until = None;
        Ok(member)
    }

    /// Where a socket whose join went through Redis reads from, once its join has come back
    /// (`None` until then).
    pub(super) fn join_arrived(&self, session: u64) -> Option<u64> {
        let socket = self.sockets.get(&session)?;
        (socket.member.is_some() && !socket.joining).then(|| socket.subscriber.cursor())
    }

    /// After a join's script that did not take the name: the socket holds none again.
    pub(super) fn undo_join(&mut self, session: u64) {
        if let Some(socket) = self.sockets.get_mut(&session) {
            socket.member = None;
            socket.joining = false;
        }
    }

    /// Before a send's script: the socket's name, with its last activity now, once the
    /// feed has room.
    pub(super) fn begin_send(
        &mut self,
        session: u64,
        after: &mut Aftermath,
    ) -> Result<Member, Refusal> {
        self.member(session)?;
        self.make_space(session, after)?;
        let member = self.member(session)?;
        member.last_activity = now_rfc3339();
        Ok(member.clone())
    }

    /// An event from the subscription, in Redis's order: appended even to a full feed (the
    /// subscriber serves every room and never waits); past twice the capacity, every socket
    /// still behind is closed as a slow reader. A socket's own join starts its reading.
    pub(super) fn deliver(
        &mut self,
        kind: Kind,
        origin: Option<u64>,
        text: &str,
        after: &mut Aftermath,
    ) {
        if self.deleted {
            return;
        }
        if kind == Kind::Join {
            let seq = self.head();
            if let Some(socket) = origin.and_then(|o| self.sockets.get_mut(&o)) {
                if socket.joining {
                    socket.joining = false;
                    socket.subscriber.set_cursor(seq);
                }
            }
        }
        self.push(text.into(), after);
        // As for a local send: the waker thread rings the sleepers, once for many messages.
        // Rung here, one subscriber thread would ring every sleeping socket of every node's
        // room for each message and fall seconds behind (500 sockets x 200 msg/s).
        after.wake_later = kind == Kind::Send;
        if self.feed_len() > self.capacity {
            self.trim();
        }
        if self.feed_len() > self.capacity {
            let hard = self.feed_len() >= self.capacity.saturating_mul(2);
            self.close_laggards(hard, after);
        }
    }
}
