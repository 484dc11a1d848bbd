//! A room's handle and the work after its lock: [`Room`] (its lock, its [`Feed`] and the
//! lock-free [`Room::read`] every member reads it with), the [`Subscriber`] seam through
//! which the room sees a socket, why a socket was closed or an action refused, what a
//! join hands back ([`Joined`]), and the [`Aftermath`] done once the lock is released.
//! What happens under the lock is `fanout` (`Live`).
//!
//! # Two locks per room
//! The room's lock ([`Room::live`]) orders its events and guards its members; the feed has
//! a read-write lock of its own ([`Room::feed`]), written only by a holder of the room's
//! lock (so in the room's one order) and read by every member without the room's lock: 500
//! members taking one mutex for each event made them queue behind each other. Each socket
//! keeps its cursor in its [`Subscriber`], where the room reads it to trim the feed and to
//! find laggards. Lock order: the room's lock, then the feed's; readers take the feed's only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::ApiError;
use crate::redis_link::Link;
use crate::store::Store;
use crate::sync::{lock, read};

use super::catalog::Info;
use super::fanout::Live;
use super::waker::Waker;

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
    pub(super) events: VecDeque<Arc<str>>,
    pub(super) first_seq: u64,
}

impl Feed {
    pub(super) fn head(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }
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
    pub(super) wake: Vec<Arc<dyn Subscriber>>,
    /// Whether `wake` goes to the waker thread (chat messages) or is rung at once.
    pub(super) wake_later: bool,
    pub(super) retry: Vec<Arc<dyn Subscriber>>,
    pub(super) close: Vec<(Arc<dyn Subscriber>, CloseReason)>,
    pub(super) slow: Vec<String>,
    /// A message for the database's history: room id, message id, its text.
    pub(super) persist: Option<(u64, u64, Arc<str>)>,
    /// Several nodes: leaves to publish through Redis (socket, lower-cased name, text).
    pub(super) leaves: Vec<(u64, String, String)>,
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
