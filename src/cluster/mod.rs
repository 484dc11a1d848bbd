//! Several nodes (SPEC, "Several nodes (Redis)"): the backend that keeps rooms, ids,
//! history, presence and each room's order in Redis, so that any number of nodes serve one
//! chat. Everything Redis is in this folder; a reader of one node never needs to open it.
//!
//! [`Cluster`] answers the same questions as the one-node `rooms::RoomMap` (it implements
//! `rooms::Rooms`), and delivers through the same `rooms::Room`: a node keeps a local room
//! for each room that has sockets on it, only to hand events to them.
//!
//! Layout of `cluster/`, in reading order:
//! - this file: [`Cluster`], the room map's answers read through to Redis, and the steps
//!   of a join, send or leave around its script;
//! - `link`: the connection pool, up and down, the keys and types;
//! - `records`: rooms, members and history as Redis keeps them, and their conversions;
//! - `chat`: the join, send and leave scripts' calls;
//! - `subscriber`: the subscriber thread: subscription, heartbeat, reaping, reconnecting;
//! - `scripts`: the Lua scripts.
//!
//! # Why read-through, not a cache
//! SPEC asks that a room created, changed or deleted on one node is seen *at once* on every
//! node. A local cache invalidated by a channel would be stale for as long as the message
//! takes to arrive, so a client answered 201 by one node could get 404 from the next. So
//! every REST read asks Redis (one round trip), and a node keeps only what delivery needs.
//!
//! # One order, and where each step runs
//! A join or send is checked under the local room's lock (the name, room in every local
//! member's channel), run as a script in Redis with no lock held, and comes back through
//! the subscription to every node, the speaker's included ([`Listener::deliver`] ->
//! `RoomState::deliver`). Leaves are published the same way, by the leaving socket's own
//! thread. So the order every socket sees is the channel's, and the subscriber thread,
//! which serves every room, never makes a Redis call or waits.
//!
//! # Failure
//! When the link is lost ([`Listener::lost`]), every local room is closed: its sockets get
//! 1012, because events published while the subscription was broken would be missing
//! from their channels. REST calls answer 503 with code 605 until the link is back.

mod chat;
mod link;
mod records;
mod scripts;
mod subscriber;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::event::{as_replay, join_message, leave_message, EventType, ServerEvent};
use crate::hasher::Hasher;
use crate::metrics::CloseReason;
use crate::path::RoomRef;
use crate::rooms::{
    hash_for, Bell, Bounds, Counts, Info, Joined, Member, Page, Refusal, Room, RoomInput, RoomKey,
    RoomView, Rooms, Visibility, Waker,
};
use crate::sync::{read, write};

use link::{unavailable, Down, Kind, Link, Listener, Refused, RoomRead, StoredMember};
use records::{info, stored, view};

/// How often a change starts again because another node changed the room meanwhile.
const CHANGE_TRIES: usize = 8;

/// This node's side of a chat served by several nodes. See the module docs.
pub struct Cluster {
    link: Arc<Link>,
    /// The rooms that have sockets on this node, by id. A room's lock may be taken inside
    /// this one, never the reverse.
    local: RwLock<HashMap<u64, Arc<Room>>>,
    /// Hashes room passwords, on threads of its own.
    hasher: Hasher,
    /// The channels' bound and the room count's (histories are Redis's).
    bounds: Bounds,
    /// Rings the local members of chat messages (see `rooms::Waker`): the subscriber
    /// thread, which serves every room, must not ring each member itself.
    waker: Waker,
}

fn not_found() -> ApiError {
    ApiError::new(ErrorKind::RoomNotFound)
}

impl Cluster {
    /// Connects to `url` (waiting briefly for the first connection) and starts the
    /// subscription. Fails only on a URL the client cannot use or a thread that cannot start.
    pub fn start(
        url: &str,
        presence_ttl: Duration,
        hasher: Hasher,
        bounds: Bounds,
    ) -> Result<Arc<Cluster>, String> {
        let node = random_node_id().map_err(|e| format!("cannot make a node id: {e}"))?;
        log::info!("node {node}: rooms, history and presence are in Redis; db_path is not used");
        let link = Link::new(url, presence_ttl, bounds.history_len, node)?;
        let waker =
            Waker::start().map_err(|e| format!("cannot start the room waker thread: {e}"))?;
        let cluster = Arc::new(Cluster {
            link: Arc::clone(&link),
            local: RwLock::new(HashMap::new()),
            hasher,
            bounds,
            waker,
        });
        let listener: Arc<dyn Listener> = cluster.clone();
        link.start(Arc::downgrade(&listener))
            .map_err(|e| format!("cannot start the Redis subscriber: {e}"))?;
        Ok(cluster)
    }

    /// The room `room_ref` names, as Redis has it now: 101 if none, 605 if Redis is down.
    fn find(&self, room_ref: &RoomRef) -> Result<RoomRead, ApiError> {
        let found = match room_ref {
            RoomRef::Id(id) => self.link.room(*id)?,
            RoomRef::Title(title) => self.link.room_by_title(&title.trim().to_lowercase())?,
        };
        found.ok_or_else(not_found)
    }

    /// `info` as clients see it, with the members Redis lists on every node.
    fn view_of(&self, info: &Info, with_users: bool) -> Result<RoomView, ApiError> {
        let users = match with_users {
            true => Some(self.link.members(info.id)?),
            false => None,
        };
        Ok(view(info, users))
    }

    /// Drops the local room once its last socket has gone.
    fn forget(&self, room: &Arc<Room>) {
        let mut local = write(&self.local);
        let same = local.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room));
        if same && room.locked(|state, _| state.is_empty()) {
            local.remove(&room.id);
        }
    }

    /// Publishes `member`'s leave of `room` (their name, held by socket `session`). Refused:
    /// the name was reaped or the room deleted; down: the link's recovery retires this
    /// node's members. Either way nothing is left to do.
    fn publish_leave(&self, room: &Room, session: u64, member: &Member) {
        let text = event_text(
            room.id,
            EventType::Leave,
            member,
            &leave_message(&member.username),
            &now_rfc3339(),
        );
        let lower = member.username.to_lowercase();
        let _ = self
            .link
            .leave(room.id, &lower, &self.link.owner(session), &text);
    }

    /// `member` as Redis keeps it, held by socket `session`.
    fn stored_member(&self, member: &Member, session: u64) -> StoredMember {
        StoredMember {
            username: member.username.clone(),
            color: member.color.clone(),
            last_activity: member.last_activity.clone(),
            owner: self.link.owner(session),
        }
    }
}

impl Rooms for Cluster {
    fn list(&self, page: Page) -> Result<Vec<RoomView>, ApiError> {
        let listed: Vec<Info> = self
            .link
            .rooms()?
            .iter()
            .filter(|read| read.id > page.after)
            .map(info)
            .filter(|info| !matches!(info, Ok(i) if i.visibility == Visibility::Hidden))
            .take(page.limit.unwrap_or(usize::MAX))
            .collect::<Result<_, _>>()?;
        let public: Vec<u64> = listed
            .iter()
            .filter(|i| i.visibility == Visibility::Public)
            .map(|i| i.id)
            .collect();
        let mut members = self.link.members_of(&public)?.into_iter();
        Ok(listed
            .iter()
            .map(|info| {
                let users = (info.visibility == Visibility::Public)
                    .then(|| members.next().unwrap_or_default());
                view(info, users)
            })
            .collect())
    }

    fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError> {
        let info = info(&self.find(room_ref)?)?;
        Ok(RoomKey {
            id: info.id,
            visibility: info.visibility,
            password_hash: info.password_hash,
            created_at: info.created_at,
        })
    }

    fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError> {
        let info = info(&self.find(&RoomRef::Id(id))?)?;
        self.view_of(&info, with_users)
    }

    fn messages(&self, id: u64, since: u64, limit: usize) -> Result<Vec<Arc<String>>, ApiError> {
        self.find(&RoomRef::Id(id))?;
        let kept = self.link.history(id, since)?;
        let skip = kept.len().saturating_sub(limit);
        Ok(kept.into_iter().skip(skip).map(Arc::from).collect())
    }

    /// The title check, the room count and the id are one script: unique across nodes
    /// (SPEC), and `max_rooms` holds for the whole chat.
    fn create(&self, input: RoomInput) -> Result<RoomView, ApiError> {
        let (title, description, visibility) = input.new_room()?;
        let password_hash = hash_for(&self.hasher, visibility, input.password.as_deref(), None)?;
        let now = now_rfc3339();
        let mut info = Info {
            id: 0,
            title,
            description,
            visibility,
            password_hash,
            created_at: now.clone(),
            updated_at: now,
            revision: 0,
        };
        let lower = info.title.to_lowercase();
        let most = self.bounds.max_rooms;
        info.id = self
            .link
            .create_room(&lower, &stored(&info), most)
            .map_err(|refused| match refused {
                Refused::Taken => ApiError::field(ErrorKind::DuplicateRoom, "title"),
                Refused::Full => ApiError::new(ErrorKind::TooManyRooms),
                _ => unavailable(),
            })?;
        // A new room has nobody in it: no need to ask.
        Ok(view(
            &info,
            (visibility == Visibility::Public).then(Vec::new),
        ))
    }

    /// The script applies the change only if the room is still as read (else this starts
    /// again), and keeps titles unique. A new password or visibility closes the room's
    /// sockets on every node, when the script's `a` event reaches each.
    fn update(&self, id: u64, input: RoomInput) -> Result<RoomView, ApiError> {
        let patch = input.patch()?;
        for _ in 0..CHANGE_TRIES {
            let before = self.find(&RoomRef::Id(id))?;
            let current = info(&before)?;
            let info = patch.apply(&current, &self.hasher)?;
            let (old, new) = (current.title.to_lowercase(), info.title.to_lowercase());
            let access_changed = info.access_differs(&current);
            match self
                .link
                .update_room(&before, &old, &new, &stored(&info), access_changed)
            {
                Ok(()) => return self.view_of(&info, true),
                Err(Refused::Changed) => continue,
                Err(Refused::Taken) => {
                    return Err(ApiError::field(ErrorKind::DuplicateRoom, "title"))
                }
                Err(Refused::Gone) => return Err(not_found()),
                Err(_) => return Err(unavailable()),
            }
        }
        log::warn!("room {id}: {CHANGE_TRIES} concurrent updates in a row; this one gave up");
        Err(unavailable())
    }

    /// Every node closes the room's sockets when the script's `x` event reaches it.
    fn delete(&self, id: u64) -> Result<(), ApiError> {
        for _ in 0..CHANGE_TRIES {
            let before = self.find(&RoomRef::Id(id))?;
            let lower = before.room.title.to_lowercase();
            match self.link.delete_room(&before, &lower) {
                Ok(()) => return Ok(()),
                Err(Refused::Changed) => continue,
                Err(Refused::Gone) => return Err(not_found()),
                Err(_) => return Err(unavailable()),
            }
        }
        Err(unavailable())
    }

    /// The socket is in the local room before Redis is asked whether the room exists, so a
    /// delete from then on reaches it.
    fn attach(
        &self,
        id: u64,
        session: u64,
        outbox: Sender<Arc<String>>,
        bell: Arc<Bell>,
    ) -> Result<Arc<Room>, ApiError> {
        if !self.link.is_up() {
            return Err(unavailable());
        }
        let room = {
            let mut local = write(&self.local);
            let room = local
                .entry(id)
                .or_insert_with(|| {
                    let waker = self.waker.clone();
                    let queue_len = self.bounds.queue_len;
                    Arc::new(Room::new(id, Vec::new(), 0, queue_len, 0, waker))
                })
                .clone();
            // Under the map's lock, so `forget` cannot drop the room in between.
            room.locked(|state, _| state.attach(session, outbox, bell))?;
            room
        };
        let exists = self.link.room(id);
        if !matches!(exists, Ok(Some(_))) {
            room.locked(|state, after| state.detach(session, after));
            self.forget(&room);
            return Err(match exists {
                Err(Down) => unavailable(),
                _ => not_found(),
            });
        }
        Ok(room)
    }

    /// The name is checked here and taken across every node by the script, which replays
    /// what was kept above `since`; the socket receives from its join's return on.
    fn join(
        &self,
        room: &Room,
        session: u64,
        name: &str,
        color: &str,
        since: Option<u64>,
    ) -> Result<Joined, Refusal> {
        let member =
            room.locked(|state, after| state.take_name(session, name, color, false, after))?;
        let join_text = event_text(
            room.id,
            EventType::Join,
            &member,
            &join_message(name),
            &member.last_activity,
        );
        // The leave up to its time: a reaper on another node finishes it (`link`).
        let leave_text = event_text(room.id, EventType::Leave, &member, &leave_message(name), "");
        let leave_head = leave_text.strip_suffix("\"}").unwrap_or(&leave_text);
        let stored = self.stored_member(&member, session);
        let since = since.unwrap_or(0);
        let lower = name.to_lowercase();
        match self
            .link
            .join(room.id, &lower, &stored, leave_head, since, &join_text)
        {
            Ok(replay) => Ok(Joined {
                replay: replay.iter().map(|text| as_replay(text)).collect(),
            }),
            Err(refused) => {
                room.locked(|state, _| state.give_up_name(session)).ok();
                Err(match refused {
                    Refused::Taken => ApiError::field(ErrorKind::DuplicateUsername, "name"),
                    Refused::Gone => not_found(),
                    _ => unavailable(),
                }
                .into())
            }
        }
    }

    /// Redis gives the message its id, keeps it and publishes it.
    fn send(&self, room: &Room, session: u64, msg: &str) -> Result<u64, Refusal> {
        let now = now_rfc3339();
        let member = room.locked(|state, after| {
            let member = state.speaker(session, &now)?;
            state.make_space(session, after)?;
            Ok::<_, Refusal>(member)
        })?;
        let text = event_text(room.id, EventType::Send, &member, msg, &now);
        let stored = self.stored_member(&member, session);
        let lower = member.username.to_lowercase();
        self.link
            .send(room.id, &lower, &stored, &text)
            .map_err(|refused| match refused {
                Refused::Down => unavailable().into(),
                _ => ApiError::new(ErrorKind::UserNotFound).into(),
            })
    }

    fn leave(&self, room: &Room, session: u64) -> Result<(), Refusal> {
        let member = room.locked(|state, after| {
            state.speaker(session, &now_rfc3339())?;
            state.make_space(session, after)?;
            Ok::<_, Refusal>(state.give_up_name(session)?)
        })?;
        self.publish_leave(room, session, &member);
        Ok(())
    }

    fn detach(&self, room: &Arc<Room>, session: u64) {
        if let Some(member) = room.locked(|state, after| state.detach(session, after)) {
            self.publish_leave(room, session, &member);
        }
        self.forget(room);
    }

    /// The rooms and joined names of the whole chat, as every node sees them; zeros while
    /// Redis is down (`chitchat_backend_up` says so).
    fn counts(&self) -> Counts {
        let (rooms, users_joined) = self.link.counts().unwrap_or_default();
        Counts {
            rooms,
            users_joined,
            history_queue: 0,
        }
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn close(&self) {
        self.link.shutdown();
    }
}

impl Listener for Cluster {
    fn deliver(&self, room_id: u64, kind: Kind, origin: Option<u64>, text: &str) {
        if kind == Kind::Deleted {
            let room = write(&self.local).remove(&room_id);
            if let Some(room) = room {
                room.locked(|state, after| state.close_all(CloseReason::RoomDeleted, after));
            }
            return;
        }
        let room = read(&self.local).get(&room_id).cloned();
        if kind == Kind::AccessChanged {
            if let Some(room) = room {
                room.locked(|state, after| state.close_each(CloseReason::AccessChanged, after));
            }
            return;
        }
        if let Some(room) = room {
            let text = Arc::new(text.to_owned());
            let joined = origin.filter(|_| kind == Kind::Join);
            room.locked(|state, after| {
                state.deliver(&text, joined, after);
                if kind == Kind::Send {
                    after.wake_later();
                }
            });
        }
    }

    fn lost(&self) {
        let rooms: Vec<Arc<Room>> = write(&self.local).drain().map(|(_, r)| r).collect();
        for room in rooms {
            room.locked(|state, after| state.close_all(CloseReason::Backend, after));
        }
    }
}

/// One event of room `room_id` as broadcast (without an id: a send's id is spliced in by
/// Redis).
fn event_text(
    room_id: u64,
    event_type: EventType,
    member: &Member,
    msg: &str,
    time: &str,
) -> String {
    ServerEvent {
        event_type,
        name: &member.username,
        color: &member.color,
        msg,
        room_id,
        time,
        id: None,
    }
    .to_text()
}

/// 8 random bytes from the OS, hex-encoded: unique enough among a chat's nodes.
fn random_node_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
