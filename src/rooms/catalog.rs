//! The catalogue: creating, changing and deleting rooms, with validation and the order
//! of disk and memory.
//!
//! Every change is written to the store *first*, under the writers' lock
//! ([`RoomMap::writes`](super::RoomMap)) only, and applied to memory afterwards under the
//! short locks: a 201 or 200 means the change is on disk, a failed write changes nothing
//! (503, code 605), and the database sees changes in the order memory does. Chat never
//! takes the writers' lock, so a slow disk delays the next room change, never a message.
//!
//! bcrypt runs before any lock. An update reads the room's revision, hashes, then applies
//! its change only if the revision is still the one it read; otherwise it starts again
//! from the new state, so two concurrent PUTs both take effect, one after the other, and
//! neither silently reverts the other's password or visibility.

use std::sync::Arc;

use serde::Deserialize;

use crate::clock::now_rfc3339;
use crate::error::{ApiError, ErrorKind};
use crate::path::RoomRef;
use crate::redis_link::Refused;
use crate::store::{RoomRecord, StoreError};
use crate::sync::{lock, read, write};

use super::cluster::{self, Cluster};
use super::room::{Aftermath, Room};
use super::view::{RoomView, UserView, Visibility};
use super::RoomMap;

/// Title length bounds, in characters after trimming (SPEC, Rooms).
pub const TITLE_CHARS: std::ops::RangeInclusive<usize> = 2..=70;
/// The longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 70;
/// The shortest password of a private or hidden room, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than cut silently.
pub const MAX_PASSWORD_BYTES: usize = 72;
/// How often an update starts again because another changed the room meanwhile, before
/// it gives up (each try may hash a password).
const UPDATE_TRIES: usize = 8;

/// A room's stored description. Never serialised: see `view`.
#[derive(Debug, Clone)]
pub struct Info {
    pub id: u64,
    pub title: String,
    pub description: String,
    pub visibility: Visibility,
    /// bcrypt hash of the password; `Some` exactly when the room is private or hidden.
    pub password_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Counts the changes made in this process, so an update can tell whether the room
    /// changed while it was hashing.
    pub revision: u64,
}

impl Info {
    /// A room read back from the database.
    pub fn restore(record: RoomRecord) -> Result<Info, String> {
        let visibility = Visibility::parse(&record.visibility).ok_or_else(|| {
            format!(
                "room {} has an unknown visibility {:?}",
                record.id, record.visibility
            )
        })?;
        Ok(Info {
            id: record.id,
            title: record.title,
            description: record.description,
            visibility,
            password_hash: record.password_hash,
            created_at: record.created_at,
            updated_at: record.updated_at,
            revision: 0,
        })
    }

    /// The room as clients see it, with `users` when they may see them.
    pub(super) fn view(&self, users: Option<Vec<UserView>>) -> RoomView {
        RoomView {
            id: self.id,
            title: self.title.clone(),
            description: self.description.clone(),
            visibility: self.visibility,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            users,
        }
    }

    /// Several nodes: the local stand-in of room `id`, which only delivers events; the room's
    /// description is read from Redis.
    pub(super) fn placeholder(id: u64) -> Info {
        Info {
            id,
            title: String::new(),
            description: String::new(),
            visibility: Visibility::Public,
            password_hash: None,
            created_at: String::new(),
            updated_at: String::new(),
            revision: 0,
        }
    }

    /// The room as the database stores it.
    pub(super) fn record(&self) -> RoomRecord {
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
}

/// An update's validated fields.
struct Patch {
    title: Option<String>,
    description: Option<String>,
    visibility: Option<Visibility>,
    password: Option<String>,
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

impl RoomMap {
    /// Validates `input`, hashes its password (before any lock), saves the room, then adds
    /// it. Its id is the next of a counter that only grows (SPEC, Rooms: ids are never
    /// reused).
    pub fn create(&self, input: RoomInput) -> Result<RoomView, ApiError> {
        let title = validate_title(input.title.as_deref())?;
        let description = validate_description(input.description.as_deref())?;
        let visibility = validate_visibility(input.visibility.as_deref())?;
        let password_hash = self.hash_for(visibility, input.password.as_deref(), None)?;
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
        if let Some(cluster) = &self.cluster {
            // The title check and the id are one script: unique across nodes (SPEC).
            let lower = info.title.to_lowercase();
            info.id = cluster
                .link
                .create_room(&lower, &cluster::stored(&info))
                .map_err(|refused| match refused {
                    Refused::Taken => ApiError::field(ErrorKind::DuplicateRoom, "title"),
                    _ => cluster::unavailable(),
                })?;
            // A new room has nobody in it: no need to ask.
            let users = (visibility == Visibility::Public).then(Vec::new);
            return Ok(cluster::view(&info, users));
        }
        let _writing = lock(&self.writes);
        let id = {
            let index = read(&self.index);
            index.check_title_free(&info.title, None)?;
            index.next_id
        };
        info.id = id;
        self.services
            .store
            .save_room(&info.record(), id + 1)
            .map_err(unsaved)?;
        let room = self.new_room(info, Vec::new(), 0);
        // The creator holds no token yet: a private room's users are not shown (there are none).
        let view = room.with_live(&self.services, |live, _| {
            live.view(visibility == Visibility::Public)
        });
        write(&self.index).insert(room);
        Ok(view)
    }

    /// Applies the fields present in `input` to room `id`. A new password is hashed before
    /// any lock; changing it (or the visibility) changes the room's token key, so tokens
    /// issued before stop working.
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
        let patch = Patch {
            title,
            description,
            visibility,
            password: input.password,
        };
        if let Some(cluster) = &self.cluster {
            return self.update_shared(cluster, id, &patch);
        }
        let Patch {
            title,
            description,
            visibility,
            password,
        } = patch;
        let room = self.room(id)?;
        for _ in 0..UPDATE_TRIES {
            let current = room.with_live(&self.services, |live, _| live.info.clone());
            let new_visibility = visibility.unwrap_or(current.visibility);
            let password_hash = self.hash_for(
                new_visibility,
                password.as_deref(),
                current.password_hash.clone(),
            )?;
            let _writing = lock(&self.writes);
            let (revision, deleted) =
                room.with_live(&self.services, |live, _| (live.info.revision, live.deleted));
            if deleted {
                return Err(not_found());
            }
            if revision != current.revision {
                continue;
            }
            if let Some(title) = &title {
                read(&self.index).check_title_free(title, Some(id))?;
            }
            let mut info = current;
            if let Some(title) = &title {
                info.title.clone_from(title);
            }
            if let Some(description) = &description {
                info.description.clone_from(description);
            }
            info.visibility = new_visibility;
            info.password_hash = password_hash;
            info.updated_at = now_rfc3339();
            info.revision += 1;
            let next_id = read(&self.index).next_id;
            self.services
                .store
                .save_room(&info.record(), next_id)
                .map_err(unsaved)?;
            let old_title = room.with_live(&self.services, |live, _| {
                std::mem::replace(&mut live.info, info.clone()).title
            });
            if old_title != info.title {
                write(&self.index).retitle(&old_title, &info.title, id);
            }
            return Ok(room.with_live(&self.services, |live, _| live.view(true)));
        }
        log::warn!("room {id}: {UPDATE_TRIES} concurrent updates in a row; this one gave up");
        Err(ApiError::new(ErrorKind::StorageUnavailable))
    }

    /// Several nodes: `update` through Redis. The script applies the change only if the
    /// room is still as read (else this starts again), and keeps titles unique.
    fn update_shared(
        &self,
        cluster: &Cluster,
        id: u64,
        patch: &Patch,
    ) -> Result<RoomView, ApiError> {
        for _ in 0..UPDATE_TRIES {
            let before = cluster.find(&RoomRef::Id(id))?;
            let current = cluster::info(&before)?;
            let new_visibility = patch.visibility.unwrap_or(current.visibility);
            let password_hash = self.hash_for(
                new_visibility,
                patch.password.as_deref(),
                current.password_hash.clone(),
            )?;
            let mut info = current.clone();
            if let Some(title) = &patch.title {
                info.title.clone_from(title);
            }
            if let Some(description) = &patch.description {
                info.description.clone_from(description);
            }
            info.visibility = new_visibility;
            info.password_hash = password_hash;
            info.updated_at = now_rfc3339();
            let (old, new) = (current.title.to_lowercase(), info.title.to_lowercase());
            match cluster
                .link
                .update_room(&before, &old, &new, &cluster::stored(&info))
            {
                Ok(()) => return cluster.view_of(&info, true),
                Err(Refused::Changed) => continue,
                Err(Refused::Taken) => {
                    return Err(ApiError::field(ErrorKind::DuplicateRoom, "title"))
                }
                Err(Refused::Gone) => return Err(not_found()),
                Err(_) => return Err(cluster::unavailable()),
            }
        }
        log::warn!("room {id}: {UPDATE_TRIES} concurrent updates in a row; this one gave up");
        Err(ApiError::new(ErrorKind::StorageUnavailable))
    }

    /// Removes room `id`, on disk first. Its sockets are told (a 101 event, then close
    /// 1001); its id is never reused, and tokens for it die with it (their key included
    /// its id and hash).
    pub fn delete(&self, id: u64) -> Result<(), ApiError> {
        if let Some(cluster) = &self.cluster {
            // Every node closes the room's sockets when the script's `x` event reaches it.
            for _ in 0..UPDATE_TRIES {
                let before = cluster.find(&RoomRef::Id(id))?;
                let lower = before.room.title.to_lowercase();
                match cluster.link.delete_room(&before, &lower) {
                    Ok(()) => return Ok(()),
                    Err(Refused::Changed) => continue,
                    Err(Refused::Gone) => return Err(not_found()),
                    Err(_) => return Err(cluster::unavailable()),
                }
            }
            return Err(ApiError::new(ErrorKind::StorageUnavailable));
        }
        let _writing = lock(&self.writes);
        let room = self.room(id)?;
        self.services.store.delete_room(id).map_err(unsaved)?;
        let title = room.with_live(&self.services, |live, after: &mut Aftermath| {
            live.close_all(after);
            live.info.title.clone()
        });
        write(&self.index).remove(id, &title);
        Ok(())
    }

    /// The room's hash for `visibility`: `None` for public rooms (which must not be given a
    /// password), a fresh hash of `password`, or `current` kept.
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
                // A full bcrypt queue is 604 (`?`); bcrypt refusing the password, 105.
                self.hasher
                    .hash(password)?
                    .map(Some)
                    .ok_or_else(|| invalid("password"))
            }
            (_, None) => current.map(Some).ok_or_else(|| invalid("password")),
        }
    }

    /// A room for the map, with this map's feed and history sizes.
    pub(super) fn new_room(
        &self,
        info: Info,
        history: Vec<(u64, Arc<str>)>,
        last_message_id: u64,
    ) -> Arc<Room> {
        Arc::new(Room::new(
            info,
            history,
            last_message_id,
            self.feed_len,
            self.history_len,
            None,
        ))
    }
}

pub(super) fn not_found() -> ApiError {
    ApiError::new(ErrorKind::RoomNotFound)
}

/// A database write failed: the operator is told (it is their disk), the client gets a 503
/// with code 605 and may retry, and the change has not been made (see the module docs).
fn unsaved(error: StoreError) -> ApiError {
    log::error!("{error}");
    ApiError::new(ErrorKind::StorageUnavailable)
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

    #[test]
    fn titles_are_checked() {
        assert_eq!(validate_title(Some("  ab  ")).unwrap(), "ab");
        for bad in [None, Some("a"), Some("12345"), Some(&*"x".repeat(71))] {
            assert_eq!(validate_title(bad).unwrap_err().field, Some("title"));
        }
    }

    #[test]
    fn descriptions_and_visibilities_are_checked() {
        assert_eq!(validate_description(None).unwrap(), "");
        assert!(validate_description(Some(&"é".repeat(71))).is_err());
        assert_eq!(
            validate_visibility(Some("HIDDEN")).unwrap(),
            Visibility::Hidden
        );
        assert_eq!(
            validate_visibility(Some("secret")).unwrap_err().field,
            Some("visibility")
        );
    }
}
