//! One room's live side, everything behind its lock (`Live`): its sockets and members,
//! the feed of events they read, its kept history and message ids. Everything here is
//! memory work only; what must happen after the lock (waking sleeping members, closing
//! sockets, logging, queueing a message for the disk) is collected in an [`Aftermath`]
//! and done once the lock is released. The room's handle, its lock and the lock-free read
//! of its feed are `room`; the steps around a Redis script are `subscription`.
//!
//! # The feed: one shared, bounded log per room
//! A room does not copy each event into every member's queue. It appends the event, once,
//! to its feed (a ring of the latest events, shared by all members), and every socket reads
//! the feed from its own cursor. So an event costs one allocation however many people hear
//! it, a join storm of 2,000 people leaves 2,000 small events in one ring rather than
//! 2,000 in each of 2,000 queues, and the memory a room's queued events may take is one
//! hard bound, `send_queue_len` events, whatever its members do.
//!
//! When the feed is full, its oldest event is still unread by someone (the laggards):
//! - a laggard whose client has stopped reading (its writes would block: see
//!   [`Subscriber::is_stalled`]) is a slow reader: it is closed (1008) and its leave
//!   broadcast, so it slows nobody down;
//! - a laggard that is only behind because its thread has not run yet (the server is busy)
//!   is waited for: the speaker's action is refused with [`Refusal::Busy`], and the speaker's
//!   session holds the frame, stops reading its own socket, and retries when woken. Under
//!   overload the room slows down evenly; nobody who reads loses an event (SPEC, Ordering
//!   and delivery).
//!
//! Leaves of sockets that end (closed, dropped, deleted) are appended even to a full feed:
//! there is at most one per socket, so the bound stays a bound.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{as_replay, join_message, leave_message, EventType, ServerEvent};
use crate::sync::{read, write};

use super::catalog::Info;
use super::room::{Aftermath, CloseReason, Feed, Joined, Refusal, Subscriber};
use super::view::{RoomView, UserView};

/// Everything behind a room's lock.
pub(super) struct Live {
    /// Title, visibility, hash...: changed only by the catalogue.
    pub(super) info: Info,
    /// Set when the room is deleted: nothing may attach or speak after that.
    pub(super) deleted: bool,
    /// Connected sockets by session id (so in connection order), joined or not.
    pub(super) sockets: BTreeMap<u64, Socket>,
    /// The room's feed (see `Room::feed`).
    pub(super) feed: Arc<RwLock<Feed>>,
    /// The feed's head as sockets see it without a lock (see [`Live::push`]).
    pub(super) head: Arc<AtomicU64>,
    /// The most events the feed holds before speakers wait (`send_queue_len`).
    pub(super) capacity: usize,
    /// Set when Redis orders the room's events (several nodes): leaves are published, not
    /// appended here, and the feed fills from [`Live::deliver`].
    pub(super) shared: bool,
    /// The last `history_len` `send` events with their ids, oldest first.
    pub(super) history: VecDeque<(u64, Arc<str>)>,
    pub(super) history_len: usize,
    /// The id of the room's last message; the next one gets one more.
    pub(super) last_message_id: u64,
    /// Speakers refused with [`Refusal::Busy`], to be woken when the feed has room.
    pub(super) waiting: Vec<Arc<dyn Subscriber>>,
}

/// A socket connected to the room.
pub(super) struct Socket {
    /// Its doorbell, and its cursor in the feed.
    pub(super) subscriber: Arc<dyn Subscriber>,
    /// Set while the socket has joined under a name; a socket has at most one.
    pub(super) member: Option<Member>,
    /// After a leave: the socket still reads the events before its leave, up to here.
    pub(super) reads_until: Option<u64>,
    /// Several nodes: joined, but its own join has not come back from Redis yet; it reads
    /// nothing until then, and from its join on.
    pub(super) joining: bool,
}

impl Socket {
    /// Whether the socket still has feed events to read, so the feed must keep them.
    fn reads(&self, head: u64) -> bool {
        self.member.is_some()
            || self
                .reads_until
                .is_some_and(|until| self.subscriber.cursor() < until.min(head))
    }
}

/// The name a socket joined with.
#[derive(Clone)]
pub(super) struct Member {
    pub(super) username: String,
    pub(super) color: String,
    pub(super) last_activity: String,
}

impl Live {
    /// The sequence number the next feed event gets.
    pub(super) fn head(&self) -> u64 {
        read(&self.feed).head()
    }

    /// The room as clients see it, with or without its members.
    pub(super) fn view(&self, with_users: bool) -> RoomView {
        self.info.view(with_users.then(|| {
            self.sockets
                .values()
                .filter_map(|s| s.member.as_ref())
                .map(|m| UserView {
                    username: m.username.clone(),
                    color: m.color.clone(),
                    last_activity: m.last_activity.clone(),
                })
                .collect()
        }))
    }

    /// How many sockets have joined under a name.
    pub(super) fn members(&self) -> usize {
        self.sockets.values().filter(|s| s.member.is_some()).count()
    }

    /// Connects socket `session` (not joined yet), so it hears of the room's deletion.
    pub(super) fn attach(
        &mut self,
        session: u64,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), ApiError> {
        if self.deleted {
            return Err(ApiError::new(ErrorKind::RoomNotFound));
        }
        subscriber.set_cursor(self.head());
        self.sockets.insert(
            session,
            Socket {
                subscriber,
                member: None,
                reads_until: None,
                joining: false,
            },
        );
        Ok(())
    }

    /// Disconnects socket `session`; a member's leave is broadcast even to a full feed.
    pub(super) fn detach(&mut self, session: u64, after: &mut Aftermath) {
        if let Some(socket) = self.sockets.remove(&session) {
            if let Some(member) = socket.member {
                self.push_leave(session, &member, after);
            }
            self.release_waiting(after);
        }
    }

    /// Takes every socket away (the room is being deleted) and has them closed.
    pub(super) fn close_all(&mut self, after: &mut Aftermath) {
        self.close_all_for(CloseReason::RoomDeleted, after);
    }

    /// Takes every socket away and has them closed for `reason`; nothing is broadcast.
    pub(super) fn close_all_for(&mut self, reason: CloseReason, after: &mut Aftermath) {
        self.deleted = true;
        for socket in std::mem::take(&mut self.sockets).into_values() {
            after.close.push((socket.subscriber, reason));
        }
        let mut feed = write(&self.feed);
        feed.first_seq = feed.head();
        feed.events.clear();
        self.waiting.clear();
    }

    /// Gives socket `session` the name `name` and broadcasts its join. Names are unique in
    /// a room case-insensitively, and a socket holds one at a time (else 202). The socket
    /// first gets the kept messages with an id above `since` (all without it), then its own
    /// join: under the lock, so no event can come between them.
    pub(super) fn join(
        &mut self,
        session: u64,
        name: &str,
        color: &str,
        since: Option<u64>,
        after: &mut Aftermath,
    ) -> Result<Joined, Refusal> {
        let lower = name.to_lowercase();
        let taken = self.sockets.iter().any(|(id, s)| {
            s.member
                .as_ref()
                .is_some_and(|m| *id == session || m.username.to_lowercase() == lower)
        });
        if taken {
            return Err(ApiError::field(ErrorKind::DuplicateUsername, "name").into());
        }
        self.socket(session)?;
        self.make_space(session, after)?;
        let now = now_rfc3339();
        let join = self.event(
            EventType::Join,
            name,
            color,
            &join_message(name),
            &now,
            None,
        );
        let seq = self.push(join, after);
        let socket = self.socket(session)?;
        socket.subscriber.set_cursor(seq);
        socket.reads_until = None;
        socket.member = Some(Member {
            username: name.to_owned(),
            color: color.to_owned(),
            last_activity: now,
        });
        let since = since.unwrap_or(0);
        let replay = self
            .history
            .iter()
            .filter(|(id, _)| *id > since)
            .map(|(_, text)| as_replay(text))
            .collect();
        Ok(Joined {
            replay,
            cursor: Some(seq),
        })
    }

    /// Broadcasts `msg` under the name `session` joined with (201 if it has none), as the
    /// room's next message id, and keeps it in the history.
    pub(super) fn send(
        &mut self,
        session: u64,
        msg: &str,
        after: &mut Aftermath,
    ) -> Result<u64, Refusal> {
        self.member(session)?;
        self.make_space(session, after)?;
        let now = now_rfc3339();
        let id = self.last_message_id + 1;
        let member = self.member(session)?;
        member.last_activity = now.clone();
        let (name, color) = (member.username.clone(), member.color.clone());
        let text = self.event(EventType::Send, &name, &color, msg, &now, Some(id));
        self.push(Arc::clone(&text), after);
        self.last_message_id = id;
        if self.history_len > 0 {
            while self.history.len() >= self.history_len {
                self.history.pop_front();
            }
            self.history.push_back((id, Arc::clone(&text)));
        }
        // Even when nothing is kept, the store learns the id, so ids survive a restart.
        after.persist = Some((self.info.id, id, text));
        after.wake_later = true;
        Ok(id)
    }

    /// Takes `session`'s name away and broadcasts its leave (201 if it had none: never
    /// joined, already left, or dropped as a slow reader). Returns where the socket stops
    /// reading the feed: its own leave.
    pub(super) fn leave(&mut self, session: u64, after: &mut Aftermath) -> Result<u64, Refusal> {
        self.member(session)?;
        self.make_space(session, after)?;
        let socket = self.socket(session)?;
        let member = socket.member.take().ok_or_else(user_not_found)?;
        socket.joining = false;
        // It still reads what was said before it left, not its own leave.
        let head = self.head();
        if let Some(socket) = self.sockets.get_mut(&session) {
            socket.reads_until = Some(head);
        }
        self.push_leave(session, &member, after);
        Ok(head)
    }

    /// A reader at the front of a full feed moved on: waiting speakers may go now.
    pub(super) fn read_on(&mut self, after: &mut Aftermath) {
        self.release_waiting(after);
    }

    /// Someone's client stopped reading: waiting speakers retry now, so the room drops it
    /// instead of waiting for it.
    pub(super) fn stalled(&mut self, after: &mut Aftermath) {
        after.retry.append(&mut self.waiting);
    }

    /// The kept messages with an id above `since`, oldest first, at most `limit` (the
    /// newest ones), as broadcast.
    pub(super) fn messages(&self, since: u64, limit: usize) -> Vec<Arc<str>> {
        let newer: Vec<_> = self.history.iter().filter(|(id, _)| *id > since).collect();
        let skip = newer.len().saturating_sub(limit);
        newer
            .into_iter()
            .skip(skip)
            .map(|(_, text)| Arc::clone(text))
            .collect()
    }

    /// Makes room in a full feed for one event from `session`: drops the events everyone
    /// has read, then closes laggards whose clients stopped reading. [`Refusal::Busy`] (with
    /// `session` registered to be woken) if a laggard that reads is still behind.
    pub(super) fn make_space(
        &mut self,
        session: u64,
        after: &mut Aftermath,
    ) -> Result<(), Refusal> {
        if self.has_space() {
            return Ok(());
        }
        self.trim();
        if self.has_space() {
            return Ok(());
        }
        self.close_laggards(false, after);
        if self.has_space() {
            return Ok(());
        }
        if let Some(socket) = self.sockets.get(&session) {
            if !self
                .waiting
                .iter()
                .any(|w| Arc::ptr_eq(w, &socket.subscriber))
            {
                self.waiting.push(Arc::clone(&socket.subscriber));
            }
        }
        Err(Refusal::Busy)
    }

    /// Closes the sockets that have not read the feed's oldest event: those whose clients
    /// stopped reading, or, with `all`, every one of them. Their leaves are broadcast.
    pub(super) fn close_laggards(&mut self, all: bool, after: &mut Aftermath) {
        let (oldest, head) = {
            let feed = read(&self.feed);
            (feed.first_seq, feed.head())
        };
        let slow: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, s)| {
                s.reads(head)
                    && s.subscriber.cursor() <= oldest
                    && (all || s.subscriber.is_stalled())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            if let Some(socket) = self.sockets.remove(&id) {
                after
                    .close
                    .push((socket.subscriber, CloseReason::SlowReader));
                if let Some(member) = socket.member {
                    after.slow.push(member.username.clone());
                    self.push_leave(id, &member, after);
                }
            }
        }
        self.trim();
    }

    /// How many events the feed holds.
    pub(super) fn feed_len(&self) -> usize {
        read(&self.feed).events.len()
    }

    /// Whether the feed may take one more event.
    fn has_space(&self) -> bool {
        self.feed_len() < self.capacity
    }

    /// Drops the feed events every reading socket has read.
    pub(super) fn trim(&mut self) {
        let head = self.head();
        let read_by_all = self
            .sockets
            .values()
            .filter(|s| s.reads(head))
            .map(|s| s.subscriber.cursor())
            .min()
            .unwrap_or(head);
        let mut feed = write(&self.feed);
        while feed.first_seq < read_by_all && feed.events.pop_front().is_some() {
            feed.first_seq += 1;
        }
    }

    /// Wakes the waiting speakers if the feed has room for them again.
    fn release_waiting(&mut self, after: &mut Aftermath) {
        if self.waiting.is_empty() {
            return;
        }
        self.trim();
        if self.has_space() {
            after.retry.append(&mut self.waiting);
        }
    }

    /// Appends an event to the feed and has the sleeping readers woken. Returns its
    /// sequence number.
    pub(super) fn push(&mut self, text: Arc<str>, after: &mut Aftermath) -> u64 {
        let seq = {
            let mut feed = write(&self.feed);
            feed.events.push_back(text);
            feed.head() - 1
        };
        let head = seq + 1;
        // Published before looking for sleepers: a socket arms its doorbell, then checks
        // the head. Either it sees this event, or this push sees it armed and rings it
        // (SeqCst on both sides); published after, a socket arming in between was missed
        // and slept through the room's last event (one join of 4.5 million, in a storm).
        self.head.store(head, SeqCst);
        for socket in self.sockets.values() {
            if socket.reads(head) && socket.subscriber.is_asleep() {
                after.wake.push(Arc::clone(&socket.subscriber));
            }
        }
        seq
    }

    /// Broadcasts `member`'s leave: appended here, or, with several nodes, published
    /// through Redis once the lock is released (it comes back through `deliver`).
    fn push_leave(&mut self, session: u64, member: &Member, after: &mut Aftermath) {
        let text = self.leave_event(member, &now_rfc3339());
        if self.shared {
            let lower = member.username.to_lowercase();
            after.leaves.push((session, lower, text.to_string()));
        } else {
            self.push(text, after);
        }
    }

    /// `member`'s leave event at `time`.
    pub(super) fn leave_event(&self, member: &Member, time: &str) -> Arc<str> {
        let msg = leave_message(&member.username);
        self.event(
            EventType::Leave,
            &member.username,
            &member.color,
            &msg,
            time,
            None,
        )
    }

    /// Serialises an event of this room, once for all its members.
    pub(super) fn event(
        &self,
        event_type: EventType,
        name: &str,
        color: &str,
        msg: &str,
        time: &str,
        id: Option<u64>,
    ) -> Arc<str> {
        ServerEvent {
            event_type,
            name,
            color,
            msg,
            room_id: self.info.id,
            time,
            id,
        }
        .to_text()
        .into()
    }

    /// The attached socket `session`; one that is not attached (dropped as a slow reader,
    /// say) has no name here.
    pub(super) fn socket(&mut self, session: u64) -> Result<&mut Socket, ApiError> {
        self.sockets.get_mut(&session).ok_or_else(user_not_found)
    }

    pub(super) fn member(&mut self, session: u64) -> Result<&mut Member, ApiError> {
        self.socket(session)?
            .member
            .as_mut()
            .ok_or_else(user_not_found)
    }
}

fn user_not_found() -> ApiError {
    ApiError::new(ErrorKind::UserNotFound)
}
