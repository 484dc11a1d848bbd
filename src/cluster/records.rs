//! Rooms in Redis: reading them, and creating, updating and deleting them through the
//! scripts; members, history and counts as the REST side reads them; and the conversions
//! between a room as Redis keeps it and as the rest of the server sees it.

use std::collections::HashMap;

use super::link::unavailable;
use crate::error::ApiError;
use crate::rooms::{Info, RoomView, UserView, Visibility};

use super::link::{channel, key, Down, Link, Refused, RoomRead, StoredMember, StoredRoom, PREFIX};

impl Link {
    /// Every room, by id.
    pub fn rooms(&self) -> Result<Vec<RoomRead>, Down> {
        let all: HashMap<String, String> =
            self.command(|c| redis::cmd("HGETALL").arg(key("rooms")).query(c))?;
        let mut rooms: Vec<RoomRead> = all
            .into_iter()
            .filter_map(|(id, raw)| parse_room(&id, raw))
            .collect();
        rooms.sort_by_key(|r| r.id);
        Ok(rooms)
    }

    /// Room `id`, if it exists.
    pub fn room(&self, id: u64) -> Result<Option<RoomRead>, Down> {
        let raw: Option<String> =
            self.command(|c| redis::cmd("HGET").arg(key("rooms")).arg(id).query(c))?;
        Ok(raw.and_then(|raw| parse_room(&id.to_string(), raw)))
    }

    /// The room titled `lower` (lower-cased), if one is.
    pub fn room_by_title(&self, lower: &str) -> Result<Option<RoomRead>, Down> {
        let id: Option<u64> =
            self.command(|c| redis::cmd("HGET").arg(key("titles")).arg(lower).query(c))?;
        match id {
            Some(id) => self.room(id),
            None => Ok(None),
        }
    }

    /// Adds a room titled `lower` (lower-cased); returns its new id.
    pub fn create_room(
        &self,
        lower: &str,
        room: &StoredRoom,
        max_rooms: usize,
    ) -> Result<u64, Refused> {
        let json = serde_json::to_string(room).expect("a StoredRoom serialises");
        let id: i64 = self.command(|c| {
            self.scripts
                .create
                .key(key("next_room_id"))
                .key(key("rooms"))
                .key(key("titles"))
                .arg(lower)
                .arg(&json)
                .arg(max_rooms)
                .invoke(c)
        })?;
        match id {
            0 => Err(Refused::Taken),
            -1 => Err(Refused::Full),
            id => u64::try_from(id).map_err(|_| Refused::Down),
        }
    }

    /// Replaces room `before` with `room`, if nobody changed it meanwhile; when
    /// `access_changed`, tells every node to close the room's sockets.
    pub fn update_room(
        &self,
        before: &RoomRead,
        old_lower: &str,
        new_lower: &str,
        room: &StoredRoom,
        access_changed: bool,
    ) -> Result<(), Refused> {
        let json = serde_json::to_string(room).expect("a StoredRoom serialises");
        let notify = match access_changed {
            true => channel(before.id),
            false => String::new(),
        };
        let done: i64 = self.command(|c| {
            self.scripts
                .update
                .key(key("rooms"))
                .key(key("titles"))
                .arg(before.id)
                .arg(&before.raw)
                .arg(&json)
                .arg(old_lower)
                .arg(new_lower)
                .arg(&notify)
                .invoke(c)
        })?;
        match done {
            1 => Ok(()),
            0 => Err(Refused::Changed),
            -2 => Err(Refused::Taken),
            _ => Err(Refused::Gone),
        }
    }

    /// Deletes room `before` (titled `lower`) with its members and history, and tells every
    /// node to close its sockets.
    pub fn delete_room(&self, before: &RoomRead, lower: &str) -> Result<(), Refused> {
        let id = before.id;
        let done: i64 = self.command(|c| {
            self.scripts
                .delete
                .key(key("rooms"))
                .key(key("titles"))
                .key(key(&format!("history:{id}")))
                .key(key(&format!("msgid:{id}")))
                .key(key(&format!("members:{id}")))
                .arg(id)
                .arg(&before.raw)
                .arg(lower)
                .arg(channel(id))
                .arg(PREFIX)
                .invoke(c)
        })?;
        match done {
            1 => Ok(()),
            0 => Err(Refused::Changed),
            _ => Err(Refused::Gone),
        }
    }

    /// Room `id`'s members, by name.
    pub fn members(&self, id: u64) -> Result<Vec<StoredMember>, Down> {
        Ok(self.members_of(&[id])?.pop().unwrap_or_default())
    }

    /// The members of each room of `ids`, by name, in one round trip (for a listing).
    pub fn members_of(&self, ids: &[u64]) -> Result<Vec<Vec<StoredMember>>, Down> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HVALS").arg(key(&format!("members:{id}")));
        }
        let all: Vec<Vec<String>> = self.command(|c| pipe.query(c))?;
        Ok(all
            .into_iter()
            .map(|room| {
                let mut members: Vec<StoredMember> = room
                    .iter()
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect();
                members.sort_by(|a, b| a.username.cmp(&b.username));
                members
            })
            .collect())
    }

    /// How many rooms exist, and how many names are joined in all of them (every node's),
    /// for `/metrics`: two round trips.
    pub fn counts(&self) -> Result<(usize, usize), Down> {
        let ids: Vec<String> = self.command(|c| redis::cmd("HKEYS").arg(key("rooms")).query(c))?;
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HLEN").arg(key(&format!("members:{id}")));
        }
        let members: Vec<usize> = self.command(|c| pipe.query(c))?;
        Ok((ids.len(), members.iter().sum()))
    }

    /// Room `id`'s kept messages with an id above `since`, oldest first.
    pub fn history(&self, id: u64, since: u64) -> Result<Vec<String>, Down> {
        self.command(|c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(key(&format!("history:{id}")))
                .arg(format!("({since}"))
                .arg("+inf")
                .query(c)
        })
    }
}

fn parse_room(id: &str, raw: String) -> Option<RoomRead> {
    let id = id.parse().ok()?;
    let room = serde_json::from_str(&raw).ok()?;
    Some(RoomRead { id, room, raw })
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
