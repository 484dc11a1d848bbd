//! The database seam: what the room map saves and reads back (rooms, the room id counter
//! and each room's recent messages), behind the [`Store`] trait, so that a restart keeps
//! them and another backend can plug in.
//!
//! [`crate::rooms`] keeps the working set in memory and is this module's only caller. This
//! file owns the trait, the types that cross it, [`NoStore`] and [`open`]; `sqlite` owns
//! the SQLite handle, its writer thread and its health; `schema` opens a file: its lock,
//! checks, migrations and what is loaded at start. Only these two know SQL. The store offers:
//! - [`open`]: open or create the file, check it, bring its schema up to date, and
//!   load everything ([`Saved`]) for the room map to start from;
//! - [`Store::save_room`] and [`Store::delete_room`]: synchronous, one small transaction
//!   each, committed before the caller answers, so a `201 Created` means the room is on disk;
//! - [`Store::append_message`]: queues a broadcast `send` event (with its message id) for
//!   the message writer thread and returns at once, without touching the disk;
//! - [`Store::close`]: writes out what is still queued, stops the writer, and folds the WAL
//!   back into the main file;
//! - [`Store::is_up`]: whether the database takes writes, for `/healthz` and `/metrics`.
//!
//! `db_path: null` gives a store without a file: every call succeeds and does nothing, and
//! history lives in the room map's memory only.

mod schema;
mod sqlite;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A room as stored. The room map converts it to and from its own `Room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    pub id: u64,
    pub title: String,
    pub description: String,
    /// `public`, `private` or `hidden`.
    pub visibility: String,
    /// The bcrypt hash: kept, so tokens issued before a restart stay valid.
    pub password_hash: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A room as read back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRoom {
    pub room: RoomRecord,
    /// The id of the room's last message written.
    pub last_message_id: u64,
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Saved {
    /// The next room id to hand out; `None` for a new, empty database.
    pub next_id: Option<u64>,
    /// Every room, by id.
    pub rooms: Vec<SavedRoom>,
    /// Each room's last `history_len` `send` events with their ids, oldest first.
    pub history: HashMap<u64, Vec<(u64, Arc<String>)>>,
}

/// Why the database could not be used. The message names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong, in a few words.
    pub problem: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "database {}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for StoreError {}

/// Where the room map saves rooms and history. See the module docs for what each call
/// promises; every implementation keeps those promises.
pub trait Store: Send + Sync {
    /// Saves `room` (new or changed) and the room id counter, before the caller answers.
    fn save_room(&self, room: &RoomRecord, next_id: u64) -> Result<(), StoreError>;
    /// Deletes room `id` and its history, before the caller answers.
    fn delete_room(&self, id: u64) -> Result<(), StoreError>;
    /// Queues message `msg_id` of room `room_id` (a broadcast `send` event) for the saved
    /// history. Never blocks and never fails: the fan-out does not wait for the self.
    fn append_message(&self, room_id: u64, msg_id: u64, event: &Arc<String>);
    /// Writes out what is queued. Called once, at shutdown.
    fn close(&self);
    /// An error about this store, for a problem its caller found in what was loaded.
    fn error(&self, problem: String) -> StoreError;
    /// Whether the backend takes writes now, as the last write (or probe) found. Never
    /// waits: `/healthz` calls it.
    fn is_up(&self) -> bool {
        true
    }
    /// Messages queued for the history and not written yet.
    fn queued(&self) -> usize {
        0
    }
}

/// `db_path: null`: nothing is kept; every call succeeds and does nothing.
pub struct NoStore;

impl Store for NoStore {
    fn save_room(&self, _: &RoomRecord, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_room(&self, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
    fn append_message(&self, _: u64, _: u64, _: &Arc<String>) {}
    fn close(&self) {}
    fn error(&self, problem: String) -> StoreError {
        StoreError {
            path: PathBuf::new(),
            problem,
        }
    }
}

/// Opens `path` (creating it if needed), checks and migrates it, trims each room's history
/// to `history_len`, loads everything, and starts the message writer. `None` (`db_path:
/// null`) keeps nothing.
pub fn open(
    path: Option<&Path>,
    history_len: usize,
) -> Result<(Arc<dyn Store>, Saved), StoreError> {
    let Some(path) = path else {
        return Ok((Arc::new(NoStore), Saved::default()));
    };
    sqlite::open(path, history_len)
}
