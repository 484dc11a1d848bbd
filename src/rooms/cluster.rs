//! The room map with several nodes: rooms, presence and history read through to Redis
//! (`redis_link`), and a local [`Room`] per room that has sockets on this node, filled from
//! the subscription.
//!
//! # Why read-through, not a cache
//! SPEC asks that a room created, changed or deleted on one node is seen *at once* on every
//! node. A local cache invalidated by a channel would be stale for as long as the message
//! takes to arrive, so a client answered 201 by one node could get 404 from the next. So
//! every REST read asks Redis (one round trip, a fraction of a millisecond on a LAN), and
//! this node keeps only what delivery needs: the local rooms, their sockets and feeds.
//!
//! # One order, and where each step runs
//! A join or send is checked under the local room's lock (`subscription`: `Live::begin_join`,
//! `begin_send`: the name, the feed's room for it), run as a script in Redis with no lock
//! held, and comes back through the subscription to every node, the speaker's included
//! ([`Listener::deliver`] -> `subscription`'s `Live::deliver`). Leaves are published the same way
//! (`fanout`'s `push_leave`). So the order every socket sees is the channel's.
//!
//! # Failure
//! When the link is lost ([`Listener::lost`]), every local room is closed: its sockets get
//! 1012, because events published while the subscription was broken would be missing
//! from their feeds. REST calls answer 503 with code 605 until the link is back.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::{ApiError, ErrorKind};
use crate::event::{as_replay, join_message, leave_message, EventType, ServerEvent};
use crate::path::RoomRef;
use crate::redis_link::{Down, Kind, Link, Listener, Refused, RoomRead, StoredMember, StoredRoom};
use crate::sync::{read, write};

use super::catalog::Info;
use super::room::{CloseReason, Joined, Refusal, Room, Services, Subscriber};
use super::view::{RoomKey, RoomView, UserView, Visibility};

/// This node's side of a chat served by several nodes. See the module docs.
pub struct Cluster {
    pub(super) link: Arc<Link>,
    /// The rooms that have sockets on this node, by id. A room's lock may be taken inside
    /// this one, never the reverse (the lock rules of `rooms`).
    local: RwLock<HashMap<u64, Arc<Room>>>,
    feed_len: usize,
    history_len: usize,
    /// The after-lock work of its local rooms: the waker thread, and no store.
    services: Services,
}

/// 605: Redis cannot be used now.
pub(super) fn unavailable() -> ApiError {
    ApiError::new(ErrorKind::StorageUnavailable)
}

impl From<Down> for ApiError {
    fn from(_: Down) -> ApiError {
        unavailable()
    }
}

impl Cluster {
    /// Connects to `url` (waiting briefly for the first connection) and starts the
    /// subscription. Fails only on a URL the client cannot use or a thread that cannot start.
    pub fn start(
        url: &str,
        presence_ttl: Duration,
        feed_len: usize,
        history_len: usize,
        services: Services,
    ) -> Result<Arc<Cluster>, String> {
        let node = random_node_id().map_err(|e| format!("cannot make a node id: {e}"))?;
        log::info!("node {node}: rooms, history and presence are in Redis; db_path is not used");
        let link = Link::new(url, presence_ttl, history_len, node)?;
        let cluster = Arc::new(Cluster {
            link: Arc::clone(&link),
            local: RwLock::new(HashMap::new()),
            feed_len,
            history_len,
            services,
        });
        let listener: Arc<dyn Listener> = cluster.clone();
        link.start(Arc::downgrade(&listener))
            .map_err(|e| format!("cannot start the Redis subscriber: {e}"))?;
        Ok(cluster)
    }

    /// Whether Redis can be used now.
    pub fn backend_up(&self) -> bool {
        self.link.is_up()
    }

    /// Stops the subscription and retires this node's remaining members.
    pub fn close(&self) {
        self.link.shutdown();
    }

    /// The room `room_ref` names, as Redis has it now: 101 if none, 605 if Redis is down.
    pub(super) fn find(&self, room_ref: &RoomRef) -> Result<RoomRead, ApiError> {
        let found = match room_ref {
            RoomRef::Id(id) => self.link.room(*id)?,
            RoomRef::Title(title) => self.link.room_by_title(&title.trim().to_lowercase())?,
        };
        found.ok_or_else(super::catalog::not_found)
    }

    /// Every room except hidden ones; users for public rooms only (as on one node).
    pub(super) fn list(&self) -> Result<Vec<RoomView>, ApiError> {
        let listed: Vec<Info> = self
            .link
            .rooms()?
            .iter()
            .map(info)
            .filter(|info| !matches!(info, Ok(i) if i.visibility == Visibility::Hidden))
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

    pub(super) fn key(&self, room_ref: &RoomRef) -> Result<RoomKey, ApiError> {
        let info = info(&self.find(room_ref)?)?;
        Ok(RoomKey {
            id: info.id,
            visibility: info.visibility,
            password_hash: info.password_hash,
        })
    }

    pub(super) fn view(&self, id: u64, with_users: bool) -> Result<RoomView, ApiError> {
        let info = info(&self.find(&RoomRef::Id(id))?)?;
        self.view_of(&info, with_users)
    }

    /// `info` as clients see it, with the members Redis lists on every node.
    pub(super) fn view_of(&self, info: &Info, with_users: bool) -> Result<RoomView, ApiError> {
        let users = match with_users {
            true => Some(self.link.members(info.id)?),
            false => None,
        };
        Ok(view(info, users))
    }

    pub(super) fn messages(
        &self,
        id: u64,
        since: u64,
        limit: usize,
    ) -> Result<Vec<Arc<str>>, ApiError> {
        self.find(&RoomRef::Id(id))?;
        let kept = self.link.history(id, since)?;
        let skip = kept.len().saturating_sub(limit);
        Ok(kept.into_iter().skip(skip).map(Arc::from).collect())
    }

    /// Connects socket `session` to room `id` on this node. The socket is in the local room
    /// before Redis is asked whether the room exists, so a delete from then on reaches it.
    pub(super) fn attach(
        &self,
        id: u64,
        session: u64,
        subscriber: Arc<dyn Subscriber>,
    ) -> Result<Arc<Room>, ApiError> {
        if !self.link.is_up() {
            return Err(unavailable());
        }
        let room = {
            let mut local = write(&self.local);
            let room = local
                .entry(id)
                .or_insert_with(|| {
                    Arc::new(Room::new(
                        Info::placeholder(id),
                        Vec::new(),
                        0,
                        self.feed_len,
                        self.history_len,
                        Some(Arc::clone(&self.link)),
                    ))
                })
                .clone();
            // Under the map's lock, so `forget` cannot drop the room in between.
            room.with_live(&self.services, |live, _| live.attach(session, subscriber))?;
            room
        };
        let exists = self.link.room(id);
        if !matches!(exists, Ok(Some(_))) {
            room.with_live(&self.services, |live, after| live.detach(session, after));
            self.forget(&room);
            return Err(match exists {
                Err(Down) => unavailable(),
                _ => super::catalog::not_found(),
            });
        }
        Ok(room)
    }

    /// Drops the local room once its last socket has gone.
    pub(super) fn forget(&self, room: &Arc<Room>) {
        let mut local = write(&self.local);
        let same = local.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room));
        if same && room.is_idle() {
            local.remove(&room.id);
        }
    }

    /// Takes `name` in `room` across every node, then replays what was kept above `since`.
    pub(super) fn join(
        &self,
        room: &Room,
        session: u64,
        name: &str,
        color: &str,
        since: Option<u64>,
    ) -> Result<Joined, Refusal> {
        let member = room.with_live(&self.services, |live, after| {
            live.begin_join(session, name, color, after)
        })?;
        let join_text = event_text(
            room.id,
            EventType::Join,
            name,
            color,
            &join_message(name),
            &member.last_activity,
        );
        // The leave up to its time: a reaper on another node finishes it (`redis_link`).
        let leave_text = event_text(
            room.id,
            EventType::Leave,
            name,
            color,
            &leave_message(name),
            "",
        );
        let leave_head = leave_text.strip_suffix("\"}").unwrap_or(&leave_text);
        let stored = StoredMember {
            username: member.username.clone(),
            color: member.color.clone(),
            last_activity: member.last_activity.clone(),
            owner: self.link.owner(session),
        };
        let lower = name.to_lowercase();
        match self.link.join(
            room.id,
            &lower,
            &stored,
            leave_head,
            since.unwrap_or(0),
            &join_text,
        ) {
            Ok(replay) => Ok(Joined {
                replay: replay.iter().map(|text| as_replay(text)).collect(),
                cursor: None,
            }),
            Err(refused) => {
                room.with_live(&self.services, |live, _| live.undo_join(session));
                Err(match refused {
                    Refused::Taken => ApiError::field(ErrorKind::DuplicateUsername, "name"),
                    Refused::Gone => super::catalog::not_found(),
                    _ => unavailable(),
                }
                .into())
            }
        }
    }

    /// Publishes `msg` under the socket's name; Redis gives it its id.
    pub(super) fn send(&self, room: &Room, session: u64, msg: &str) -> Result<u64, Refusal> {
        let member = room.with_live(&self.services, |live, after| {
            live.begin_send(session, after)
        })?;
        let text = event_text(
            room.id,
            EventType::Send,
            &member.username,
            &member.color,
            msg,
            &member.last_activity,
        );
        let stored = StoredMember {
            username: member.username.clone(),
            color: member.color,
            last_activity: member.last_activity,
            owner: self.link.owner(session),
        };
        self.link
            .send(room.id, &member.username.to_lowercase(), &stored, &text)
            .map_err(|refused| match refused {
                Refused::Down => unavailable().into(),
                _ => ApiError::new(ErrorKind::UserNotFound).into(),
            })
    }
}

impl Listener for Cluster {
    fn deliver(&self, room_id: u64, kind: Kind, origin: Option<u64>, text: &str) {
        if kind == Kind::Deleted {
            let room = write(&self.local).remove(&room_id);
            if let Some(room) = room {
                room.with_live(&self.services, |live, after| live.close_all(after));
            }
            return;
        }
        let room = read(&self.local).get(&room_id).cloned();
        if let Some(room) = room {
            room.with_live(&self.services, |live, after| {
                live.deliver(kind, origin, text, after)
            });
        }
    }

    fn lost(&self) {
        let rooms: Vec<Arc<Room>> = write(&self.local).drain().map(|(_, r)| r).collect();
        for room in rooms {
            room.with_live(&self.services, |live, after| {
                live.close_all_for(CloseReason::BackendLost, after)
            });
        }
    }
}

/// A stored room as the catalogue's `Info`; a visibility this build does not know is a 605
/// (another version wrote it), logged.
pub(super) fn info(read: &RoomRead) -> Result<Info, ApiError> {
    let room: &StoredRoom = &read.room;
    let visibility = Visibility::parse(&room.visibility).ok_or_else(|| {
        log::error!(
            "Redis: room {} has an unknown visibility {:?}",
            read.id,
            room.visibility
        );
        unavailable()
    })?;
    Ok(Info {
        id: read.id,
        title: room.title.clone(),
        description: room.description.clone(),
        visibility,
        password_hash: room.password_hash.clone(),
        created_at: room.created_at.clone(),
        updated_at: room.updated_at.clone(),
        revision: 0,
    })
}

/// `info` as clients see it, with `users` when they may see them.
pub(super) fn view(info: &Info, users: Option<Vec<StoredMember>>) -> RoomView {
    info.view(users.map(|members| {
        members
            .into_iter()
            .map(|m| UserView {
                username: m.username,
                color: m.color,
                last_activity: m.last_activity,
            })
            .collect()
    }))
}

/// `info` as Redis keeps it.
pub(super) fn stored(info: &Info) -> StoredRoom {
    StoredRoom {
        title: info.title.clone(),
        description: info.description.clone(),
        visibility: info.visibility.as_str().into(),
        password_hash: info.password_hash.clone(),
        created_at: info.created_at.clone(),
        updated_at: info.updated_at.clone(),
    }
}

/// One event of room `room_id` as broadcast (without an id: a send's id is spliced in by
/// Redis).
fn event_text(
    room_id: u64,
    event_type: EventType,
    name: &str,
    color: &str,
    msg: &str,
    time: &str,
) -> String {
    ServerEvent {
        event_type,
        name,
        color,
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
