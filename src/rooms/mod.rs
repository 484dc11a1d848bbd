//! The rooms: the one seam between the REST and chat sides and where rooms live, and the
//! live side of each room that every backend shares.
//!
//! `http` and `ws` ask [`Rooms`] (a trait object built once in `start`): list, find,
//! create, change and delete rooms, and attach a socket to one. Two backends answer:
//! - one node, [`RoomMap`] (`map`): rooms in memory, saved to SQLite (`store`), each room's
//!   order kept by its lock;
//! - several nodes, `cluster::Cluster` (`src/cluster/`, read last): rooms in Redis, each
//!   room's order kept by Redis.
//!
//! Neither the core nor `http` or `ws` asks which one runs. Both deliver through the same
//! [`Room`] (`room`): a lock, the members' crossbeam channels, the bound. Parts, in reading
//! order:
//! - this file: [`Rooms`], [`Membership`] (a socket's handle on its room), [`attach`];
//! - `room`: one room's live side: its members' channels, the fan-out, who waits;
//! - `bell`: how a room wakes and closes a socket's thread; `waker`: the thread that rings
//!   the members of a chat message, and why it pays for itself;
//! - `map`: the one-node backend: the index by id and title, the order of disk and memory;
//! - `catalog`: what a room is and what a valid one is, for both backends;
//! - `view`: what the API shows ([`RoomView`]: no hash, by construction).
//!
//! `rooms` knows channels and bells, never sockets or HTTP.
//!
//! # Locks, and what may happen while each is held
//! - **A room's lock** (`room::Room`) orders that room's events. Memory work only: never
//!   across disk I/O, bcrypt, a log line, a Redis call or a system call on another socket
//!   (waking a member is one: done after the lock, `room::After`). Rooms do not share it.
//! - **The index** (one node, `map`): ids and titles to rooms. Held for a lookup or an
//!   insert; a room's lock may be taken inside it, never the reverse.
//! - **The writers' lock** (one node, `map`): one room change at a time, *including its
//!   disk write*, so a 201 means the room is on disk. Chat never takes it.

mod bell;
mod catalog;
mod map;
mod room;
mod view;
mod waker;

use std::sync::atomic::{fence, Ordering::SeqCst};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

pub use bell::{Bell, Drain};
pub use catalog::{
    RoomInput, MAX_DESCRIPTION_CHARS, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, TITLE_CHARS,
};
pub use map::RoomMap;
pub use room::{Joined, Refusal, Room};
pub use view::{RoomKey, RoomView, Visibility};
// What only the several-nodes backend (`cluster`, the `redis` feature) takes from here.
#[cfg(feature = "redis")]
pub use {
    catalog::{hash_for, Info},
    room::Member,
    view::UserView,
    waker::Waker,
};

use crate::error::ApiError;
use crate::path::RoomRef;

/// The bounds every backend keeps, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// How many untaken events a member's channel holds before speakers wait
    /// (`send_queue_len`).
    pub queue_len: usize,
    /// How many `send` events each room keeps for sockets that join later (`history_len`).
    pub history_len: usize,
    /// How many rooms may exist (`max_rooms`; 0: no bound).
    pub max_rooms: usize,
}

impl Bounds {
    /// 606 if `rooms` exist already and that is the most allowed.
    pub fn check_room_count(&self, rooms: usize) -> Result<(), ApiError> {
        if self.max_rooms > 0 && rooms >= self.max_rooms {
            return Err(ApiError::new(crate::error::ErrorKind::TooManyRooms));
        }
        Ok(())
    }
}

/// Which rooms a listing shows: those with an id above `after`, at most `limit` of them
/// (`GET /chats?limit=&after=`; without them, every listed room, as in the Go version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Page {
    pub after: u64,
    pub limit: Option<usize>,
}

/// What the gauges of `/metrics` read from the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rooms that exist.
    pub rooms: usize,
    /// Names joined in all rooms (with several nodes: on every node).
    pub users_joined: usize,
    /// Messages waiting to be written to the history.
    pub history_queue: usize,
}

/// Where rooms live and how their events are ordered: one node or several, chosen once in
/// `start`. Every REST request and every socket goes through this.
pub trait Rooms: Send + Sync {
    /// The rooms of `page` except hidden ones, by id. Users are shown for public rooms
    /// only: a listing has no token for each private room.
    fn list(&self, page: Page) -> Result<Vec<RoomView>, ApiError>;
    /// What checking access to the room `room_ref` names needs; 101 if there is none.
    fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError>;
    /// Room `id` as clients see it, with or without its users.
    fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError>;
    /// Room `id`'s kept messages with an id above `since`, oldest first, at most `limit`
    /// (the newest), as broadcast.
    fn messages(&self, id: u64, since: u64, limit: usize) -> Result<Vec<Arc<String>>, ApiError>;
    /// Validates `input`, hashes its password (before any lock) and saves a new room. Its
    /// id is never one used before (SPEC, Rooms); past `max_rooms`, 606.
    fn create(&self, input: RoomInput) -> Result<RoomView, ApiError>;
    /// Applies the fields present in `input` to room `id`.
    fn update(&self, id: u64, input: RoomInput) -> Result<RoomView, ApiError>;
    /// Removes room `id`; its sockets get a 101 event and close 1001.
    fn delete(&self, id: u64) -> Result<(), ApiError>;

    /// Connects socket `session` to room `id`'s live side, its events to go to `outbox`
    /// once it joins: 101 if the room is gone.
    fn attach(
        &self,
        id: u64,
        session: u64,
        outbox: Sender<Arc<String>>,
        bell: Arc<Bell>,
    ) -> Result<Arc<Room>, ApiError>;
    /// Takes `name` for socket `session` and broadcasts its join; the socket receives the
    /// room's events from its join on, after the kept messages above `since`.
    fn join(
        &self,
        room: &Room,
        session: u64,
        name: &str,
        color: &str,
        since: Option<u64>,
    ) -> Result<Joined, Refusal>;
    /// Broadcasts `msg` under the name `session` joined with; returns the message's id.
    fn send(&self, room: &Room, session: u64, msg: &str) -> Result<u64, Refusal>;
    /// Gives `session`'s name up and broadcasts its leave.
    fn leave(&self, room: &Room, session: u64) -> Result<(), Refusal>;
    /// Disconnects `session`, broadcasting its leave if it held a name.
    fn detach(&self, room: &Arc<Room>, session: u64);

    /// What `/metrics` shows of the rooms.
    fn counts(&self) -> Counts;
    /// Whether the backend can be used now (`/healthz`, `chitchat_backend_up`).
    fn is_up(&self) -> bool;
    /// Writes out what is queued (one node) or retires this node (several). At shutdown.
    fn close(&self);
}

/// A socket's place in a room: what its thread joins, speaks, leaves and reads through.
/// Dropping it detaches the socket and broadcasts its leave if it had joined, so a thread
/// that panics does not leave its name behind.
pub struct Membership {
    rooms: Arc<dyn Rooms>,
    room: Arc<Room>,
    session: u64,
    /// The socket's end of its channel: the room's events, in the room's order.
    inbox: Arc<Inbox>,
}

/// A socket's end of its channel, shared by its thread and, while that thread sleeps, the
/// writer the room's waker uses instead of waking it (`ws::frame::Courier`). Whoever takes
/// holds the socket's outgoing buffer, so events leave in the channel's order.
pub struct Inbox {
    events: Receiver<Arc<String>>,
    room: Arc<Room>,
}

impl Inbox {
    /// Hands at most `max` of the events waiting in the channel to `each`, in order;
    /// returns how many. When speakers wait (for this channel, perhaps), they are rung:
    /// there may be room now.
    pub fn take(&self, max: usize, mut each: impl FnMut(&str)) -> usize {
        let taken = self
            .events
            .try_iter()
            .take(max)
            .map(|text| each(&text))
            .count();
        // Pairs with `RoomState::make_space`: either the speaker sees this channel's new
        // room, or this sees that it waits.
        fence(SeqCst);
        if taken > 0 && self.room.has_waiting() {
            self.room.retry_waiting();
        }
        taken
    }
}

/// Connects socket `session`, woken through `bell`, to room `id` (101 if the room is
/// gone): from now on it hears of the room's deletion, and after its join, its events.
pub fn attach(
    rooms: &Arc<dyn Rooms>,
    id: u64,
    session: u64,
    bell: &Arc<Bell>,
) -> Result<Membership, ApiError> {
    let (outbox, inbox) = crossbeam_channel::unbounded();
    let room = rooms.attach(id, session, outbox, Arc::clone(bell))?;
    let inbox = Arc::new(Inbox {
        events: inbox,
        room: Arc::clone(&room),
    });
    Ok(Membership {
        rooms: Arc::clone(rooms),
        room,
        session,
        inbox,
    })
}

impl Membership {
    /// The room's id.
    pub fn room_id(&self) -> u64 {
        self.room.id
    }

    /// Takes `name` in the room and broadcasts the join (see [`Rooms::join`]).
    pub fn join(&self, name: &str, color: &str, since: Option<u64>) -> Result<Joined, Refusal> {
        self.rooms
            .join(&self.room, self.session, name, color, since)
    }

    /// Broadcasts `msg` under the joined name; returns the message's id.
    pub fn send(&self, msg: &str) -> Result<u64, Refusal> {
        self.rooms.send(&self.room, self.session, msg)
    }

    /// Gives the name up and broadcasts the leave.
    pub fn leave(&self) -> Result<(), Refusal> {
        self.rooms.leave(&self.room, self.session)
    }

    /// Hands at most `max` of the events waiting in the socket's channel to `each`, in
    /// order; returns how many (see [`Inbox::take`]).
    pub fn take(&self, max: usize, each: impl FnMut(&str)) -> usize {
        self.inbox.take(max, each)
    }

    /// The socket's end of its channel, for the writer that takes from it while the
    /// socket's thread sleeps.
    pub fn inbox(&self) -> Arc<Inbox> {
        Arc::clone(&self.inbox)
    }

    /// Whether events wait in the socket's channel.
    pub fn has_news(&self) -> bool {
        !self.inbox.events.is_empty()
    }

    /// Tells the room this socket's client stopped reading, so that speakers waiting for
    /// it look again (and close it) instead of waiting.
    pub fn stalled(&self) {
        if self.room.has_waiting() {
            self.room.retry_waiting();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rooms.detach(&self.room, self.session);
    }
}
