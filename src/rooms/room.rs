//! One room's live side: the sockets in it, each with the crossbeam channel its thread
//! reads the room's events from, the room's kept messages and message ids, and the lock
//! that gives every member one order.
//!
//! # Fan-out: a channel per member, filled under the room's lock
//! A socket attached to a room gives it the sending end of its channel. An event is
//! serialised once, and [`RoomState::broadcast`] hands every member a shared copy (an
//! `Arc<String>`, one thin pointer) with `try_send`, under the room's lock: one lock, so
//! every member's channel receives the room's events in one order. Each member's own thread
//! takes them from its channel and writes them to its socket (`ws::session`). Members
//! asleep are noted while the lock is held and woken once it is released ([`After`]):
//! waking is a system call, and nothing slow happens under this lock. A chat message's
//! members are woken by the waker thread (`waker`: why), a join's or leave's at once; a
//! sleeping member is woken by having its events written for it (`Bell::wake`).
//!
//! # The bound, and who waits
//! Each channel holds at most `send_queue_len` events that a member has not taken yet.
//! The room checks before a speaker's event (a join, a send, a leave) that every member's
//! channel has room ([`RoomState::make_space`]). A full one is:
//! - a *slow reader* if its client has stopped reading (its thread's writes would block:
//!   [`Bell::is_stalled`]): it stops receiving and is closed (1008); its thread then
//!   detaches it, which broadcasts its leave;
//! - otherwise a reader whose thread is only behind (the cores are busy): nothing is sent,
//!   the speaker is told [`Refusal::Busy`] and waits, holding its frame, until the reader
//!   takes from its channel ([`Room::retry_waiting`]). Under overload the room slows down
//!   evenly, and nobody who reads loses an event (SPEC, Ordering and delivery).
//!
//! Leaves of sockets that end, and events that come from another node's order (Redis), go
//! past the bound: a room must not wait for them. There is at most one leave per socket,
//! so the bound stays a bound; what comes from another node is capped at twice the bound,
//! past which every member still behind is closed as a slow reader ([`RoomState::deliver`]).
//!
//! The channels are crossbeam's unbounded (linked blocks of 31 events) with the bound kept
//! here, by the only code that sends to them: the bounded flavour allocates all its slots
//! when it is made, 16 bytes each, 4 KiB per idle socket at the default 256, where a
//! socket with nothing queued should cost next to nothing. An unbounded channel keeps the
//! block its next event goes to, so an idle member that ever received keeps one: 31 slots
//! of an event and a stamp. Events are `Arc<String>` rather than `Arc<str>` for that
//! block: a thin pointer, 8 bytes where `Arc<str>` takes 16, makes it 504 bytes instead of
//! 752 (and the serialised `String` moves into its `Arc` without a copy).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{as_replay, leave_message, EventType, ServerEvent};
use crate::metrics::CloseReason;
use crate::sync::lock;

use super::bell::Bell;
use super::view::UserView;
use super::waker::Waker;

/// One room's live side. See the module docs.
pub struct Room {
    /// The room's id, never reused.
    pub id: u64,
    /// The lock that orders the room's events. Held for memory work only: never across
    /// disk I/O, bcrypt, a log line, a Redis call or a system call on another socket.
    state: Mutex<RoomState>,
    /// Set while speakers wait for a full channel, read without the lock by members that
    /// take from their channels (so they tell the room only when someone waits). Shared
    /// with the state, which sets it the moment a speaker starts waiting.
    waiting: Arc<AtomicBool>,
    /// Rings the members a chat message went to (see `waker`).
    waker: Waker,
}

/// Everything behind a room's lock.
pub struct RoomState {
    /// The room's id (for the events it serialises).
    pub id: u64,
    /// Set when the room is deleted (or, with several nodes, its node lost Redis): nothing
    /// may attach after that.
    closed: bool,
    /// Connected sockets by session id (so in connection order), joined or not.
    sockets: BTreeMap<u64, Socket>,
    /// The last `history_len` `send` events with their ids, oldest first (one node: with
    /// several nodes Redis keeps them, and this stays empty).
    history: VecDeque<(u64, Arc<String>)>,
    history_len: usize,
    /// The id of the room's last message; the next one gets one more.
    last_message_id: u64,
    /// Speakers told [`Refusal::Busy`], to be rung when a full channel is taken from.
    waiting: Vec<Arc<Bell>>,
    /// Whether `waiting` has anyone, for members to read without the lock (`Room::waiting`).
    waiting_flag: Arc<AtomicBool>,
    capacity: usize,
}

/// A socket connected to a room.
struct Socket {
    /// The room's end of the socket's channel.
    outbox: Sender<Arc<String>>,
    /// Wakes and closes the socket's thread.
    bell: Arc<Bell>,
    /// Set while the socket holds a name in the room; a socket has at most one.
    member: Option<Member>,
    /// Whether the room's events go to it: from its own join (with several nodes, once
    /// its join has come back from Redis) to its leave, or until it is closed.
    receiving: bool,
}

/// The name a socket joined with.
#[derive(Debug, Clone)]
pub struct Member {
    pub username: String,
    pub color: String,
    pub last_activity: String,
}

/// Why a chat action did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A client mistake, answered with an error event.
    Error(ApiError),
    /// A member whose client reads is behind and its channel is full: nothing happened;
    /// the speaker is rung when that member has taken from it, and tries again then.
    Busy,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal::Error(error)
    }
}

/// What a join hands back to its socket.
pub struct Joined {
    /// The kept messages it asked for, as replayed (`"replay":true`), oldest first: to be
    /// written before anything from its channel.
    pub replay: Vec<String>,
}

/// Work to do once the room's lock is released: system calls on other sockets' bells.
#[derive(Default)]
pub struct After {
    wake: Vec<Arc<Bell>>,
    /// Whether `wake` goes to the waker thread (a chat message) or is rung here.
    wake_later: bool,
    retry: Vec<Arc<Bell>>,
    close: Vec<(Arc<Bell>, CloseReason)>,
}

impl After {
    /// Has the members woken for a chat message rung by the waker thread (see `waker`).
    pub fn wake_later(&mut self) {
        self.wake_later = true;
    }

    fn finish(self, waker: &Waker) {
        if self.wake_later {
            waker.wake(self.wake);
        } else {
            let mut scratch = Vec::new();
            for bell in self.wake {
                bell.wake(&mut scratch);
            }
        }
        for bell in self.retry {
            bell.ring();
        }
        for (bell, reason) in self.close {
            bell.close(reason);
        }
    }
}

impl Room {
    /// A room with no sockets, its kept `history` (with ids, oldest first) and the id of
    /// its last message.
    pub fn new(
        id: u64,
        history: Vec<(u64, Arc<String>)>,
        last_message_id: u64,
        capacity: usize,
        history_len: usize,
        waker: Waker,
    ) -> Room {
        let mut history: VecDeque<_> = history.into();
        while history.len() > history_len {
            history.pop_front();
        }
        let last_message_id = history.back().map_or(0, |(id, _)| *id).max(last_message_id);
        // A channel of one could never take a join and the leave that may follow it.
        let capacity = capacity.max(2);
        let waiting = Arc::new(AtomicBool::new(false));
        Room {
            id,
            state: Mutex::new(RoomState {
                id,
                closed: false,
                sockets: BTreeMap::new(),
                history,
                history_len,
                last_message_id,
                waiting: Vec::new(),
                waiting_flag: Arc::clone(&waiting),
                capacity,
            }),
            waiting,
            waker,
        }
    }

    /// Runs `work` under the room's lock, then wakes and closes what it left in [`After`].
    pub fn locked<T>(&self, work: impl FnOnce(&mut RoomState, &mut After) -> T) -> T {
        let mut after = After::default();
        let result = {
            let mut state = lock(&self.state);
            let result = work(&mut state, &mut after);
            self.waiting.store(!state.waiting.is_empty(), SeqCst);
            result
        };
        after.finish(&self.waker);
        result
    }

    /// Whether speakers wait for a full channel (no lock taken).
    pub fn has_waiting(&self) -> bool {
        self.waiting.load(SeqCst)
    }

    /// Rings the waiting speakers: a member took from its full channel, or stopped
    /// reading (then they close it). They check again under the lock.
    pub fn retry_waiting(&self) {
        self.locked(|state, after| after.retry.append(&mut state.waiting));
    }
}

impl RoomState {
    /// Connects socket `session`, not joined yet (101 if the room is gone): from now on it
    /// hears of the room's deletion.
    pub fn attach(
        &mut self,
        session: u64,
        outbox: Sender<Arc<String>>,
        bell: Arc<Bell>,
    ) -> Result<(), ApiError> {
        if self.closed {
            return Err(ApiError::new(ErrorKind::RoomNotFound));
        }
        let socket = Socket {
            outbox,
            bell,
            member: None,
            receiving: false,
        };
        self.sockets.insert(session, socket);
        Ok(())
    }

    /// Disconnects socket `session`; returns its name if it held one (its leave is for the
    /// caller to broadcast). Speakers that waited for it go on.
    pub fn detach(&mut self, session: u64, after: &mut After) -> Option<Member> {
        let socket = self.sockets.remove(&session)?;
        after.retry.append(&mut self.waiting);
        socket.member
    }

    /// Whether no socket is connected.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes every socket away and has each closed for `reason`; nothing is broadcast,
    /// and nothing attaches after this.
    pub fn close_all(&mut self, reason: CloseReason, after: &mut After) {
        self.closed = true;
        self.close_each(reason, after);
        self.sockets.clear();
        after.retry.append(&mut self.waiting);
    }

    /// Has every socket closed for `reason`, the room staying open: each stays attached
    /// until its thread detaches it, so a joined one's leave is broadcast (and, with
    /// several nodes, its name given up) as for any close. For a change of the room's
    /// password or visibility: every socket must show what the room asks for now.
    pub fn close_each(&mut self, reason: CloseReason, after: &mut After) {
        for socket in self.sockets.values() {
            after.close.push((Arc::clone(&socket.bell), reason));
        }
    }

    /// 202 unless `name` is free in the room (case-insensitively) and socket `session`
    /// holds no name yet; 201 if the socket is not attached (any more).
    fn check_name(&self, session: u64, name: &str) -> Result<(), ApiError> {
        let socket = self.sockets.get(&session).ok_or_else(user_not_found)?;
        let lower = name.to_lowercase();
        let taken = socket.member.is_some()
            || self.sockets.values().any(|s| {
                s.member
                    .as_ref()
                    .is_some_and(|m| m.username.to_lowercase() == lower)
            });
        if taken {
            return Err(ApiError::field(ErrorKind::DuplicateUsername, "name"));
        }
        Ok(())
    }

    /// Gives socket `session` the name `name` (202 if it is taken or the socket holds one,
    /// 201 if the socket is gone), once every channel has room for its join (else Busy,
    /// see [`RoomState::make_space`]). The socket receives the room's events from now on
    /// when `receiving` (else from [`RoomState::deliver`]'s `joined`).
    pub fn take_name(
        &mut self,
        session: u64,
        name: &str,
        color: &str,
        receiving: bool,
        after: &mut After,
    ) -> Result<Member, Refusal> {
        self.check_name(session, name)?;
        self.make_space(session, after)?;
        let member = Member {
            username: name.to_owned(),
            color: color.to_owned(),
            last_activity: now_rfc3339(),
        };
        if let Some(socket) = self.sockets.get_mut(&session) {
            socket.member = Some(member.clone());
            socket.receiving = receiving;
        }
        Ok(member)
    }

    /// Takes socket `session`'s name away (201 if it has none): it receives nothing more,
    /// but what is in its channel is still its to read.
    pub fn give_up_name(&mut self, session: u64) -> Result<Member, ApiError> {
        let socket = self.sockets.get_mut(&session).ok_or_else(user_not_found)?;
        let member = socket.member.take().ok_or_else(user_not_found)?;
        socket.receiving = false;
        Ok(member)
    }

    /// The name socket `session` joined with, its last activity set to `now` (201 if none:
    /// never joined, left, or closed as a slow reader).
    pub fn speaker(&mut self, session: u64, now: &str) -> Result<Member, ApiError> {
        let member = self
            .sockets
            .get_mut(&session)
            .and_then(|s| s.member.as_mut())
            .ok_or_else(user_not_found)?;
        member.last_activity = now.to_owned();
        Ok(member.clone())
    }

    /// Makes sure every receiving member's channel has room for one more event from
    /// `session`: a full one whose client stopped reading is closed as a slow reader; if a
    /// full one still reads, [`Refusal::Busy`] and `session` is rung once it has taken
    /// from it (see the module docs).
    pub fn make_space(&mut self, session: u64, after: &mut After) -> Result<(), Refusal> {
        if !self.is_anyone_behind(after) {
            return Ok(());
        }
        if let Some(socket) = self.sockets.get(&session) {
            if !self.waiting.iter().any(|w| Arc::ptr_eq(w, &socket.bell)) {
                self.waiting.push(Arc::clone(&socket.bell));
            }
        }
        // Said before looking again: a member taking from its channel from now on sees it
        // and rings; one that took before is seen here (SeqCst on both sides, see
        // `Membership::take`), so the speaker never waits for a ring that will not come.
        self.waiting_flag.store(true, SeqCst);
        if self.is_anyone_behind(after) {
            Err(Refusal::Busy)
        } else {
            Ok(())
        }
    }

    /// Whether a receiving member's channel is full while its client reads; full ones whose
    /// client stopped reading are closed as slow readers on the way.
    fn is_anyone_behind(&mut self, after: &mut After) -> bool {
        let mut behind = false;
        for socket in self.sockets.values_mut() {
            if !socket.receiving || socket.outbox.len() < self.capacity {
                continue;
            }
            if socket.bell.is_stalled() {
                stop_as_slow(socket, after);
            } else {
                behind = true;
            }
        }
        behind
    }

    /// Hands `text` to every receiving member's channel, in the room's order, and notes
    /// the sleeping ones to be woken after the lock.
    pub fn broadcast(&mut self, text: &Arc<String>, after: &mut After) {
        for socket in self.sockets.values().filter(|s| s.receiving) {
            // Disconnected: the socket's thread has ended and is about to detach it.
            if socket.outbox.try_send(Arc::clone(text)).is_ok() && socket.bell.is_asleep() {
                after.wake.push(Arc::clone(&socket.bell));
            }
        }
    }

    /// An event ordered elsewhere (several nodes: from the subscription): handed to every
    /// member without waiting, since the subscriber serves every room. `joined` names
    /// the socket whose own join this is: it receives from here on. Past twice the bound a
    /// member still behind is closed, and past the bound one that stopped reading.
    pub fn deliver(&mut self, text: &Arc<String>, joined: Option<u64>, after: &mut After) {
        if let Some(socket) = joined.and_then(|session| self.sockets.get_mut(&session)) {
            socket.receiving = socket.member.is_some();
        }
        self.broadcast(text, after);
        for socket in self.sockets.values_mut().filter(|s| s.receiving) {
            let queued = socket.outbox.len();
            let stalled = queued >= self.capacity && socket.bell.is_stalled();
            if stalled || queued >= self.capacity.saturating_mul(2) {
                stop_as_slow(socket, after);
            }
        }
    }

    /// The id for the room's next message, once it is sent.
    pub fn next_message_id(&self) -> u64 {
        self.last_message_id + 1
    }

    /// Records message `id` as sent and keeps it in the history.
    pub fn keep(&mut self, id: u64, text: &Arc<String>) {
        self.last_message_id = id;
        if self.history_len > 0 {
            while self.history.len() >= self.history_len {
                self.history.pop_front();
            }
            self.history.push_back((id, Arc::clone(text)));
        }
    }

    /// The kept messages with an id above `since`, as replayed to a socket that joins.
    pub fn replay(&self, since: u64) -> Vec<String> {
        self.history
            .iter()
            .filter(|(id, _)| *id > since)
            .map(|(_, text)| as_replay(text))
            .collect()
    }

    /// The kept messages with an id above `since`, oldest first, at most `limit` (the
    /// newest ones), as broadcast.
    pub fn messages(&self, since: u64, limit: usize) -> Vec<Arc<String>> {
        let newer: Vec<_> = self.history.iter().filter(|(id, _)| *id > since).collect();
        let skip = newer.len().saturating_sub(limit);
        newer
            .into_iter()
            .skip(skip)
            .map(|(_, text)| Arc::clone(text))
            .collect()
    }

    /// The people joined, as the API shows them.
    pub fn users(&self) -> Vec<UserView> {
        self.sockets
            .values()
            .filter_map(|s| s.member.as_ref())
            .map(|m| UserView {
                username: m.username.clone(),
                color: m.color.clone(),
                last_activity: m.last_activity.clone(),
            })
            .collect()
    }

    /// How many sockets hold a name.
    pub fn members(&self) -> usize {
        self.sockets.values().filter(|s| s.member.is_some()).count()
    }

    /// One event of this room, serialised once for all its members.
    pub fn event(
        &self,
        event_type: EventType,
        member: &Member,
        msg: &str,
        time: &str,
        id: Option<u64>,
    ) -> Arc<String> {
        ServerEvent {
            event_type,
            name: &member.username,
            color: &member.color,
            msg,
            room_id: self.id,
            time,
            id,
        }
        .to_text()
        .into()
    }

    /// `member`'s leave event, now.
    pub fn leave_event(&self, member: &Member) -> Arc<String> {
        let msg = leave_message(&member.username);
        self.event(EventType::Leave, member, &msg, &now_rfc3339(), None)
    }
}

/// A member whose channel is full and whose client stopped reading: it receives nothing
/// more and is closed (1008); its thread then detaches it, and its leave is broadcast.
fn stop_as_slow(socket: &mut Socket, after: &mut After) {
    socket.receiving = false;
    after
        .close
        .push((Arc::clone(&socket.bell), CloseReason::Slow));
}

fn user_not_found() -> ApiError {
    ApiError::new(ErrorKind::UserNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;

    /// A socket attached to `room` as `session`, joined as `name` and receiving when
    /// `receiving`; its channel's receiving end and its bell.
    fn socket(
        room: &Room,
        session: u64,
        name: &str,
        receiving: bool,
    ) -> (Receiver<Arc<String>>, Arc<Bell>) {
        let (outbox, inbox) = crossbeam_channel::unbounded();
        let bell = Arc::new(Bell::new().unwrap());
        room.locked(|state, after| {
            state.attach(session, outbox, Arc::clone(&bell)).unwrap();
            state
                .take_name(session, name, "red", receiving, after)
                .unwrap();
        });
        (inbox, bell)
    }

    fn deliver(room: &Room, text: &str, joined: Option<u64>) {
        let text = Arc::new(text.to_owned());
        room.locked(|state, after| state.deliver(&text, joined, after));
    }

    /// With several nodes a socket receives nothing until its own join comes back from
    /// Redis, then everything from it on: what came before is in the history its join
    /// replayed, not twice.
    #[test]
    fn a_socket_joining_through_another_node_receives_from_its_own_join_on() {
        let room = Room::new(1, Vec::new(), 0, 4, 0, Waker::start().unwrap());
        let (inbox, _) = socket(&room, 1, "ann", false);
        deliver(&room, "before", None);
        deliver(&room, "ann's join", Some(1));
        deliver(&room, "after", None);
        let got: Vec<Arc<String>> = inbox.try_iter().collect();
        assert_eq!(
            got,
            [
                Arc::new(String::from("ann's join")),
                Arc::new(String::from("after"))
            ]
        );
    }

    /// The subscriber never waits: it hands events past the bound; a member that stopped
    /// reading is closed at the bound, and at twice the bound every member still behind
    /// is, stalled or not, so memory stays bounded.
    #[test]
    fn events_from_another_node_pass_the_bound_up_to_twice_it() {
        let room = Room::new(1, Vec::new(), 0, 2, 0, Waker::start().unwrap());
        let (stalled, stalled_bell) = socket(&room, 1, "ann", true);
        let (behind, behind_bell) = socket(&room, 2, "bob", true);
        stalled_bell.set_stalled(true);
        deliver(&room, "1", None);
        assert_eq!(stalled_bell.closing(), None);
        deliver(&room, "2", None);
        assert_eq!(stalled_bell.closing(), Some(CloseReason::Slow));
        deliver(&room, "3", None);
        assert_eq!(
            behind_bell.closing(),
            None,
            "behind, but under twice the bound"
        );
        deliver(&room, "4", None);
        assert_eq!(behind_bell.closing(), Some(CloseReason::Slow));
        deliver(&room, "5", None);
        assert_eq!((stalled.len(), behind.len()), (2, 4));
    }

    /// A leave goes past the bound: the room cannot wait for a socket that is gone.
    #[test]
    fn a_broadcast_to_a_full_channel_still_arrives() {
        let room = Room::new(1, Vec::new(), 0, 2, 0, Waker::start().unwrap());
        let (inbox, _) = socket(&room, 1, "ann", true);
        for text in ["1", "2", "a leave"] {
            let text = Arc::new(text.to_owned());
            room.locked(|state, after| state.broadcast(&text, after));
        }
        assert_eq!(inbox.len(), 3);
    }

    #[test]
    fn names_are_unique_case_insensitively_and_one_per_socket() {
        let room = Room::new(1, Vec::new(), 0, 2, 0, Waker::start().unwrap());
        let _ann = socket(&room, 1, "Ann", true);
        let (outbox, _inbox) = crossbeam_channel::unbounded();
        let bell = Arc::new(Bell::new().unwrap());
        room.locked(|state, _| {
            state.attach(2, outbox, bell).unwrap();
            assert_eq!(state.check_name(2, "ANN").unwrap_err().code(), 202);
            assert_eq!(state.check_name(1, "zed").unwrap_err().code(), 202);
            assert!(state.check_name(2, "bob").is_ok());
            assert_eq!(state.check_name(3, "bob").unwrap_err().code(), 201);
        });
    }

    #[test]
    fn a_closed_room_takes_no_socket_and_closes_those_it_had() {
        let room = Room::new(1, Vec::new(), 0, 2, 0, Waker::start().unwrap());
        let (_, bell) = socket(&room, 1, "ann", true);
        room.locked(|state, after| state.close_all(CloseReason::RoomDeleted, after));
        assert_eq!(bell.closing(), Some(CloseReason::RoomDeleted));
        let (outbox, _inbox) = crossbeam_channel::unbounded();
        let late = Arc::new(Bell::new().unwrap());
        let attached = room.locked(|state, _| state.attach(2, outbox, late));
        assert_eq!(attached.unwrap_err().code(), 101);
    }
}
