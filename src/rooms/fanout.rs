//! One room's live side: its sockets and members, the feed of events they read, its kept
//! history and message ids. Everything here runs under the room's lock ([`Room::live`])
//! and is memory work only; what must happen after the lock (waking sleeping members,
//! closing sockets, logging, queueing a message for the disk) is collected in an
//! [`Aftermath`] and done once the lock is released.
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
//!
//! # Two locks per room
//! The room's lock ([`Room::live`]) orders its events and guards its members; the feed has
//! a read-write lock of its own ([`Room::feed`]), written only by a holder of the room's
//! lock (so in the room's one order) and read by every member without the room's lock: 500
//! members taking one mutex for each event made them queue behind each other. Each socket
//! keeps its cursor in its [`Subscriber`], where the room reads it to trim the feed and to
//! find laggards. Lock order: the room's lock, then the feed's; readers take the feed's only.
//!
//! # Several nodes: a feed filled from the subscription
//! With Redis (`rooms::cluster`), Redis orders the room's events, not this lock: a join,
//! send or leave is checked here (the speaker's own node still makes it wait while a local
//! reader is behind, as above), then run as a Redis script with no lock held, and the event
//! comes back, to every node, the speaker's too, through the subscription
//! ([`Live::deliver`]). The subscriber thread serves every room of the node, so it must never
//! wait: it appends even to a full feed. Speakers on other nodes do not see this node's
//! readers, so the feed may overshoot its capacity; at twice the capacity (a hard bound)
//! every socket still behind the oldest event is closed as a slow reader (1008), stalled or
//! not, so the subscriber is never slowed and memory stays bounded. A socket that joins
//! reads nothing until its own join comes back ([`Socket::joining`]): what came before is
//! in the history its join replayed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{as_replay, join_message, leave_message, EventType, ServerEvent};
use crate::redis_link::{Kind, Link};
use crate::store::Store;
use crate::sync::{lock, read, write};

use super::waker::Waker;

use super::catalog::Info;
use super::view::{RoomView, UserView};

/// A socket's side of the room: how the room sees, wakes and closes one socket. In
/// practice one WebSocket's doorbell (`ws::doorbell`).
pub trait Subscriber: Send + Sync {
    /// The sequence number of the next feed event the socket reads.
    fn cursor(&self) -> u64;
    /// Moves the cursor: set by the room at a join, then by the socket as it reads.
    fn set_cursor(&self, seq: u64);
    /// Whether the socket's thread is asleep waiting for events: only those are woken.
    fn is_asleep(&self) -> bool;
    /// Whether the client is not reading: bytes are waiting for its kernel send buffer,
    /// which is full. Decides who is a slow reader (see the module docs).
    fn is_stalled(&self) -> bool;
    /// Wakes the socket's thread if it sleeps. A system call: only after the lock.
    fn wake(&self);
    /// Tells the socket's thread, asleep or not, that a frame it holds may go now: the
    /// signal must not be lost if the thread is about to sleep. After the lock.
    fn retry(&self);
    /// Tells the socket it has been removed from the room, and why. After the lock.
    fn close(&self, reason: CloseReason);
}

/// Why the room removed a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It stopped reading while the feed was full (WebSocket close 1008).
    SlowReader,
    /// The room was deleted (a 101 error event, then close 1001).
    RoomDeleted,
    /// Several nodes: Redis is unreachable, so events may have been missed (close 1012,
    /// "service restart": the client reconnects and resumes with `since`).
    BackendLost,
}

/// Why a chat action did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A client mistake, answered with an error event.
    Error(ApiError),
    /// The feed is full and someone who reads is behind: nothing happened; the socket has
    /// been registered to be woken when there is room, and tries again then.
    Busy,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal::Error(error)
    }
}

/// One room: its id, its state behind the lock that orders its events, and the sequence
/// number of its next event (readable without the lock, so a socket can check for news
/// before it sleeps).
pub struct Room {
    /// The room's id, never reused.
    pub id: u64,
    /// The lock that orders the room's events. Held for memory work only: never across disk
    /// I/O, bcrypt, a log line or a system call (see `rooms` for the rules).
    live: Mutex<Live>,
    /// The feed, shared with `live`, which alone writes it.
    feed: Arc<RwLock<Feed>>,
    /// The feed's next sequence number, published for a check without any lock; shared
    /// with `live`, which stores it.
    head: Arc<AtomicU64>,
    /// Set while speakers wait for room in the feed: readers at its front then free it.
    waiting: AtomicBool,
    /// Several nodes: where leaves are published (see the module docs).
    link: Option<Arc<Link>>,
}

/// The room's recent events, read by every member from its own cursor.
pub(super) struct Feed {
    /// `events[0]` has sequence number `first_seq`.
    events: VecDeque<Arc<str>>,
    first_seq: u64,
}

impl Feed {
    fn head(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }
}

/// Everything behind a room's lock.
pub(super) struct Live {
    /// Title, visibility, hash...: changed only by the catalogue.
    pub(super) info: Info,
    /// Set when the room is deleted: nothing may attach or speak after that.
    pub(super) deleted: bool,
    /// Connected sockets by session id (so in connection order), joined or not.
    sockets: BTreeMap<u64, Socket>,
    /// The room's feed (see [`Room::feed`]).
    feed: Arc<RwLock<Feed>>,
    /// The feed's head as sockets see it without a lock (see [`Live::push`]).
    head: Arc<AtomicU64>,
    /// The most events the feed holds before speakers wait (`send_queue_len`).
    capacity: usize,
    /// Set when Redis orders the room's events (several nodes): leaves are published, not
    /// appended here, and the feed fills from [`Live::deliver`].
    shared: bool,
    /// The last `history_len` `send` events with their ids, oldest first.
    history: VecDeque<(u64, Arc<str>)>,
    history_len: usize,
    /// The id of the room's last message; the next one gets one more.
    last_message_id: u64,
    /// Speakers refused with [`Refusal::Busy`], to be woken when the feed has room.
    waiting: Vec<Arc<dyn Subscriber>>,
}

/// A socket connected to the room.
struct Socket {
    /// Its doorbell, and its cursor in the feed.
    subscriber: Arc<dyn Subscriber>,
    /// Set while the socket has joined under a name; a socket has at most one.
    member: Option<Member>,
    /// After a leave: the socket still reads the events before its leave, up to here.
    reads_until: Option<u64>,
    /// Several nodes: joined, but its own join has not come back from Redis yet; it reads
    /// nothing until then, and from its join on.
    joining: bool,
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

/// What a join hands back to its socket.
pub struct Joined {
    /// The kept messages it asked for, as replayed (`"replay":true`), oldest first: to be
    /// sent before anything from the feed.
    pub replay: Vec<String>,
    /// Where in the feed it reads from: its own join; `None` with several nodes, where the
    /// join comes back through the subscription (see `Membership::join_arrived`).
    pub cursor: Option<u64>,
}

/// What a room's work after its lock needs: the store (history) and the waker thread.
#[derive(Clone)]
pub struct Services {
    /// Where messages are saved.
    pub store: Arc<dyn Store>,
    /// Who rings doorbells for chat messages.
    pub waker: Waker,
}

/// Work to do once the room's lock is released.
#[derive(Default)]
pub struct Aftermath {
    wake: Vec<Arc<dyn Subscriber>>,
    /// Whether `wake` goes to the waker thread (chat messages) or is rung at once.
    wake_later: bool,
    retry: Vec<Arc<dyn Subscriber>>,
    close: Vec<(Arc<dyn Subscriber>, CloseReason)>,
    slow: Vec<String>,
    /// A message for the database's history: room id, message id, its text.
    persist: Option<(u64, u64, Arc<str>)>,
    /// Several nodes: leaves to publish through Redis (socket, lower-cased name, text).
    leaves: Vec<(u64, String, String)>,
}

impl Aftermath {
    /// Wakes, closes, logs and persists what the locked work left for it.
    pub fn finish(self, room_id: u64, services: &Services, link: Option<&Link>) {
        if self.wake_later {
            services.waker.wake(self.wake);
        } else {
            for subscriber in self.wake {
                subscriber.wake();
            }
        }
        for subscriber in self.retry {
            subscriber.retry();
        }
        for (subscriber, reason) in self.close {
            subscriber.close(reason);
        }
        for name in self.slow {
            log::warn!("room {room_id}: {name} stopped reading; closing it");
        }
        if let Some((room_id, id, text)) = self.persist {
            services.store.append_message(room_id, id, &text);
        }
        if let Some(link) = link {
            for (session, lower, text) in self.leaves {
                // Refused: the name was reaped or the room deleted; down: the link's
                // recovery retires this node's members. Either way nothing is left to do.
                let _ = link.leave(room_id, &lower, &link.owner(session), &text);
            }
        }
    }
}

impl Room {
    /// A room with no sockets, its kept `history` (with ids) and the id of its last message.
    pub(super) fn new(
        info: Info,
        history: Vec<(u64, Arc<str>)>,
        last_message_id: u64,
        capacity: usize,
        history_len: usize,
        link: Option<Arc<Link>>,
    ) -> Room {
        let id = info.id;
        let mut history: VecDeque<_> = history.into();
        while history.len() > history_len {
            history.pop_front();
        }
        let last_message_id = history.back().map_or(0, |(id, _)| *id).max(last_message_id);
        let feed = Arc::new(RwLock::new(Feed {
            events: VecDeque::new(),
            first_seq: 0,
        }));
        let head = Arc::new(AtomicU64::new(0));
        Room {
            id,
            feed: Arc::clone(&feed),
            head: Arc::clone(&head),
            live: Mutex::new(Live {
                info,
                deleted: false,
                sockets: BTreeMap::new(),
                feed,
                head,
                // A feed of one event could never hold a join and the leave it may need.
                capacity: capacity.max(2),
                shared: link.is_some(),
                history,
                history_len,
                last_message_id,
                waiting: Vec::new(),
            }),
            waiting: AtomicBool::new(false),
            link,
        }
    }

    /// Runs `work` under the room's lock, then does what it left in its [`Aftermath`].
    pub(super) fn with_live<T>(
        &self,
        services: &Services,
        work: impl FnOnce(&mut Live, &mut Aftermath) -> T,
    ) -> T {
        let mut after = Aftermath::default();
        let result = {
            let mut live = lock(&self.live);
            let result = work(&mut live, &mut after);
            self.waiting.store(!live.waiting.is_empty(), SeqCst);
            result
        };
        after.finish(self.id, services, self.link.as_deref());
        result
    }

    /// Whether no socket is connected to the room (several nodes: it can be dropped).
    pub(super) fn is_idle(&self) -> bool {
        lock(&self.live).sockets.is_empty()
    }

    /// The room's title, for the index.
    pub(super) fn title(&self) -> String {
        lock(&self.live).info.title.clone()
    }

    /// Whether the feed has events past `cursor`: checked, without the lock, by a socket
    /// about to sleep.
    pub fn has_news(&self, cursor: u64) -> bool {
        self.head.load(SeqCst) > cursor
    }

    /// Hands at most `max` feed events from `cursor` (before `until`) to `each`, in order,
    /// under the feed's read lock only (`each` encodes a frame into the socket's buffer:
    /// memory work). Returns the cursor after them, and whether the socket was at the
    /// feed's front (one of those a full feed waits for).
    pub(super) fn read(
        &self,
        cursor: u64,
        until: u64,
        max: usize,
        mut each: impl FnMut(&str),
    ) -> (u64, bool) {
        let feed = read(&self.feed);
        let start = cursor.max(feed.first_seq);
        let end = until
            .min(feed.head())
            .min(start.saturating_add(max as u64))
            .max(start);
        let from = usize::try_from(start - feed.first_seq).unwrap_or(usize::MAX);
        let to = usize::try_from(end - feed.first_seq).unwrap_or(usize::MAX);
        feed.events.range(from..to).for_each(|text| each(text));
        (end, start == feed.first_seq)
    }

    /// Whether speakers wait for room in the feed.
    pub(super) fn has_waiting(&self) -> bool {
        self.waiting.load(SeqCst)
    }
}

impl Live {
    /// The sequence number the next feed event gets.
    fn head(&self) -> u64 {
        read(&self.feed).head()
    }

    /// The room as clients see it, with or without its members.
    pub(super) fn view(&self, with_users: bool) -> RoomView {
        let info = &self.info;
        RoomView {
            id: info.id,
            title: info.title.clone(),
            description: info.description.clone(),
            visibility: info.visibility,
            created_at: info.created_at.clone(),
            updated_at: info.updated_at.clone(),
            users: with_users.then(|| {
                self.sockets
                    .values()
                    .filter_map(|s| s.member.as_ref())
                    .map(|m| UserView {
                        username: m.username.clone(),
                        color: m.color.clone(),
                        last_activity: m.last_activity.clone(),
                    })
                    .collect()
            }),
        }
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
    fn make_space(&mut self, session: u64, after: &mut Aftermath) -> Result<(), Refusal> {
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
    fn close_laggards(&mut self, all: bool, after: &mut Aftermath) {
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
    fn feed_len(&self) -> usize {
        read(&self.feed).events.len()
    }

    /// Whether the feed may take one more event.
    fn has_space(&self) -> bool {
        self.feed_len() < self.capacity
    }

    /// Drops the feed events every reading socket has read.
    fn trim(&mut self) {
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
    fn push(&mut self, text: Arc<str>, after: &mut Aftermath) -> u64 {
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
    fn socket(&mut self, session: u64) -> Result<&mut Socket, ApiError> {
        self.sockets.get_mut(&session).ok_or_else(user_not_found)
    }

    fn member(&mut self, session: u64) -> Result<&mut Member, ApiError> {
        self.socket(session)?
            .member
            .as_mut()
            .ok_or_else(user_not_found)
    }
}

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
        if self.feed_len() > self.capacity {
            self.trim();
        }
        if self.feed_len() > self.capacity {
            let hard = self.feed_len() >= self.capacity.saturating_mul(2);
            self.close_laggards(hard, after);
        }
    }
}

fn user_not_found() -> ApiError {
    ApiError::new(ErrorKind::UserNotFound)
}
