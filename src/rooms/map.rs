//! One node: [`RoomMap`], every room in memory, found by id or title, saved to the store
//! (SQLite), each room's events ordered by its own lock.
//!
//! # Disk first, then memory
//! Every room change is written to the store *first*, under the writers' lock only, and
//! applied to memory afterwards under the short locks: a 201 or 200 means the change is on
//! disk, a failed write changes nothing (503, code 605), and the database sees changes in
//! the order memory does. Chat never takes the writers' lock, so a slow disk delays the
//! next room change, never a message. Messages reach the disk off the chat path: the
//! speaker's thread queues each for the store's writer thread once the room's lock is
//! released.
//!
//! bcrypt runs before any lock. An update reads the room's revision, hashes, then applies
//! its change only if the revision is still the one it read; otherwise it starts again
//! from the new state, so two concurrent PUTs both take effect, one after the other.
//!
//! Ids come from [`Index::next_id`], which only grows: a deleted room's id is never handed
//! out again (SPEC, Rooms; the Go version decremented its counter and reused ids).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use crossbeam_channel::Sender;

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{join_message, EventType};
use crate::hasher::Hasher;
use crate::metrics::CloseReason;
use crate::path::RoomRef;
use crate::store::{Saved, Store, StoreError};
use crate::sync::{lock, read, write};

use super::bell::Bell;
use super::catalog::{hash_for, not_found, Info, RoomInput};
use super::room::{Joined, Refusal, Room};
use super::view::{RoomKey, RoomView, Visibility};
use super::waker::Waker;
use super::{Bounds, Counts, Page, Rooms};

/// How often an update starts again because another changed the room meanwhile, before
/// it gives up (each try may hash a password).
const UPDATE_TRIES: usize = 8;

/// Every room of a one-node server, and the locks described in `rooms`.
pub struct RoomMap {
    /// Ids and titles to rooms: held for lookups and inserts only.
    index: RwLock<Index>,
    /// The writers' lock: one room change (disk write included) at a time.
    writes: Mutex<()>,
    /// Where rooms and history are saved.
    store: Arc<dyn Store>,
    /// Hashes room passwords, on threads of its own.
    hasher: Hasher,
    /// The channels', histories' and room count's bounds.
    bounds: Bounds,
    /// Rings the members of chat messages (see `waker`).
    waker: Waker,
}

/// Ids and titles to rooms.
struct Index {
    by_id: BTreeMap<u64, Entry>,
    /// Lower-cased title -> id; kept in step with `by_id` by `insert`, `retitle` and
    /// `remove`, the only functions that change either.
    by_title: HashMap<String, u64>,
    /// The next id to hand out. Only ever grows, so ids are never reused.
    next_id: u64,
}

/// One room: its description, and its live side.
struct Entry {
    info: Info,
    room: Arc<Room>,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        let id = entry.info.id;
        self.next_id = self.next_id.max(id + 1);
        self.by_title.insert(entry.info.title.to_lowercase(), id);
        self.by_id.insert(id, entry);
    }

    fn find(&self, room_ref: &RoomRef) -> Option<&Entry> {
        let id = match room_ref {
            RoomRef::Id(id) => Some(*id),
            RoomRef::Title(title) => self.by_title.get(&title.trim().to_lowercase()).copied(),
        };
        self.by_id.get(&id?)
    }

    fn get(&self, id: u64) -> Result<&Entry, ApiError> {
        self.by_id.get(&id).ok_or_else(not_found)
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

impl RoomMap {
    /// The map as `saved` left it, saving through `store` from now on. A new database (no
    /// rooms, no id counter yet) starts with the default room, id 1, "Public Chat", public,
    /// saved at once; after that, deleting it is as lasting as deleting any room.
    pub fn restore(
        store: Arc<dyn Store>,
        saved: Saved,
        hasher: Hasher,
        bounds: Bounds,
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
            store,
            hasher,
            bounds,
            waker,
        };
        let mut history = saved.history;
        let mut index = write(&map.index);
        for record in saved.rooms {
            let (id, last_message_id) = (record.room.id, record.last_message_id);
            let info = Info::restore(record.room).map_err(|problem| map.store.error(problem))?;
            let kept = history.remove(&id).unwrap_or_default();
            index.insert(map.entry(info, kept, last_message_id));
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
                map.store.save_room(&info.record(), 2)?;
                index.insert(map.entry(info, Vec::new(), 0));
            }
        }
        drop(index);
        Ok(map)
    }

    /// A room for the index, with this map's queue and history sizes.
    fn entry(&self, info: Info, history: Vec<(u64, Arc<String>)>, last_message_id: u64) -> Entry {
        let room = Room::new(
            info.id,
            history,
            last_message_id,
            self.bounds.queue_len,
            self.bounds.history_len,
            self.waker.clone(),
        );
        Entry {
            info,
            room: Arc::new(room),
        }
    }

    /// Room `id`'s description and live side, copied out of the index.
    fn lookup(&self, id: u64) -> Result<(Info, Arc<Room>), ApiError> {
        let index = read(&self.index);
        let entry = index.get(id)?;
        Ok((entry.info.clone(), Arc::clone(&entry.room)))
    }
}

impl Rooms for RoomMap {
    fn list(&self, page: Page) -> Result<Vec<RoomView>, ApiError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let index = read(&self.index);
        let views = index
            .by_id
            .range((Excluded(page.after), Unbounded))
            .map(|(_, entry)| entry)
            .filter(|e| e.info.visibility != Visibility::Hidden)
            .take(page.limit.unwrap_or(usize::MAX))
            .map(|e| {
                let public = e.info.visibility == Visibility::Public;
                e.info
                    .view(public.then(|| e.room.locked(|state, _| state.users())))
            })
            .collect();
        Ok(views)
    }

    fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError> {
        let index = read(&self.index);
        let info = &index.find(room_ref).ok_or_else(not_found)?.info;
        Ok(RoomKey {
            id: info.id,
            visibility: info.visibility,
            password_hash: info.password_hash.clone(),
            created_at: info.created_at.clone(),
        })
    }

    fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError> {
        let (info, room) = self.lookup(id)?;
        Ok(info.view(with_users.then(|| room.locked(|state, _| state.users()))))
    }

    fn messages(&self, id: u64, since: u64, limit: usize) -> Result<Vec<Arc<String>>, ApiError> {
        let (_, room) = self.lookup(id)?;
        Ok(room.locked(|state, _| state.messages(since, limit)))
    }

    fn create(&self, input: RoomInput) -> Result<RoomView, ApiError> {
        let (title, description, visibility) = input.new_room()?;
        let password_hash = hash_for(&self.hasher, visibility, input.password.as_deref(), None)?;
        let _writing = lock(&self.writes);
        let id = {
            let index = read(&self.index);
            self.bounds.check_room_count(index.by_id.len())?;
            index.check_title_free(&title, None)?;
            index.next_id
        };
        let now = now_rfc3339();
        let info = Info {
            id,
            title,
            description,
            visibility,
            password_hash,
            created_at: now.clone(),
            updated_at: now,
            revision: 0,
        };
        self.store
            .save_room(&info.record(), id + 1)
            .map_err(unsaved)?;
        // A new room has nobody in it; a private room's users are not shown to its
        // creator, who holds no token yet.
        let view = info.view((visibility == Visibility::Public).then(Vec::new));
        write(&self.index).insert(self.entry(info, Vec::new(), 0));
        Ok(view)
    }

    fn update(&self, id: u64, input: RoomInput) -> Result<RoomView, ApiError> {
        let patch = input.patch()?;
        for _ in 0..UPDATE_TRIES {
            let (current, _) = self.lookup(id)?;
            let info = patch.apply(&current, &self.hasher)?;
            let _writing = lock(&self.writes);
            let (now_current, room) = self.lookup(id)?;
            if now_current.revision != current.revision {
                continue;
            }
            let next_id = {
                let index = read(&self.index);
                index.check_title_free(&info.title, Some(id))?;
                index.next_id
            };
            self.store
                .save_room(&info.record(), next_id)
                .map_err(unsaved)?;
            let mut index = write(&self.index);
            index.by_title.remove(&current.title.to_lowercase());
            index.by_title.insert(info.title.to_lowercase(), id);
            if let Some(entry) = index.by_id.get_mut(&id) {
                entry.info = info.clone();
            }
            drop(index);
            // SPEC, Who may change a room: a new password or visibility closes every
            // socket, which must present what the room asks for now.
            if info.access_differs(&current) {
                room.locked(|state, after| state.close_each(CloseReason::AccessChanged, after));
            }
            return Ok(info.view(Some(room.locked(|state, _| state.users()))));
        }
        log::warn!("room {id}: {UPDATE_TRIES} concurrent updates in a row; this one gave up");
        Err(ApiError::new(ErrorKind::StorageUnavailable))
    }

    fn delete(&self, id: u64) -> Result<(), ApiError> {
        let _writing = lock(&self.writes);
        let (info, room) = self.lookup(id)?;
        self.store.delete_room(id).map_err(unsaved)?;
        let mut index = write(&self.index);
        index.by_id.remove(&id);
        index.by_title.remove(&info.title.to_lowercase());
        drop(index);
        room.locked(|state, after| state.close_all(CloseReason::RoomDeleted, after));
        Ok(())
    }

    fn attach(
        &self,
        id: u64,
        session: u64,
        outbox: Sender<Arc<String>>,
        bell: Arc<Bell>,
    ) -> Result<Arc<Room>, ApiError> {
        let (_, room) = self.lookup(id)?;
        room.locked(|state, _| state.attach(session, outbox, bell))?;
        Ok(room)
    }

    /// Under the room's lock: the name is free, every channel has room, the join goes to
    /// every member, the joining socket's first; the kept messages are copied for it.
    fn join(
        &self,
        room: &Room,
        session: u64,
        name: &str,
        color: &str,
        since: Option<u64>,
    ) -> Result<Joined, Refusal> {
        room.locked(|state, after| {
            let member = state.take_name(session, name, color, true, after)?;
            let text = state.event(
                EventType::Join,
                &member,
                &join_message(name),
                &member.last_activity,
                None,
            );
            state.broadcast(&text, after);
            Ok(Joined {
                replay: state.replay(since.unwrap_or(0)),
            })
        })
    }

    /// Under the room's lock: the speaker's joined name (never the frame's), room in every
    /// channel, the next message id, the event serialised once and handed to every member,
    /// kept in the history. After the lock, queued for the disk.
    fn send(&self, room: &Room, session: u64, msg: &str) -> Result<u64, Refusal> {
        let (id, text) = room.locked(|state, after| {
            let now = now_rfc3339();
            let member = state.speaker(session, &now)?;
            state.make_space(session, after)?;
            let id = state.next_message_id();
            let text = state.event(EventType::Send, &member, msg, &now, Some(id));
            state.broadcast(&text, after);
            after.wake_later();
            state.keep(id, &text);
            Ok::<_, Refusal>((id, text))
        })?;
        // Even when nothing is kept, the store learns the id, so ids survive a restart.
        self.store.append_message(room.id, id, &text);
        Ok(id)
    }

    fn leave(&self, room: &Room, session: u64) -> Result<(), Refusal> {
        room.locked(|state, after| {
            state.speaker(session, &now_rfc3339())?;
            state.make_space(session, after)?;
            let member = state.give_up_name(session)?;
            state.broadcast(&state.leave_event(&member), after);
            Ok(())
        })
    }

    /// A leave is broadcast even to full channels: one per socket, so the bound holds.
    fn detach(&self, room: &Arc<Room>, session: u64) {
        room.locked(|state, after| {
            if let Some(member) = state.detach(session, after) {
                state.broadcast(&state.leave_event(&member), after);
            }
        });
    }

    fn counts(&self) -> Counts {
        let rooms: Vec<Arc<Room>> = read(&self.index)
            .by_id
            .values()
            .map(|e| Arc::clone(&e.room))
            .collect();
        Counts {
            rooms: rooms.len(),
            users_joined: rooms
                .iter()
                .map(|room| room.locked(|state, _| state.members()))
                .sum(),
            history_queue: self.store.queued(),
        }
    }

    fn is_up(&self) -> bool {
        self.store.is_up()
    }

    fn close(&self) {
        self.store.close();
    }
}

/// A database write failed: the operator is told (it is their disk), the client gets a 503
/// with code 605 and may retry, and the change has not been made.
fn unsaved(error: StoreError) -> ApiError {
    log::error!("{error}");
    ApiError::new(ErrorKind::StorageUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::{attach, Membership};
    use crate::store::{NoStore, RoomRecord, SavedRoom};

    /// A map with only the default room, channels of `queue_len`, keeping `history_len`
    /// messages, saving nothing.
    fn map(queue_len: usize, history_len: usize) -> Arc<dyn Rooms> {
        let hasher = Hasher::start(4, 0, Arc::default()).unwrap();
        let bounds = Bounds {
            queue_len,
            history_len,
            max_rooms: 3,
        };
        let map = RoomMap::restore(Arc::new(NoStore), Saved::default(), hasher, bounds).unwrap();
        Arc::new(map)
    }

    const BOUNDS: Bounds = Bounds {
        queue_len: 16,
        history_len: 10,
        max_rooms: 0,
    };

    fn input(title: &str, visibility: &str, password: Option<&str>) -> RoomInput {
        RoomInput {
            title: Some(title.into()),
            description: None,
            visibility: Some(visibility.into()),
            password: password.map(Into::into),
        }
    }

    /// Socket `session` attached to room 1 and joined as `name`; its bell armed, as a
    /// thread asleep in `poll`.
    fn member(rooms: &Arc<dyn Rooms>, session: u64, name: &str) -> (Membership, Arc<Bell>) {
        let bell = Arc::new(Bell::new().unwrap());
        let membership = attach(rooms, 1, session, &bell).unwrap();
        membership.join(name, "red", None).unwrap();
        bell.arm();
        (membership, bell)
    }

    /// Everything waiting in `membership`'s channel.
    fn drain(membership: &Membership) -> Vec<String> {
        let mut out = Vec::new();
        membership.take(usize::MAX, |text| out.push(text.to_owned()));
        out
    }

    fn users(rooms: &Arc<dyn Rooms>) -> Vec<String> {
        let view = rooms.view(1, true).unwrap();
        view.users
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect()
    }

    /// Whether `bell` is rung within `wait`.
    fn rung_within(bell: &Bell, wait: std::time::Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let fd = bell.fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let wait = Timespec::try_from(wait).unwrap();
        poll(&mut fds, Some(&wait)).unwrap() == 1
    }

    fn rung(bell: &Bell) -> bool {
        rung_within(bell, std::time::Duration::ZERO)
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
            history: [(5, vec![(40, Arc::new(String::from("{\"id\":40}")))])].into(),
        };
        let hasher = Hasher::start(4, 0, Arc::default()).unwrap();
        let rooms = RoomMap::restore(Arc::new(NoStore), saved, hasher, BOUNDS).unwrap();
        let key = rooms.key(&RoomRef::Title("kept".into())).unwrap();
        assert_eq!(
            (key.id, key.visibility, key.password_hash.as_deref()),
            (5, Visibility::Hidden, Some("hash"))
        );
        assert_eq!(
            rooms.messages(5, 0, 10).unwrap(),
            [Arc::new(String::from("{\"id\":40}"))]
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
        let hasher = Hasher::start(4, 0, Arc::default()).unwrap();
        let error = RoomMap::restore(Arc::new(NoStore), saved, hasher, BOUNDS)
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
        assert!(key.password_hash.is_some());
    }

    /// The threads a message crosses on one node: by the time `send` returns on the
    /// speaker's thread, every member's channel holds the event (no other thread touched
    /// it); the sleeping members are then rung by the waker thread, not the speaker's, and
    /// each takes the event on its own thread. The speaker, awake, is not rung.
    #[test]
    fn a_send_is_in_every_channel_when_it_returns_and_sleepers_are_rung_after() {
        let rooms = map(16, 0);
        let (speaker, speaker_bell) = member(&rooms, 1, "ann");
        let listeners: Vec<_> = (2..5)
            .map(|session| member(&rooms, session, &format!("user{session}")))
            .collect();
        for (membership, _) in &listeners {
            drain(membership);
        }
        drain(&speaker);
        speaker_bell.disarm();
        speaker_bell.silence();
        for (_, bell) in &listeners {
            bell.silence();
            bell.arm();
        }
        assert_eq!(speaker.send("hi").unwrap(), 1);
        for (membership, bell) in &listeners {
            assert!(membership.has_news(), "in the channel when send returns");
            assert!(
                rung_within(bell, std::time::Duration::from_secs(10)),
                "a sleeping member is rung"
            );
            let events = drain(membership);
            assert_eq!(events.len(), 1);
            assert!(events[0].contains(r#""msg":"hi""#), "{events:?}");
        }
        assert!(!rung(&speaker_bell), "the speaker, awake, is not rung");
        assert_eq!(drain(&speaker).len(), 1, "the speaker hears itself too");
    }

    /// A socket's thread that panics while joined leaves the room all the same: its
    /// membership detaches it while unwinding, and its leave is broadcast.
    #[test]
    fn a_panicking_session_thread_leaves_no_name_behind() {
        let rooms = map(16, 0);
        let (listener, _) = member(&rooms, 1, "ann");
        let shared = Arc::clone(&rooms);
        let panicked = std::thread::spawn(move || {
            let (_membership, _) = member(&shared, 2, "bob");
            panic!("a bug in a session");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(users(&rooms), ["ann"]);
        let events = drain(&listener);
        assert!(events.last().unwrap().contains("bob has left the room."));
    }

    /// A full channel waits for a member that reads but is behind: the speaker is told
    /// Busy, nothing is lost, and once the member takes from its channel, the speaker is
    /// rung and goes on.
    #[test]
    fn a_full_channel_waits_for_a_member_that_reads_but_is_behind() {
        let rooms = map(2, 0);
        let (speaker, speaker_bell) = member(&rooms, 1, "ann");
        let (reader, _) = member(&rooms, 2, "bob");
        drain(&speaker);
        drain(&reader);
        speaker.send("one").unwrap();
        speaker.send("two").unwrap();
        drain(&speaker);
        speaker_bell.silence();
        assert_eq!(speaker.send("three"), Err(Refusal::Busy));
        assert!(!rung(&speaker_bell));
        assert_eq!(drain(&reader).len(), 2);
        assert!(rung(&speaker_bell), "the waiting speaker is rung");
        speaker.send("three").unwrap();
        let last = drain(&reader);
        assert!(last[0].contains(r#""msg":"three""#), "{last:?}");
    }

    /// A full channel whose client stopped reading is closed (1008) instead: the speaker
    /// goes on at once, and the slow reader's leave is broadcast when its thread detaches.
    #[test]
    fn a_full_channel_closes_a_member_that_stopped_reading() {
        let rooms = map(2, 0);
        let (speaker, _) = member(&rooms, 1, "ann");
        let (reader, reader_bell) = member(&rooms, 2, "bob");
        drain(&speaker);
        speaker.send("one").unwrap();
        reader_bell.set_stalled(true);
        speaker.send("two").unwrap();
        assert_eq!(reader_bell.closing(), Some(CloseReason::Slow));
        drain(&speaker);
        speaker.send("three").unwrap();
        assert_eq!(drain(&reader).len(), 2, "nothing after it was closed");
        drop(reader);
        let heard = drain(&speaker);
        assert!(heard.last().unwrap().contains("bob has left the room."));
        assert_eq!(users(&rooms), ["ann"]);
    }

    /// Message ids count 1, 2, 3 in the room's order, the history keeps the newest
    /// `history_len`, and a join replays those above `since`.
    #[test]
    fn messages_are_numbered_and_the_newest_are_kept() {
        let rooms = map(16, 2);
        let (speaker, _) = member(&rooms, 1, "ann");
        for msg in ["a", "b", "c"] {
            speaker.send(msg).unwrap();
        }
        let kept = rooms.messages(1, 0, 10).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept[0].contains(r#""id":2"#) && kept[1].contains(r#""id":3"#));
        assert_eq!(rooms.messages(1, 2, 10).unwrap().len(), 1);
        let bell = Arc::new(Bell::new().unwrap());
        let late = attach(&rooms, 1, 9, &bell).unwrap();
        let joined = late.join("zed", "blue", Some(2)).unwrap();
        assert_eq!(joined.replay.len(), 1);
        assert!(joined.replay[0].ends_with(r#","replay":true}"#));
    }

    /// `max_rooms` (3 in these tests) bounds the rooms that exist: a delete makes room.
    #[test]
    fn past_max_rooms_a_creation_is_606_until_a_room_is_deleted() {
        let rooms = map(16, 0);
        let second = rooms.create(input("second", "public", None)).unwrap();
        rooms.create(input("third", "public", None)).unwrap();
        let refused = rooms.create(input("fourth", "public", None)).unwrap_err();
        assert_eq!(refused.code(), 606);
        rooms.delete(second.id).unwrap();
        assert_eq!(rooms.create(input("fourth", "public", None)).unwrap().id, 4);
    }

    /// A page is the listed rooms with an id above `after`, at most `limit`; hidden rooms
    /// are skipped, not counted.
    #[test]
    fn a_listing_pages_by_id() {
        let rooms = map(16, 0);
        rooms
            .create(input("hidden", "hidden", Some("password1")))
            .unwrap();
        rooms.create(input("third", "public", None)).unwrap();
        let ids = |page| -> Vec<u64> { rooms.list(page).unwrap().iter().map(|r| r.id).collect() };
        assert_eq!(ids(Page::default()), [1, 3]);
        assert_eq!(
            ids(Page {
                after: 1,
                limit: Some(1)
            }),
            [3]
        );
        assert_eq!(
            ids(Page {
                after: 0,
                limit: Some(1)
            }),
            [1]
        );
        assert_eq!(
            ids(Page {
                after: u64::MAX,
                limit: None
            }),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn counts_are_the_rooms_and_the_joined_names() {
        let rooms = map(16, 0);
        rooms.create(input("second", "public", None)).unwrap();
        let (_ann, _) = member(&rooms, 1, "ann");
        let bell = Arc::new(Bell::new().unwrap());
        let _watcher = attach(&rooms, 1, 2, &bell).unwrap();
        let counts = rooms.counts();
        assert_eq!((counts.rooms, counts.users_joined), (2, 1));
    }
}
