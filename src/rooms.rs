//! The room map: every room, the sockets in it, and the fan-out of chat events to them.
//!
//! [`RoomMap`] is the one piece of shared state. It owns ids (assigned 1, 2, 3... by a
//! counter that only grows, so a deleted room's id is never handed out again: SPEC, Rooms),
//! the case-insensitive title index, validation, password hashing, and each room's sockets:
//! every WebSocket connected to the room is attached to it, and those that have joined
//! under a name are its members, the ones chat events are broadcast to.
//!
//! It is a std `Mutex` around plain maps because nothing slow happens while it is held:
//! bcrypt runs before the lock is taken, and a member is never written to under the lock,
//! only handed an already-serialised event through [`Subscriber::deliver`], which must not
//! block. One lock for the whole map is also what gives every member of a room the same
//! order of events: an event is delivered to all members before the next one is built.
//!
//! Each room also keeps its last `history_len` `send` events, exactly as broadcast, and a
//! socket that joins receives them first, oldest first, before its own join.
//!
//! # Persistence
//! The map is the working set: handlers only ever read memory. Every change is also handed
//! to the [`Store`] (SQLite; this module knows no SQL). Room changes are written
//! synchronously *under the lock*, before memory changes and before the caller answers:
//! a 201 means the room is on disk, a failed write changes nothing, and the database sees
//! changes in the same order as memory (an update cannot land after the delete that
//! followed it). That costs one small committed transaction (one flush to disk) under the
//! lock, measured at about 0.3 ms per room created (ext4 on a virtual disk), on requests
//! that are rare next to chat messages. Chat messages are the frequent path, so under the
//! lock they only go onto the store's queue ([`Store::append_message`]), which never blocks.
//!
//! This module knows channels (through [`Subscriber`]), never sockets or HTTP. Stored and
//! wire types differ: [`Room`] holds the bcrypt hash and has no `Serialize`; [`RoomView`]
//! is what clients see, so the hash cannot leak by construction.

use crossbeam_channel::Sender;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{join_message, leave_message, EventType, ServerEvent};
use crate::hasher::Hasher;
use crate::store::{RoomRecord, Saved, Store, StoreError};

/// The waker thread's stack: it only rings doorbells.
const WAKER_STACK_BYTES: usize = 64 * 1024;

/// Title length bounds, in characters after trimming (SPEC, Rooms).
const TITLE_CHARS: std::ops::RangeInclusive<usize> = 2..=70;
/// The longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 70;
/// The shortest password of a private or hidden room, in characters.
const MIN_PASSWORD_CHARS: usize = 8;
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than cut silently.
const MAX_PASSWORD_BYTES: usize = 72;

/// Who may see and enter a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Listed; anyone may enter.
    Public,
    /// Listed; a token (from the room's password) is needed to enter.
    Private,
    /// Like private, but never listed: reached by exact title or id.
    Hidden,
}

impl Visibility {
    /// Parses `public`, `private` or `hidden`, in any case.
    pub fn parse(text: &str) -> Option<Visibility> {
        match text.trim().to_ascii_lowercase().as_str() {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            "hidden" => Some(Visibility::Hidden),
            _ => None,
        }
    }

    /// The lower-case name, as on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Hidden => "hidden",
        }
    }

    /// Whether entering or changing the room needs a token.
    pub fn needs_token(self) -> bool {
        self != Visibility::Public
    }
}

/// Something that receives a room's events: in practice one WebSocket's outgoing queue.
pub trait Subscriber: Send + Sync {
    /// Queues `text` for the member. Called under the room lock, so it must not block or
    /// make a system call. Returns `false` when the member's queue is full (a slow reader).
    fn deliver(&self, text: &Arc<str>) -> bool;
    /// Tells the member that events were queued for it. Called once the room lock is
    /// released: waking a thread is a system call, and 500 of them under the lock made
    /// every other sender in the room wait.
    fn wake(&self);
    /// Tells the member it has been removed from the room, and why.
    fn close(&self, reason: CloseReason);
}

/// Why the room removed a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed: it stopped reading (WebSocket close 1008).
    SlowReader,
    /// The room was deleted (a 101 error event, then close 1001).
    RoomDeleted,
}

/// A WebSocket connected to a room, joined or not: a deleted room closes them all.
struct Socket {
    /// Which socket this is.
    session: u64,
    subscriber: Arc<dyn Subscriber>,
    /// Set while the socket has joined under a name; a socket has at most one.
    member: Option<Member>,
}

/// The name a socket joined with.
struct Member {
    username: String,
    color: String,
    last_activity: String,
}

/// A stored room. Never serialised: see [`RoomView`].
struct Room {
    id: u64,
    title: String,
    description: String,
    visibility: Visibility,
    /// bcrypt hash of the password; `Some` exactly when the room is private or hidden.
    password_hash: Option<String>,
    created_at: String,
    updated_at: String,
    /// Connected sockets, in connection order.
    sockets: Vec<Socket>,
    /// The last `history_len` `send` events as broadcast, oldest first.
    history: VecDeque<Arc<str>>,
}

/// A room as clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    pub id: u64,
    pub title: String,
    pub description: String,
    pub visibility: Visibility,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
    /// The people joined right now; left out of private rooms for callers without a token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserView>>,
}

/// A joined person as clients see them.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub username: String,
    pub color: String,
    pub last_activity: String,
}

/// What checking access to a room needs, copied out so tokens and passwords can be
/// verified without holding the lock.
#[derive(Debug, Clone)]
pub struct RoomKey {
    pub id: u64,
    pub visibility: Visibility,
    /// The bcrypt hash, part of the room's token signing key.
    pub password_hash: Option<String>,
}

/// How a path names a room: digits are an id, anything else a title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRef {
    Id(u64),
    /// A title, matched case-insensitively.
    Title(String),
}

impl RoomRef {
    /// Reads a raw path segment (`7`, `My%20chat%20room`). Titles are never all digits, so
    /// an all-digit segment is always an id. `None` if the escapes are malformed.
    pub fn from_segment(raw: &str) -> Option<RoomRef> {
        let segment = percent_decode(raw)?;
        Some(match segment.parse::<u64>() {
            Ok(id) if segment.bytes().all(|b| b.is_ascii_digit()) => RoomRef::Id(id),
            _ => RoomRef::Title(segment),
        })
    }
}

/// Decodes `%XX` escapes in one URL component; `None` if they are malformed or the result
/// is not UTF-8.
pub fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The body of `POST /chats` and `PUT /chats/<room>`; every field optional so that a
/// missing one is reported by name. Unknown fields are ignored, as the Go version did, so
/// a client may send back a room it fetched.
#[derive(Debug, Default, Deserialize)]
pub struct RoomInput {
    pub title: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<String>,
    pub password: Option<String>,
}

/// The room map. See the module docs for the locking rules.
pub struct RoomMap {
    inner: Mutex<Rooms>,
    /// Where broadcasts hand the members to wake: the waker thread rings their doorbells,
    /// so the thread that spoke returns to its own socket at once instead of waking a
    /// whole room first (its own queue would fill meanwhile, and it would be closed as a
    /// slow reader while it was busy serving everyone else).
    waker: Sender<Wakeups>,
    /// Hashes and checks room passwords, on threads of its own (see `hasher`).
    hasher: Hasher,
    /// How many `send` events each room keeps for sockets that join later.
    history_len: usize,
    /// Where rooms and history are saved (nowhere with `db_path: null`).
    store: Store,
}

struct Rooms {
    by_id: BTreeMap<u64, Room>,
    /// Lower-cased title -> id; kept in step with `by_id` by the only three functions
    /// that add, rename or remove a room.
    by_title: HashMap<String, u64>,
    /// The next id to hand out. Only ever grows, so ids are never reused.
    next_id: u64,
}

impl RoomMap {
    /// The map as `saved` left it, saving through `store` from now on. A new database (no
    /// rooms, no id counter yet) starts with the default room, id 1, "Public Chat", public,
    /// saved at once; after that, deleting it is as lasting as deleting any room.
    pub fn restore(
        store: Store,
        saved: Saved,
        hasher: Hasher,
        history_len: usize,
    ) -> Result<RoomMap, StoreError> {
        let mut rooms = Rooms {
            by_id: BTreeMap::new(),
            by_title: HashMap::new(),
            next_id: 1,
        };
        let mut history = saved.history;
        for record in saved.rooms {
            let events = history.remove(&record.id).unwrap_or_default();
            let room = Room::restore(record, events).map_err(|problem| store.error(problem))?;
            rooms.next_id = rooms.next_id.max(room.id + 1);
            rooms.by_title.insert(room.title.to_lowercase(), room.id);
            rooms.by_id.insert(room.id, room);
        }
        match saved.next_id {
            Some(next_id) => rooms.next_id = rooms.next_id.max(next_id),
            // A file with rooms but no counter was edited by hand: its rooms decide the ids.
            None if !rooms.by_id.is_empty() => {}
            None => {
                let now = now_rfc3339();
                rooms.add(
                    Room {
                        id: 0,
                        title: "Public Chat".into(),
                        description: "Everyone is welcome here.".into(),
                        visibility: Visibility::Public,
                        password_hash: None,
                        created_at: now.clone(),
                        updated_at: now,
                        sockets: Vec::new(),
                        history: VecDeque::new(),
                    },
                    &store,
                )?;
            }
        }
        let (waker, to_wake) = crossbeam_channel::unbounded::<Wakeups>();
        std::thread::Builder::new()
            .name("room-waker".into())
            .stack_size(WAKER_STACK_BYTES)
            .spawn(move || to_wake.iter().for_each(Wakeups::wake_all))
            .map_err(|e| store.error(format!("cannot start the waker thread: {e}")))?;
        Ok(RoomMap {
            inner: Mutex::new(rooms),
            waker,
            hasher,
            history_len,
            store,
        })
    }

    /// Writes out the history still queued for the database and stops its writer. Called
    /// once, at shutdown.
    pub fn close(&self) {
        self.store.close();
    }

    /// Takes the lock. A panic elsewhere while it was held cannot leave the maps half
    /// updated (every update is done in one step), so a poisoned lock is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Rooms> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` on room `id` (101 if there is none) under the lock, then has the members
    /// it queued events for woken, after the lock is released, as `wake` says.
    fn with_room<T>(
        &self,
        id: u64,
        wake: Wake,
        work: impl FnOnce(&mut Room, &mut Wakeups) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut wakeups = Wakeups::default();
        let result = {
            let mut rooms = self.lock();
            let room = rooms.by_id.get_mut(&id).ok_or_else(not_found)?;
            work(room, &mut wakeups)
        };
        match wake {
            Wake::Now => wakeups.wake_all(),
            // The waker thread lives as long as the map: the send cannot fail.
            Wake::Later => {
                let _ = self.waker.send(wakeups);
            }
        }
        result
    }

    /// Every room except hidden ones, by id. Users are shown for public rooms only: a
    /// listing has no token for each private room.
    pub fn list(&self) -> Vec<RoomView> {
        let rooms = self.lock();
        rooms
            .by_id
            .values()
            .filter(|room| room.visibility != Visibility::Hidden)
            .map(|room| room.view(room.visibility == Visibility::Public))
            .collect()
    }

    /// The access data of the room `room_ref` names, or 101.
    pub fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError> {
        let rooms = self.lock();
        let room = rooms.find(room_ref)?;
        Ok(RoomKey {
            id: room.id,
            visibility: room.visibility,
            password_hash: room.password_hash.clone(),
        })
    }

    /// The room with `id` as clients see it, with or without its users.
    pub fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError> {
        let rooms = self.lock();
        rooms
            .by_id
            .get(&id)
            .map(|room| room.view(with_users))
            .ok_or_else(not_found)
    }

    /// Validates `input`, hashes its password (before taking the lock), and adds the room.
    pub fn create(&self, input: RoomInput) -> Result<RoomView, ApiError> {
        let title = validate_title(input.title.as_deref())?;
        let description = validate_description(input.description.as_deref())?;
        let visibility = validate_visibility(input.visibility.as_deref())?;
        let password_hash = self.hash_for(visibility, input.password.as_deref(), None)?;
        let now = now_rfc3339();
        let mut rooms = self.lock();
        rooms.check_title_free(&title, None)?;
        let room = Room {
            id: 0,
            title,
            description,
            visibility,
            password_hash,
            created_at: now.clone(),
            updated_at: now,
            sockets: Vec::new(),
            history: VecDeque::new(),
        };
        let id = rooms.add(room, &self.store).map_err(unsaved)?;
        // The creator holds no token yet: a private room's users are not shown (there are none).
        Ok(rooms.by_id[&id].view(visibility == Visibility::Public))
    }

    /// Applies the fields present in `input` to room `id`. A new password is hashed before
    /// the lock is taken; changing it (or the visibility) changes the room's token key, so
    /// tokens issued before stop working.
    pub fn update(&self, id: u64, input: RoomInput) -> Result<RoomView, ApiError> {
        let title = input
            .title
            .as_deref()
            .map(|t| validate_title(Some(t)))
            .transpose()?;
        let description = input
            .description
            .as_deref()
            .map(|d| validate_description(Some(d)))
            .transpose()?;
        let visibility = input
            .visibility
            .as_deref()
            .map(|v| validate_visibility(Some(v)))
            .transpose()?;
        let current = {
            let rooms = self.lock();
            let room = rooms.by_id.get(&id).ok_or_else(not_found)?;
            (room.visibility, room.password_hash.clone())
        };
        let new_visibility = visibility.unwrap_or(current.0);
        let password_hash = self.hash_for(new_visibility, input.password.as_deref(), current.1)?;

        let mut rooms = self.lock();
        if let Some(title) = &title {
            rooms.check_title_free(title, Some(id))?;
        }
        let next_id = rooms.next_id;
        let room = rooms.by_id.get_mut(&id).ok_or_else(not_found)?;
        let mut record = room.record();
        if let Some(title) = title {
            record.title = title;
        }
        if let Some(description) = description {
            record.description = description;
        }
        record.visibility = new_visibility.as_str().into();
        record.password_hash = password_hash;
        record.updated_at = now_rfc3339();
        // Saved first: if the write fails, memory is left as it was.
        self.store.save_room(&record, next_id).map_err(unsaved)?;
        let old_title = std::mem::replace(&mut room.title, record.title);
        room.description = record.description;
        room.visibility = new_visibility;
        room.password_hash = record.password_hash;
        room.updated_at = record.updated_at;
        let view = room.view(true);
        if old_title != view.title {
            rooms.by_title.remove(&old_title.to_lowercase());
            rooms.by_title.insert(view.title.to_lowercase(), id);
        }
        Ok(view)
    }

    /// Removes room `id`. Its sockets are told ([`CloseReason::RoomDeleted`]); its id is
    /// never reused, and tokens for it die with it (their key included its id and hash).
    pub fn delete(&self, id: u64) -> Result<(), ApiError> {
        let room = {
            let mut rooms = self.lock();
            if !rooms.by_id.contains_key(&id) {
                return Err(not_found());
            }
            // Deleted on disk first: if that fails, the room is still there everywhere.
            self.store.delete_room(id).map_err(unsaved)?;
            let room = rooms.by_id.remove(&id).ok_or_else(not_found)?;
            rooms.by_title.remove(&room.title.to_lowercase());
            room
        };
        for socket in &room.sockets {
            socket.subscriber.close(CloseReason::RoomDeleted);
        }
        Ok(())
    }

    /// Checks `password` against the room's hash, without holding the lock.
    pub fn password_matches(&self, key: &RoomKey, password: &str) -> bool {
        match &key.password_hash {
            Some(hash) => self.hasher.verify(password, hash),
            None => false,
        }
    }

    /// Connects socket `session` to room `id` (101 if the room is gone), so that it hears
    /// of the room's deletion even before it joins.
    pub fn attach(
        &self,
        id: u64,
        session: u64,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<(), ApiError> {
        let mut rooms = self.lock();
        let room = rooms.by_id.get_mut(&id).ok_or_else(not_found)?;
        room.sockets.push(Socket {
            session,
            subscriber,
            member: None,
        });
        Ok(())
    }

    /// Disconnects socket `session`, broadcasting its leave if it had joined.
    pub fn detach(&self, id: u64, session: u64) {
        // A room already deleted has nobody left to tell.
        let _ = self.with_room(id, Wake::Now, |room, wakeups| {
            if let Some(index) = room.sockets.iter().position(|s| s.session == session) {
                let socket = room.sockets.remove(index);
                if let Some(member) = socket.member {
                    room.broadcast_leave(&member, &now_rfc3339(), wakeups);
                }
            }
            Ok(())
        });
    }

    /// Gives socket `session` the name `name` in room `id` and broadcasts its join. Names
    /// are unique in a room case-insensitively, and a socket holds one at a time (else 202).
    pub fn join(&self, id: u64, session: u64, name: &str, color: &str) -> Result<(), ApiError> {
        self.with_room(id, Wake::Now, |room, wakeups| {
            let lower = name.to_lowercase();
            let taken = room
                .members()
                .any(|(s, m)| s.session == session || m.username.to_lowercase() == lower);
            if taken {
                return Err(ApiError::field(ErrorKind::DuplicateUsername, "name"));
            }
            let socket = room.socket_mut(session)?;
            let now = now_rfc3339();
            socket.member = Some(Member {
                username: name.to_owned(),
                color: color.to_owned(),
                last_activity: now.clone(),
            });
            let subscriber = Arc::clone(&socket.subscriber);
            // What was said before comes first, with its original times, then this socket's
            // own join: under the lock, so no new event can come between them.
            for event in &room.history {
                // A full queue: the join below finds it full too and drops it as a slow reader.
                if !subscriber.deliver(event) {
                    break;
                }
            }
            room.broadcast(
                EventType::Join,
                name,
                color,
                &join_message(name),
                &now,
                wakeups,
            );
            Ok(())
        })
    }

    /// Broadcasts `msg` from `session` under the name it joined with (201 if it has none).
    pub fn send(&self, id: u64, session: u64, msg: &str) -> Result<(), ApiError> {
        self.with_room(id, Wake::Later, |room, wakeups| {
            let now = now_rfc3339();
            let member = room
                .socket_mut(session)?
                .member
                .as_mut()
                .ok_or_else(|| ApiError::new(ErrorKind::UserNotFound))?;
            member.last_activity = now.clone();
            let (name, color) = (member.username.clone(), member.color.clone());
            let event = room.broadcast(EventType::Send, &name, &color, msg, &now, wakeups);
            room.remember(event, self.history_len, &self.store);
            Ok(())
        })
    }

    /// Takes socket `session`'s name away in room `id` and broadcasts its leave (201 if it
    /// had none: never joined, already left, or dropped as a slow reader).
    pub fn leave(&self, id: u64, session: u64) -> Result<(), ApiError> {
        self.with_room(id, Wake::Now, |room, wakeups| {
            let member = room
                .socket_mut(session)?
                .member
                .take()
                .ok_or_else(|| ApiError::new(ErrorKind::UserNotFound))?;
            room.broadcast_leave(&member, &now_rfc3339(), wakeups);
            Ok(())
        })
    }

    /// The bcrypt hash a room with `visibility` should hold: `None` for public rooms (which
    /// must not be given a password), a fresh hash of `password`, or `current` kept.
    fn hash_for(
        &self,
        visibility: Visibility,
        password: Option<&str>,
        current: Option<String>,
    ) -> Result<Option<String>, ApiError> {
        match (visibility, password) {
            (Visibility::Public, Some(_)) => Err(invalid("visibility")),
            (Visibility::Public, None) => Ok(None),
            (_, Some(password)) => {
                if password.chars().count() < MIN_PASSWORD_CHARS
                    || password.len() > MAX_PASSWORD_BYTES
                {
                    return Err(invalid("password"));
                }
                self.hasher
                    .hash(password)
                    .map(Some)
                    .ok_or_else(|| invalid("password"))
            }
            (_, None) => current.map(Some).ok_or_else(|| invalid("password")),
        }
    }
}

impl Rooms {
    /// Gives `room` the next id, saves it (with the grown counter), then adds it to memory;
    /// returns the id. If the save fails nothing changes, and the id is not used up.
    fn add(&mut self, mut room: Room, store: &Store) -> Result<u64, StoreError> {
        let id = self.next_id;
        room.id = id;
        store.save_room(&room.record(), id + 1)?;
        self.next_id = id + 1;
        self.by_title.insert(room.title.to_lowercase(), id);
        self.by_id.insert(id, room);
        Ok(id)
    }

    fn find(&self, room_ref: &RoomRef) -> Result<&Room, ApiError> {
        let id = match room_ref {
            RoomRef::Id(id) => Some(*id),
            RoomRef::Title(title) => self.by_title.get(&title.trim().to_lowercase()).copied(),
        };
        id.and_then(|id| self.by_id.get(&id)).ok_or_else(not_found)
    }

    /// 102 unless no room but `except` has `title` (case-insensitively).
    fn check_title_free(&self, title: &str, except: Option<u64>) -> Result<(), ApiError> {
        match self.by_title.get(&title.to_lowercase()) {
            Some(id) if Some(*id) != except => {
                Err(ApiError::field(ErrorKind::DuplicateRoom, "title"))
            }
            _ => Ok(()),
        }
    }
}

impl Room {
    /// A room read back from the database, with its saved history.
    fn restore(record: RoomRecord, history: Vec<Arc<str>>) -> Result<Room, String> {
        let visibility = Visibility::parse(&record.visibility).ok_or_else(|| {
            format!(
                "room {} has an unknown visibility {:?}",
                record.id, record.visibility
            )
        })?;
        Ok(Room {
            id: record.id,
            title: record.title,
            description: record.description,
            visibility,
            password_hash: record.password_hash,
            created_at: record.created_at,
            updated_at: record.updated_at,
            sockets: Vec::new(),
            history: history.into(),
        })
    }

    /// The room as the database stores it.
    fn record(&self) -> RoomRecord {
        RoomRecord {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            visibility: self.visibility.as_str().into(),
            password_hash: self.password_hash.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }

    /// Keeps a broadcast `send` event for sockets that join later, dropping the oldest
    /// beyond `history_len`, and queues it for the database.
    fn remember(&mut self, event: Arc<str>, history_len: usize, store: &Store) {
        if history_len == 0 {
            return;
        }
        while self.history.len() >= history_len {
            self.history.pop_front();
        }
        store.append_message(self.id, &event);
        self.history.push_back(event);
    }

    fn view(&self, with_users: bool) -> RoomView {
        RoomView {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            visibility: self.visibility,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            users: with_users.then(|| {
                self.members()
                    .map(|(_, m)| UserView {
                        username: m.username.clone(),
                        color: m.color.clone(),
                        last_activity: m.last_activity.clone(),
                    })
                    .collect()
            }),
        }
    }

    /// The joined sockets, with their names.
    fn members(&self) -> impl Iterator<Item = (&Socket, &Member)> {
        self.sockets
            .iter()
            .filter_map(|s| s.member.as_ref().map(|m| (s, m)))
    }

    /// The attached socket `session`; a socket that is not attached (dropped as a slow
    /// reader, say) is told it has no name here.
    fn socket_mut(&mut self, session: u64) -> Result<&mut Socket, ApiError> {
        let socket = self.sockets.iter_mut().find(|s| s.session == session);
        socket.ok_or_else(|| ApiError::new(ErrorKind::UserNotFound))
    }

    fn broadcast_leave(&mut self, member: &Member, time: &str, wakeups: &mut Wakeups) {
        let msg = leave_message(&member.username);
        self.broadcast(
            EventType::Leave,
            &member.username,
            &member.color,
            &msg,
            time,
            wakeups,
        );
    }

    /// Serialises the event once and hands it to every member, in socket order. A member
    /// whose queue is full is detached, told why, and its leave is broadcast in turn (after
    /// this event, so every member still sees one order). Members to wake are added to
    /// `wakeups`. Returns the event's text.
    fn broadcast(
        &mut self,
        event_type: EventType,
        name: &str,
        color: &str,
        msg: &str,
        time: &str,
        wakeups: &mut Wakeups,
    ) -> Arc<str> {
        let first: Arc<str> = ServerEvent {
            event_type,
            name,
            color,
            msg,
            room_id: self.id,
            time,
        }
        .to_text()
        .into();
        let mut pending = VecDeque::from([Arc::clone(&first)]);
        while let Some(text) = pending.pop_front() {
            let mut index = 0;
            while let Some(socket) = self.sockets.get(index) {
                if socket.member.is_none() {
                    index += 1;
                    continue;
                }
                if socket.subscriber.deliver(&text) {
                    wakeups.add(&socket.subscriber);
                    index += 1;
                    continue;
                }
                let dropped = self.sockets.remove(index);
                dropped.subscriber.close(CloseReason::SlowReader);
                if let Some(member) = dropped.member {
                    log::warn!(
                        "room {}: {} stopped reading; closing it",
                        self.id,
                        member.username
                    );
                    let msg = leave_message(&member.username);
                    let leave = ServerEvent {
                        event_type: EventType::Leave,
                        name: &member.username,
                        color: &member.color,
                        msg: &msg,
                        room_id: self.id,
                        time,
                    };
                    pending.push_back(leave.to_text().into());
                }
            }
        }
        first
    }
}

/// Who wakes the members a broadcast queued events for.
#[derive(Clone, Copy)]
enum Wake {
    /// The broadcasting thread, at once. For joins and leaves: they come in storms (a class
    /// of 2,000 joining, each join delivered to everyone there), and waking the room
    /// paces the storm, where the waker thread would fall behind and leave sockets
    /// asleep while their queues fill.
    Now,
    /// The waker thread. For chat messages: the thread whose socket spoke returns to its
    /// own socket at once instead of waking the whole room first.
    Later,
}

/// Members that were handed events under the lock and are to be woken after it.
#[derive(Default)]
struct Wakeups(Vec<Arc<dyn Subscriber>>);

impl Wakeups {
    fn add(&mut self, subscriber: &Arc<dyn Subscriber>) {
        self.0.push(Arc::clone(subscriber));
    }

    fn wake_all(self) {
        for subscriber in self.0 {
            subscriber.wake();
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(ErrorKind::RoomNotFound)
}

/// A database write failed: the operator is told (it is their disk), the client gets a 500,
/// and the change has not been made (see the module docs).
fn unsaved(error: StoreError) -> ApiError {
    log::error!("{error}");
    ApiError::new(ErrorKind::Internal)
}

fn invalid(field: &'static str) -> ApiError {
    ApiError::field(ErrorKind::RoomInvalidContent, field)
}

fn validate_title(title: Option<&str>) -> Result<String, ApiError> {
    let title = title.map(str::trim).unwrap_or_default();
    let all_digits = !title.is_empty() && title.chars().all(|c| c.is_ascii_digit());
    if !TITLE_CHARS.contains(&title.chars().count()) || all_digits {
        return Err(invalid("title"));
    }
    Ok(title.to_owned())
}

fn validate_description(description: Option<&str>) -> Result<String, ApiError> {
    let description = description.map(str::trim).unwrap_or_default();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid("description"));
    }
    Ok(description.to_owned())
}

fn validate_visibility(visibility: Option<&str>) -> Result<Visibility, ApiError> {
    visibility
        .and_then(Visibility::parse)
        .ok_or_else(|| invalid("visibility"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map with only the default room, no history, and nothing saved.
    fn in_memory_map() -> RoomMap {
        let hasher = Hasher::start(4).unwrap();
        RoomMap::restore(Store::in_memory(), Saved::default(), hasher, 0).unwrap()
    }

    fn input(title: &str, visibility: &str, password: Option<&str>) -> RoomInput {
        RoomInput {
            title: Some(title.into()),
            description: None,
            visibility: Some(visibility.into()),
            password: password.map(Into::into),
        }
    }

    #[test]
    fn titles_are_checked() {
        assert_eq!(validate_title(Some("  ab  ")).unwrap(), "ab");
        for bad in [None, Some("a"), Some("12345"), Some(&*"x".repeat(71))] {
            assert_eq!(validate_title(bad).unwrap_err().field, Some("title"));
        }
    }

    #[test]
    fn ids_only_grow() {
        let rooms = in_memory_map();
        let a = rooms.create(input("first", "public", None)).unwrap();
        rooms.delete(a.id).unwrap();
        let b = rooms.create(input("first", "public", None)).unwrap();
        assert_eq!((a.id, b.id), (2, 3));
    }

    #[test]
    fn a_restored_map_keeps_its_rooms_and_counts_on_from_the_saved_counter() {
        let saved = Saved {
            next_id: Some(9),
            rooms: vec![RoomRecord {
                id: 5,
                title: "Kept".into(),
                description: "".into(),
                visibility: "hidden".into(),
                password_hash: Some("hash".into()),
                created_at: "2026-11-28T15:19:28.123Z".into(),
                updated_at: "2026-11-28T15:19:28.123Z".into(),
            }],
            history: Default::default(),
        };
        let rooms =
            RoomMap::restore(Store::in_memory(), saved, Hasher::start(4).unwrap(), 10).unwrap();
        let key = rooms.key(&RoomRef::Title("kept".into())).unwrap();
        assert_eq!(
            (key.id, key.visibility, key.password_hash.as_deref()),
            (5, Visibility::Hidden, Some("hash"))
        );
        assert_eq!(rooms.key(&RoomRef::Id(1)).unwrap_err().code(), 101);
        assert_eq!(rooms.create(input("new", "public", None)).unwrap().id, 9);
    }

    #[test]
    fn a_saved_room_with_an_unknown_visibility_is_a_store_error() {
        let saved = Saved {
            next_id: Some(3),
            rooms: vec![RoomRecord {
                id: 2,
                title: "Odd".into(),
                description: "".into(),
                visibility: "secret".into(),
                password_hash: None,
                created_at: "t".into(),
                updated_at: "t".into(),
            }],
            history: Default::default(),
        };
        let error = RoomMap::restore(Store::in_memory(), saved, Hasher::start(4).unwrap(), 10)
            .err()
            .unwrap();
        assert_eq!(error.problem, "room 2 has an unknown visibility \"secret\"");
    }

    #[test]
    fn passwords_follow_visibility() {
        let rooms = in_memory_map();
        assert_eq!(
            rooms
                .create(input("pub", "public", Some("password1")))
                .unwrap_err()
                .field,
            Some("visibility")
        );
        assert_eq!(
            rooms
                .create(input("priv", "private", None))
                .unwrap_err()
                .field,
            Some("password")
        );
        assert_eq!(
            rooms
                .create(input("priv", "private", Some("short")))
                .unwrap_err()
                .field,
            Some("password")
        );
        let room = rooms
            .create(input("priv", "PRIVATE", Some("password1")))
            .unwrap();
        assert_eq!(room.visibility, Visibility::Private);
        let key = rooms.key(&RoomRef::Title("PRIV".into())).unwrap();
        assert!(rooms.password_matches(&key, "password1"));
        assert!(!rooms.password_matches(&key, "password2"));
    }

    #[test]
    fn room_refs_read_digits_as_ids() {
        assert_eq!(RoomRef::from_segment("12"), Some(RoomRef::Id(12)));
        assert_eq!(
            RoomRef::from_segment("My%20chat"),
            Some(RoomRef::Title("My chat".into()))
        );
        assert_eq!(
            RoomRef::from_segment("+12"),
            Some(RoomRef::Title("+12".into()))
        );
        assert_eq!(RoomRef::from_segment("%zz"), None);
    }

    #[test]
    fn percent_decoding_handles_utf8_and_rejects_junk() {
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%FF"), None);
    }
}
