//! The room map: every room, found by id or title, and the locks that keep it right.
//!
//! `rooms` knows channels and doorbells (through [`Subscriber`]), never sockets or HTTP.
//! Its parts, in reading order:
//! - this file: [`RoomMap`], its index and its lock rules; [`Membership`], a socket's
//!   handle on the room it chats in;
//! - `catalog`: create, update, delete, validation, and the order of disk and memory;
//! - `room`: one room's handle: its lock, its feed read without the lock, and the
//!   [`Subscriber`] seam; what is done after the lock (`Aftermath`);
//! - `fanout`: one room's members, its feed of events, history and message ids;
//! - `subscription`: several nodes: the steps around a Redis script, a feed filled from
//!   the subscription;
//! - `view`: what the API shows ([`RoomView`]: no hash, by construction);
//! - `waker`: the thread that rings members' doorbells for chat messages.
//!
//! # Locks, and what may happen while each is held
//! - **A room's lock** (`room::Room`) orders that room's events: one lock, so every
//!   member sees one order. It is held for memory work only: appending an event to the
//!   feed, copying events out, changing members. Never across disk I/O, bcrypt, a log
//!   line, or a system call (waking another socket's thread is one: those are collected
//!   and done after the lock, see `room::Aftermath`). Rooms do not share it: a busy
//!   room never slows another.
//! - **The index** (`RwLock<Index>`): ids and titles to rooms, and the id counter. Held
//!   for a map lookup or insert; readers (every request) share it. Never held across
//!   anything but memory work, and a room's lock may be taken inside it, never the
//!   reverse.
//! - **The writers' lock** (`writes`): one room change at a time, *including its disk
//!   write*, so a 201 means the room is on disk and the disk sees changes in memory's
//!   order. Only the catalogue takes it; chat never does. Taken before the index.
//!
//! Ids come from `Index::next_id`, which only grows: a deleted room's id is never handed
//! out again (SPEC, Rooms; the Go version decremented its counter and reused ids).
//!
//! # The seam for several nodes
//! Storage goes through the [`Store`] trait (SQLite, or nothing with `db_path: null`);
//! `http` and `ws` only ever call `RoomMap` and `Membership`, so another store and fan-out
//! plug in here without touching them. With `redis_url` set, [`RoomMap::clustered`] builds
//! a map whose every public function goes to `cluster` (Redis, read through) instead of the
//! index: the index stays empty, and the local rooms there only deliver events.

mod catalog;
mod cluster;
mod fanout;
mod room;
mod subscription;
mod view;
mod waker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use catalog::{
    RoomInput, MAX_DESCRIPTION_CHARS, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS, TITLE_CHARS,
};
pub use room::{CloseReason, Joined, Refusal, Subscriber};
pub use view::{RoomKey, RoomView, Visibility};

use crate::clock::now_rfc3339;
use crate::error::ApiError;
use crate::hasher::Hasher;
use crate::path::RoomRef;
use crate::store::{NoStore, Saved, Store, StoreError};
use crate::sync::read;

use catalog::{not_found, Info};
use cluster::Cluster;
use room::{Room, Services};
use waker::Waker;

/// Every room, and the locks described in the module docs.
pub struct RoomMap {
    index: RwLock<Index>,
    /// The writers' lock: one catalogue change (disk write included) at a time.
    writes: Mutex<()>,
    /// Where rooms and history are saved, and the waker thread.
    services: Services,
    /// Hashes and checks room passwords, on threads of its own (see `hasher`).
    hasher: Hasher,
    /// How many events a room's feed holds before speakers wait (`send_queue_len`).
    feed_len: usize,
    /// How many `send` events each room keeps for sockets that join later.
    history_len: usize,
    /// Several nodes: Redis instead of the index and the store (see `cluster`).
    cluster: Option<Arc<Cluster>>,
}

/// Ids and titles to rooms.
struct Index {
    by_id: BTreeMap<u64, Arc<Room>>,
    /// Lower-cased title -> id; kept in step with `by_id` by `insert`, `retitle` and
    /// `remove`, the only functions that change either.
    by_title: HashMap<String, u64>,
    /// The next id to hand out. Only ever grows, so ids are never reused.
    next_id: u64,
}

impl Index {
    fn insert(&mut self, room: Arc<Room>) {
        self.next_id = self.next_id.max(room.id + 1);
        let title = room.title().to_lowercase();
        self.by_title.insert(title, room.id);
        self.by_id.insert(room.id, room);
    }

    fn retitle(&mut self, old: &str, new: &str, id: u64) {
        self.by_title.remove(&old.to_lowercase());
        self.by_title.insert(new.to_lowercase(), id);
    }

    fn remove(&mut self, id: u64, title: &str) {
        self.by_id.remove(&id);
        self.by_title.remove(&title.to_lowercase());
    }

    fn find(&self, room_ref: &RoomRef) -> Option<&Arc<Room>> {
        let id = match room_ref {
            RoomRef::Id(id) => Some(*id),
            RoomRef::Title(title) => self.by_title.get(&title.trim().to_lowercase()).copied(),
        };
        self.by_id.get(&id?)
    }

    /// 102 unless no room but `except` has `title` (case-insensitively).
    fn check_title_free(&self, title: &str, except: Option<u64>) -> Result<(), ApiError> {
        match self.by_title.get(&title.to_lowercase()) {
            Some(id) if Some(*id) != except => Err(ApiError::field(
                crate::error::ErrorKind::DuplicateRoom,
                "title",
            )),
            _ => Ok(()),
        }
    }
}

impl RoomMap {
    /// The map as `saved` left it, saving through `store` from now on. A new database (no
    /// rooms, no id counter yet) starts with the default room, id 1, "Public Chat", public,
    /// saved at once; after that, deleting it is as lasting as deleting any room.
    pub fn restore(
        store: Arc<dyn Store>,
        saved: Saved,
        hasher: Hasher,
        feed_len: usize,
        history_len: usize,
    ) -> Result<RoomMap, StoreError> {
        let waker = Waker::start()
            .map_err(|e| store.error(format!("cannot start the room waker thread: {e}")))?;
        let map = RoomMap {
            index: RwLock::new(Index {
                by_id: BTreeMap::new(),
                by_title: HashMap::new(),
                next_id: 1,
            }),
            writes: Mutex::new(()),
            services: Services { store, waker },
            hasher,
            feed_len,
            history_len,
            cluster: None,
        };
        let mut history = saved.history;
        let mut index = crate::sync::write(&map.index);
        for record in saved.rooms {
            let (id, last_message_id) = (record.room.id, record.last_message_id);
            let info =
                Info::restore(record.room).map_err(|problem| map.services.store.error(problem))?;
            let kept = history.remove(&id).unwrap_or_default();
            index.insert(map.new_room(info, kept, last_message_id));
        }
        match saved.next_id {
            Some(next_id) => index.next_id = index.next_id.max(next_id),
            // A file with rooms but no counter was edited by hand: its rooms decide the ids.
            None if !index.by_id.is_empty() => {}
            None => {
                let now = now_rfc3339();
                let info = Info {
                    id: 1,
                    title: "Public Chat".into(),
                    description: "Everyone is welcome here.".into(),
                    visibility: Visibility::Public,
                    password_hash: None,
                    created_at: now.clone(),
                    updated_at: now,
                    revision: 0,
                };
                map.services.store.save_room(&info.record(), 2)?;
                index.insert(map.new_room(info, Vec::new(), 0));
            }
        }
        drop(index);
        Ok(map)
    }

    /// Several nodes: a map that keeps nothing itself and asks Redis at `redis_url`, with
    /// members' leaves reaped after `presence_ttl`. Waits briefly for the first connection.
    pub fn clustered(
        redis_url: &str,
        presence_ttl: Duration,
        hasher: Hasher,
        feed_len: usize,
        history_len: usize,
    ) -> Result<RoomMap, String> {
        let waker =
            Waker::start().map_err(|e| format!("cannot start the room waker thread: {e}"))?;
        let services = Services {
            store: Arc::new(NoStore),
            waker,
        };
        let cluster = Cluster::start(
            redis_url,
            presence_ttl,
            feed_len,
            history_len,
            services.clone(),
        )?;
        Ok(RoomMap {
            index: RwLock::new(Index {
                by_id: BTreeMap::new(),
                by_title: HashMap::new(),
                next_id: 1,
            }),
            writes: Mutex::new(()),
            services,
            hasher,
            feed_len,
            history_len,
            cluster: Some(cluster),
        })
    }

    /// Writes out the history still queued for the database, or retires this node from
    /// Redis. Called once, at shutdown.
    pub fn close(&self) {
        self.services.store.close();
        if let Some(cluster) = &self.cluster {
            cluster.close();
        }
    }

    /// Whether the backend can be used now: with SQLite while its writes succeed, with Redis
    /// while the link is up. For `/healthz` and `chitchat_backend_up`.
    pub fn backend_up(&self) -> bool {
        self.services.store.is_up() && self.cluster.as_ref().is_none_or(|c| c.backend_up())
    }

    /// Every room except hidden ones, by id. Users are shown for public rooms only: a
    /// listing has no token for each private room.
    pub fn list(&self) -> Result<Vec<RoomView>, ApiError> {
        if let Some(cluster) = &self.cluster {
            return cluster.list();
        }
        let rooms: Vec<Arc<Room>> = read(&self.index).by_id.values().cloned().collect();
        let views = rooms
            .iter()
            .filter_map(|room| {
                room.with_live(&self.services, |live, _| {
                    let visibility = live.info.visibility;
                    (visibility != Visibility::Hidden && !live.deleted)
                        .then(|| live.view(visibility == Visibility::Public))
                })
            })
            .collect();
        Ok(views)
    }

    /// The access data of the room `room_ref` names, or 101.
    pub fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError> {
        if let Some(cluster) = &self.cluster {
            return cluster.key(room_ref);
        }
        let room = read(&self.index)
            .find(room_ref)
            .cloned()
            .ok_or_else(not_found)?;
        Ok(room.with_live(&self.services, |live, _| RoomKey {
            id: live.info.id,
            visibility: live.info.visibility,
            password_hash: live.info.password_hash.clone(),
        }))
    }

    /// The room with `id` as clients see it, with or without its users.
    pub fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError> {
        if let Some(cluster) = &self.cluster {
            return cluster.view(id, with_users);
        }
        Ok(self
            .room(id)?
            .with_live(&self.services, |live, _| live.view(with_users)))
    }

    /// Room `id`'s kept messages with an id above `since`, oldest first, at most `limit`
    /// of them (the newest), as broadcast.
    pub fn messages(&self, id: u64, since: u64, limit: usize) -> Result<Vec<Arc<str>>, ApiError> {
        if let Some(cluster) = &self.cluster {
            return cluster.messages(id, since, limit);
        }
        Ok(self
            .room(id)?
            .with_live(&self.services, |live, _| live.messages(since, limit)))
    }

    /// How many messages a room keeps (`history_len`).
    pub fn history_len(&self) -> usize {
        self.history_len
    }

    /// Checks `password` against the room's hash, without holding any lock; 604 if
    /// bcrypt's queue is full.
    pub fn password_matches(&self, key: &RoomKey, password: &str) -> Result<bool, ApiError> {
        match &key.password_hash {
            Some(hash) => Ok(self.hasher.verify(password, hash)?),
            None => Ok(false),
        }
    }

    /// How many rooms exist (a `/metrics` gauge).
    pub fn count(&self) -> usize {
        read(&self.index).by_id.len()
    }

    /// How many names are joined in all rooms (a `/metrics` gauge): each room's lock in
    /// turn, for a count.
    pub fn users_joined(&self) -> usize {
        let rooms: Vec<Arc<Room>> = read(&self.index).by_id.values().cloned().collect();
        rooms
            .iter()
            .map(|room| room.with_live(&self.services, |live, _| live.members()))
            .sum()
    }

    /// Messages waiting for the history writer (a `/metrics` gauge).
    pub fn history_queue(&self) -> usize {
        self.services.store.queued()
    }

    /// bcrypt jobs waiting for a thread (a `/metrics` gauge).
    pub fn bcrypt_queue(&self) -> usize {
        self.hasher.queued()
    }

    /// Connects socket `session` to room `id` (101 if the room is gone), so that it hears
    /// of the room's deletion even before it joins. The socket leaves the room when the
    /// returned handle is dropped, however its thread ends (a panic included).
    pub fn attach(
        &self,
        id: u64,
        session: u64,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<Membership, ApiError> {
        let room = match &self.cluster {
            Some(cluster) => cluster.attach(id, session, Arc::clone(&subscriber))?,
            None => {
                let room = self.room(id)?;
                let attached = Arc::clone(&subscriber);
                room.with_live(&self.services, |live, _| live.attach(session, attached))?;
                room
            }
        };
        Ok(Membership {
            room,
            services: self.services.clone(),
            session,
            subscriber,
            cluster: self.cluster.clone(),
        })
    }

    fn room(&self, id: u64) -> Result<Arc<Room>, ApiError> {
        read(&self.index)
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(not_found)
    }
}

/// A socket's place in a room: what its session thread joins, speaks, leaves and reads
/// through. Dropping it detaches the socket and broadcasts its leave if it had joined, so
/// a session thread that panics does not leave its name behind.
pub struct Membership {
    room: Arc<Room>,
    services: Services,
    session: u64,
    /// The socket's doorbell, which holds its cursor in the feed.
    subscriber: Arc<dyn Subscriber>,
    /// Several nodes: joins and sends go through Redis.
    cluster: Option<Arc<Cluster>>,
}

impl Membership {
    /// The room's id.
    pub fn room_id(&self) -> u64 {
        self.room.id
    }

    /// Takes `name` in the room and broadcasts the join; see `fanout` for the rules.
    pub fn join(&self, name: &str, color: &str, since: Option<u64>) -> Result<Joined, Refusal> {
        if let Some(cluster) = &self.cluster {
            return cluster.join(&self.room, self.session, name, color, since);
        }
        self.room.with_live(&self.services, |live, after| {
            live.join(self.session, name, color, since, after)
        })
    }

    /// Broadcasts `msg` under the joined name; returns the message's id.
    pub fn send(&self, msg: &str) -> Result<u64, Refusal> {
        if let Some(cluster) = &self.cluster {
            return cluster.send(&self.room, self.session, msg);
        }
        self.room.with_live(&self.services, |live, after| {
            live.send(self.session, msg, after)
        })
    }

    /// Gives the name up and broadcasts the leave; returns where the socket's reading of
    /// the feed ends (at its own leave).
    pub fn leave(&self) -> Result<u64, Refusal> {
        self.room.with_live(&self.services, |live, after| {
            live.leave(self.session, after)
        })
    }

    /// Hands at most `max` feed events from `cursor`, stopping before `until`, to `each`,
    /// without the room's lock; records and returns the cursor after them. A reader at the
    /// front of a feed that speakers wait for lets them go.
    pub fn read(&self, cursor: u64, until: u64, max: usize, each: impl FnMut(&str)) -> u64 {
        let (end, at_front) = self.room.read(cursor, until, max, each);
        self.subscriber.set_cursor(end);
        if end > cursor && at_front && self.room.has_waiting() {
            self.room
                .with_live(&self.services, |live, after| live.read_on(after));
        }
        end
    }

    /// With several nodes, where the socket reads the feed from once its own join has come
    /// back through the subscription; `None` until then.
    pub fn join_arrived(&self) -> Option<u64> {
        self.room
            .with_live(&self.services, |live, _| live.join_arrived(self.session))
    }

    /// Whether the feed has events past `cursor` (no lock taken).
    pub fn has_news(&self, cursor: u64) -> bool {
        self.room.has_news(cursor)
    }

    /// Tells the room this socket's client stopped reading, so that speakers waiting for
    /// it retry (and close it) instead of waiting.
    pub fn stalled(&self) {
        self.room
            .with_live(&self.services, |live, after| live.stalled(after));
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.room.with_live(&self.services, |live, after| {
            live.detach(self.session, after)
        });
        if let Some(cluster) = &self.cluster {
            cluster.forget(&self.room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_link::Kind;
    use crate::store::{RoomRecord, SavedRoom};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    /// A map with only the default room, keeping `history_len` messages, saving nothing.
    fn map(feed_len: usize, history_len: usize) -> RoomMap {
        let hasher = Hasher::start(4, 0, Arc::default()).unwrap();
        RoomMap::restore(
            Arc::new(NoStore),
            Saved::default(),
            hasher,
            feed_len,
            history_len,
        )
        .unwrap()
    }

    fn input(title: &str, visibility: &str, password: Option<&str>) -> RoomInput {
        RoomInput {
            title: Some(title.into()),
            description: None,
            visibility: Some(visibility.into()),
            password: password.map(Into::into),
        }
    }

    /// A socket that records what the room does to it; stalled or asleep as a test says.
    #[derive(Default)]
    struct Probe {
        cursor: std::sync::atomic::AtomicU64,
        stalled: AtomicBool,
        woken: AtomicUsize,
        /// The threads that rang `wake`, by name.
        rung_by: std::sync::Mutex<Vec<String>>,
        closed: std::sync::Mutex<Option<CloseReason>>,
    }

    impl Subscriber for Probe {
        fn cursor(&self) -> u64 {
            self.cursor.load(SeqCst)
        }
        fn set_cursor(&self, seq: u64) {
            self.cursor.store(seq, SeqCst);
        }
        fn is_asleep(&self) -> bool {
            true
        }
        fn is_stalled(&self) -> bool {
            self.stalled.load(SeqCst)
        }
        fn wake(&self) {
            let thread = std::thread::current().name().unwrap_or_default().to_owned();
            crate::sync::lock(&self.rung_by).push(thread);
            self.woken.fetch_add(1, SeqCst);
        }
        fn retry(&self) {
            self.woken.fetch_add(1, SeqCst);
        }
        fn close(&self, reason: CloseReason) {
            *crate::sync::lock(&self.closed) = Some(reason);
        }
    }

    fn member(rooms: &RoomMap, session: u64, name: &str) -> (Membership, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        let membership = rooms.attach(1, session, probe.clone()).unwrap();
        membership.join(name, "red", None).unwrap();
        (membership, probe)
    }

    /// Reads everything `membership` has not read yet.
    fn drain(membership: &Membership) -> Vec<String> {
        let mut out = Vec::new();
        let cursor = membership.subscriber.cursor();
        membership.read(cursor, u64::MAX, usize::MAX, |text| {
            out.push(text.to_owned())
        });
        out
    }

    fn users(rooms: &RoomMap) -> Vec<String> {
        let view = rooms.view(1, true).unwrap();
        view.users
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect()
    }

    #[test]
    fn ids_only_grow() {
        let rooms = map(16, 0);
        let a = rooms.create(input("first", "public", None)).unwrap();
        rooms.delete(a.id).unwrap();
        let b = rooms.create(input("first", "public", None)).unwrap();
        assert_eq!((a.id, b.id), (2, 3));
    }

    #[test]
    fn a_restored_map_keeps_its_rooms_and_counts_on_from_the_saved_counter() {
        let saved = Saved {
            next_id: Some(9),
            rooms: vec![SavedRoom {
                room: RoomRecord {
                    id: 5,
                    title: "Kept".into(),
                    description: "".into(),
                    visibility: "hidden".into(),
                    password_hash: Some("hash".into()),
                    created_at: "2026-11-28T15:19:28.123Z".into(),
                    updated_at: "2026-11-28T15:19:28.123Z".into(),
                },
                last_message_id: 41,
            }],
            history: [(5, vec![(40, Arc::from("{\"id\":40}"))])].into(),
        };
        let rooms = RoomMap::restore(
            Arc::new(NoStore),
            saved,
            Hasher::start(4, 0, Arc::default()).unwrap(),
            16,
            10,
        )
        .unwrap();
        let key = rooms.key(&RoomRef::Title("kept".into())).unwrap();
        assert_eq!(
            (key.id, key.visibility, key.password_hash.as_deref()),
            (5, Visibility::Hidden, Some("hash"))
        );
        assert_eq!(
            rooms.messages(5, 0, 10).unwrap(),
            [Arc::from("{\"id\":40}")]
        );
        assert_eq!(rooms.key(&RoomRef::Id(1)).unwrap_err().code(), 101);
        assert_eq!(rooms.create(input("new", "public", None)).unwrap().id, 9);
    }

    #[test]
    fn a_saved_room_with_an_unknown_visibility_is_a_store_error() {
        let saved = Saved {
            next_id: Some(3),
            rooms: vec![SavedRoom {
                room: RoomRecord {
                    id: 2,
                    title: "Odd".into(),
                    description: "".into(),
                    visibility: "secret".into(),
                    password_hash: None,
                    created_at: "t".into(),
                    updated_at: "t".into(),
                },
                last_message_id: 0,
            }],
            history: Default::default(),
        };
        let error = RoomMap::restore(
            Arc::new(NoStore),
            saved,
            Hasher::start(4, 0, Arc::default()).unwrap(),
            16,
            10,
        )
        .err()
        .unwrap();
        assert_eq!(error.problem, "room 2 has an unknown visibility \"secret\"");
    }

    #[test]
    fn passwords_follow_visibility() {
        let rooms = map(16, 0);
        let field = |i| rooms.create(i).unwrap_err().field;
        assert_eq!(
            field(input("pub", "public", Some("password1"))),
            Some("visibility")
        );
        assert_eq!(field(input("priv", "private", None)), Some("password"));
        assert_eq!(
            field(input("priv", "private", Some("short"))),
            Some("password")
        );
        let room = rooms
            .create(input("priv", "PRIVATE", Some("password1")))
            .unwrap();
        assert_eq!(room.visibility, Visibility::Private);
        let key = rooms.key(&RoomRef::Title("PRIV".into())).unwrap();
        assert_eq!(rooms.password_matches(&key, "password1"), Ok(true));
        assert_eq!(rooms.password_matches(&key, "password2"), Ok(false));
    }

    /// A session thread that panics while joined leaves the room all the same: its
    /// membership detaches it while unwinding, and its leave is broadcast.
    #[test]
    fn a_panicking_session_thread_leaves_no_name_behind() {
        let rooms = Arc::new(map(16, 0));
        let (listener, _) = member(&rooms, 1, "ann");
        let shared = Arc::clone(&rooms);
        let panicked = std::thread::spawn(move || {
            let (_membership, _) = member(&shared, 2, "bob");
            panic!("a bug in bob's session");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(users(&rooms), ["ann"]);
        let seen = drain(&listener);
        assert!(
            seen.last().unwrap().contains("bob has left the room."),
            "{seen:?}"
        );
    }

    /// A full feed waits for a member that reads but is behind: the speaker is told Busy,
    /// nothing is lost, and once the member reads, the speaker is woken and goes on.
    #[test]
    fn a_full_feed_waits_for_a_reader_that_is_behind() {
        let rooms = map(4, 0);
        let (speaker, speaker_probe) = member(&rooms, 1, "ann");
        let (reader, reader_probe) = member(&rooms, 2, "bob");
        drain(&speaker);
        let mut sent = 0;
        while speaker.send("hi").is_ok() {
            drain(&speaker);
            sent += 1;
            assert!(sent < 10, "the feed never filled");
        }
        assert_eq!(speaker.send("hi"), Err(Refusal::Busy));
        assert_eq!(*crate::sync::lock(&reader_probe.closed), None);
        let woken_before = speaker_probe.woken.load(SeqCst);
        let read = drain(&reader);
        assert_eq!(
            read.iter().filter(|e| e.contains("\"msg\":\"hi\"")).count(),
            sent
        );
        assert!(
            speaker_probe.woken.load(SeqCst) > woken_before,
            "the speaker was not woken"
        );
        assert!(speaker.send("hi").is_ok());
    }

    /// A full feed closes a laggard whose client stopped reading (1008), broadcasts its
    /// leave, and the speaker goes on at once.
    #[test]
    fn a_full_feed_closes_a_reader_that_stopped_reading() {
        let rooms = map(4, 0);
        let (speaker, _) = member(&rooms, 1, "ann");
        let (_stuck, stuck_probe) = member(&rooms, 2, "bob");
        stuck_probe.stalled.store(true, SeqCst);
        for _ in 0..10 {
            assert!(speaker.send("hi").is_ok());
            drain(&speaker);
        }
        assert_eq!(
            *crate::sync::lock(&stuck_probe.closed),
            Some(CloseReason::SlowReader)
        );
        assert_eq!(users(&rooms), ["ann"]);
    }

    /// Several nodes: a room whose events come from the subscription, with a link that never
    /// connects (leaves are then refused at once, which these tests do not need).
    fn shared_room(feed_len: usize) -> Arc<Room> {
        let link = crate::redis_link::Link::new(
            "redis://127.0.0.1:1",
            std::time::Duration::from_secs(15),
            10,
            "test".into(),
        )
        .unwrap();
        Arc::new(Room::new(
            Info::placeholder(7),
            Vec::new(),
            0,
            feed_len,
            10,
            Some(link),
        ))
    }

    /// What a room's after-lock work needs in these tests: no store, a waker.
    fn services() -> Services {
        Services {
            store: Arc::new(NoStore),
            waker: Waker::start().unwrap(),
        }
    }

    fn shared_reader(room: &Room, services: &Services, session: u64) -> Arc<Probe> {
        let probe = Arc::new(Probe::default());
        room.with_live(services, |live, _| live.attach(session, probe.clone()))
            .unwrap();
        probe
    }

    /// Reads what `probe`'s socket may read, as its session would: nothing before its own
    /// join has come back, then from its cursor on.
    fn read_shared(room: &Room, services: &Services, probe: &Probe, session: u64) -> Vec<String> {
        let Some(cursor) = room.with_live(services, |live, _| live.join_arrived(session)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let (end, _) = room.read(cursor, u64::MAX, usize::MAX, |t| out.push(t.to_owned()));
        probe.set_cursor(end);
        out
    }

    /// Socket 1 attached to a shared room, its join ("ann") sent to Redis and not back yet.
    fn joining_shared_reader(room: &Room, services: &Services) -> Arc<Probe> {
        let probe = shared_reader(room, services, 1);
        room.with_live(services, |live, after| {
            live.begin_join(1, "ann", "red", after).map(drop)
        })
        .unwrap();
        probe
    }

    /// An event from the subscription, as the subscriber thread hands it to the room.
    fn deliver(room: &Room, services: &Services, kind: Kind, origin: Option<u64>, text: &str) {
        room.with_live(services, |live, after| {
            live.deliver(kind, origin, text, after)
        });
    }

    /// A socket that joins through Redis reads nothing until its own join comes back, then
    /// reads from it on: what came before is in the history its join replayed, not twice.
    #[test]
    fn a_joining_socket_reads_from_its_own_join_on() {
        let (room, services) = (shared_room(16), services());
        let probe = joining_shared_reader(&room, &services);
        let deliver = |kind, origin, text: &str| deliver(&room, &services, kind, origin, text);
        deliver(Kind::Send, None, "before");
        assert!(read_shared(&room, &services, &probe, 1).is_empty());
        deliver(Kind::Join, Some(1), "ann joins");
        deliver(Kind::Send, None, "after");
        assert_eq!(
            read_shared(&room, &services, &probe, 1),
            ["ann joins", "after"]
        );
    }

    /// A send from the subscription is rung by the waker thread, as a local send is: the
    /// one subscriber thread, which serves every room, would fall behind ringing each
    /// sleeping socket itself. A socket's own join is rung at once.
    #[test]
    fn a_send_from_the_subscription_is_rung_by_the_waker_thread() {
        let (room, services) = (shared_room(16), services());
        let probe = joining_shared_reader(&room, &services);
        let deliver = |kind, origin, text: &str| deliver(&room, &services, kind, origin, text);
        deliver(Kind::Join, Some(1), "ann joins");
        deliver(Kind::Send, None, "hello");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe.woken.load(SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let here = std::thread::current().name().unwrap_or_default().to_owned();
        assert_eq!(
            *crate::sync::lock(&probe.rung_by),
            [here, "room-waker".into()]
        );
    }

    /// The subscriber never waits: it appends to a full feed; a stalled laggard is closed
    /// past the capacity, and at twice the capacity every laggard is, stalled or not.
    #[test]
    fn the_subscription_overshoots_a_full_feed_and_closes_laggards() {
        let (room, services) = (shared_room(4), services());
        let probes: Vec<Arc<Probe>> = (1..=3)
            .map(|s| shared_reader(&room, &services, s))
            .collect();
        for session in 1..=3 {
            room.with_live(&services, |live, after| {
                live.begin_join(session, &format!("u{session}"), "red", after)
                    .map(drop)
            })
            .unwrap();
            room.with_live(&services, |live, after| {
                live.deliver(Kind::Join, Some(session), "join", after)
            });
        }
        probes[1].stalled.store(true, SeqCst);
        let closed = |i: usize| *crate::sync::lock(&probes[i].closed);
        for n in 0..8 {
            room.with_live(&services, |live, after| {
                live.deliver(Kind::Send, None, &format!("m{n}"), after)
            });
            read_shared(&room, &services, &probes[0], 1);
        }
        assert_eq!(closed(0), None, "a reader that reads stays");
        assert_eq!(closed(1), Some(CloseReason::SlowReader));
        assert_eq!(closed(2), Some(CloseReason::SlowReader), "the hard bound");
        assert_eq!(read_shared(&room, &services, &probes[0], 1).len(), 0);
    }

    /// Message ids count 1, 2, 3 in the room's order, and the history keeps the newest
    /// `history_len` for `since` to pick from.
    #[test]
    fn messages_are_numbered_and_the_newest_are_kept() {
        let rooms = map(64, 3);
        let (ann, _) = member(&rooms, 1, "ann");
        let ids: Vec<u64> = (0..5).map(|_| ann.send("x").unwrap()).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let kept = |since, limit| -> Vec<bool> {
            let events = rooms.messages(1, since, limit).unwrap();
            (3..=5)
                .map(|id| events.iter().any(|e| e.contains(&format!("\"id\":{id}"))))
                .collect()
        };
        assert_eq!(kept(0, 3), [true, true, true]);
        assert_eq!(kept(3, 3), [false, true, true]);
        assert_eq!(kept(0, 1), [false, false, true]);
        let (_bob, _) = member(&rooms, 2, "bob");
        let probe = Arc::new(Probe::default());
        let carl = rooms.attach(1, 3, probe).unwrap();
        let joined = carl.join("carl", "red", Some(4)).unwrap();
        assert_eq!(joined.replay.len(), 1);
        assert!(
            joined.replay[0].ends_with(",\"id\":5,\"replay\":true}"),
            "{:?}",
            joined.replay
        );
    }
    /// A socket that looks for news just as an event is pushed cannot miss it: the room
    /// publishes the feed's new head before it checks who sleeps, so whoever it finds
    /// awake sees the event when it next checks (a wake-up was lost the other way round:
    /// one join of 4.5 million in a storm never reached its socket).
    #[test]
    fn the_feed_head_is_published_before_sleepers_are_looked_for() {
        /// Records, each time the room asks whether it sleeps, whether news is visible.
        struct Witness {
            room: std::sync::OnceLock<Arc<Room>>,
            cursor: std::sync::atomic::AtomicU64,
            saw_news: std::sync::Mutex<Vec<bool>>,
        }
        impl Subscriber for Witness {
            fn cursor(&self) -> u64 {
                self.cursor.load(SeqCst)
            }
            fn set_cursor(&self, seq: u64) {
                self.cursor.store(seq, SeqCst);
            }
            fn is_asleep(&self) -> bool {
                if let Some(room) = self.room.get() {
                    let news = room.has_news(self.cursor());
                    crate::sync::lock(&self.saw_news).push(news);
                }
                false
            }
            fn is_stalled(&self) -> bool {
                false
            }
            fn wake(&self) {}
            fn retry(&self) {}
            fn close(&self, _: CloseReason) {}
        }
        let rooms = map(16, 0);
        let witness = Arc::new(Witness {
            room: std::sync::OnceLock::new(),
            cursor: Default::default(),
            saw_news: Default::default(),
        });
        let membership = rooms.attach(1, 1, witness.clone()).unwrap();
        membership.join("ann", "red", None).unwrap();
        let _ = witness.room.set(rooms.room(1).unwrap());
        let cursor = witness.cursor();
        let mut out = Vec::new();
        witness.set_cursor(membership.read(cursor, u64::MAX, 10, |t| out.push(t.to_owned())));
        membership.send("hi").unwrap();
        assert_eq!(*crate::sync::lock(&witness.saw_news), [true]);
    }
}
