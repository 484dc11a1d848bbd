//! The SQLite file behind [`Store`](super::Store): one file (`db_path`), its writer thread,
//! and its health (`schema` opens and migrates the file). The trait, the types that cross
//! it and the `db_path: null` store live in `store/mod.rs`.
//!
//! # Why it is built this way
//! - WAL journal: a reader (`sqlite3 chitchat.db .backup ...`) does not block the server's
//!   writes, and a commit appends to one file instead of rewriting pages twice.
//! - `synchronous = FULL`: every commit is flushed to the disk, so a room answered 201
//!   survives a power cut as well as a `kill -9`. Room writes are rare; messages are
//!   batched, so their flush is paid once per batch, not once per message.
//! - One connection, owned by one writer thread, which does every write: room changes
//!   (the caller waits for its answer) and messages. Room changes go first: on a slow disk
//!   (an SD card, every flush 30 ms) the writer is busy committing messages nearly all the
//!   time, and a room write that had to win a mutex from it waited seconds; now it waits at
//!   most for the one commit under way.
//! - Messages reach the writer thread through a channel whose bound (`MESSAGE_QUEUE_LEN`)
//!   is kept by hand, so it allocates only as it fills. It takes whatever queued
//!   up while it was writing and commits it in one transaction: no timer, so a quiet room
//!   is written at once and a busy one in larger batches. The fan-out never waits for the
//!   disk; if the disk falls so far behind that the queue fills, messages are left out of
//!   the saved history (with a warning) rather than slowing anyone's delivery.
//!
//! - Message ids (SPEC, Message ids) are stored with each message, and each room's last one
//!   in `rooms.last_message_id`, written in the same transaction: trimming the history
//!   never takes the counter back, and a restart goes on from the last id written. A
//!   message not yet written when the process is killed is lost with its id, which the
//!   next message then takes; the writer commits as soon as messages arrive, so that
//!   window is the few milliseconds of one commit.
//!
//! # Health: down after a failed write, up after a successful one
//! A write the database refuses (disk full, I/O error, locked too long by another process)
//! marks the store down; any write that succeeds marks it up again. While it is down the
//! writer thread, otherwise asleep, probes once every [`PROBE_INTERVAL`], so `/healthz`
//! turns 200 again on its own when the disk is back, even if nobody writes. The probe is
//! two checks: the file system must have [`PROBE_MIN_FREE_BYTES`] free, then a real write
//! that changes nothing (the room id counter set to itself) must commit. The write alone
//! is not enough on a full disk: the frames a failed write appended to the WAL stay
//! allocated, so one small page fits where the next room write does not (measured on a
//! full 1 MiB tmpfs: without the free-space check `/healthz` was back to 200 within a
//! second while room writes still failed). Nothing else changes while the store is down:
//! room writes are still tried (and answered 503, code 605, while they fail), chat goes on,
//! and messages that cannot be written are left out of the saved history with an error
//! line. `/healthz` only reads the flag: a health check never waits for the disk.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::sync::lock;
use rusqlite::{params, Connection, TransactionBehavior};

use super::schema::{load, lock_owner, prepare, trim, MIGRATIONS};
use super::{RoomRecord, Saved, Store, StoreError};

/// Messages that may wait for the writer before new ones are left out of the history.
const MESSAGE_QUEUE_LEN: usize = 65_536;
/// The most messages written in one transaction.
const MAX_BATCH: usize = 1024;
/// The writer thread's stack: it only binds parameters and calls SQLite.
const WRITER_STACK_BYTES: usize = 256 * 1024;
/// While the store is down, how often the writer thread probes it with a write.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// The probe's write: a transaction that changes no data.
const PROBE: &str = "UPDATE counters SET value = value WHERE name = 'next_room_id'";
/// The free space the probe asks of the database's file system: room for a few hundred
/// room writes or message batches.
pub const PROBE_MIN_FREE_BYTES: u64 = 256 * 1024;

/// An upsert, not `INSERT OR REPLACE`: REPLACE deletes the old row first, and the cascade
/// would take the room's history with it.
const SAVE_ROOM: &str = "INSERT INTO rooms
         (id, title, description, visibility, password_hash, created_at, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (id) DO UPDATE SET
         title = excluded.title, description = excluded.description,
         visibility = excluded.visibility, password_hash = excluded.password_hash,
         created_at = excluded.created_at, updated_at = excluded.updated_at";
/// `max` so the counter can never go back, whatever order writes arrive in: ids are never
/// reused (SPEC, Rooms).
const SAVE_NEXT_ID: &str = "INSERT INTO counters (name, value) VALUES ('next_room_id', ?1)
     ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)";
/// A message queued before its room was deleted arrives after the delete: it is skipped.
const INSERT_MESSAGE: &str = "INSERT INTO messages (room_id, msg_id, event)
     SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM rooms WHERE id = ?1)";
/// `max`, so the counter never goes back whatever order writes arrive in.
const SAVE_LAST_MESSAGE_ID: &str =
    "UPDATE rooms SET last_message_id = max(last_message_id, ?2) WHERE id = ?1";
/// The SQLite file. See the module docs.
pub struct Sqlite {
    path: PathBuf,
    /// `<db_path>.lock`, locked for the server's life: two servers writing one file would
    /// hand out the same ids. (SQLite's own locks are per write, not per process life.)
    _owner: OwnedFd,
    /// Messages for the writer thread, and its stop.
    queue: Sender<Command>,
    /// Room changes for the writer thread, taken before any message.
    room_changes: Sender<RoomChange>,
    /// Set while the queue is full, so the warning is logged once per episode, not per message.
    falling_behind: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Whether writes succeed; shared with the writer thread, which probes while it is down.
    health: Arc<Health>,
}

/// Whether the database takes writes, as the last write found (see the module docs).
struct Health {
    up: AtomicBool,
    path: PathBuf,
}

impl Health {
    /// Records a write's outcome; a change is logged once. Returns whether the store just
    /// went down.
    fn record<T, E>(&self, result: &Result<T, E>) -> bool {
        let up = result.is_ok();
        let changed = self.up.swap(up, SeqCst) != up;
        if changed {
            if up {
                log::info!("database {}: writes succeed again", self.path.display());
            } else {
                log::error!(
                    "database {}: writes fail; /healthz answers 503 until one succeeds",
                    self.path.display()
                );
            }
        }
        changed && !up
    }

    fn is_up(&self) -> bool {
        self.up.load(SeqCst)
    }
}

/// A room change for the writer thread, with where to send its outcome.
enum RoomChange {
    /// Save a room and the room id counter.
    Save(RoomRecord, u64, Sender<rusqlite::Result<()>>),
    /// Delete a room (its history goes with it).
    Delete(u64, Sender<rusqlite::Result<()>>),
}

/// What the writer thread is asked to do with messages.
enum Command {
    /// Save a room's `send` event: room id, message id, event.
    Append(u64, u64, Arc<String>),
    /// Write what came before, then stop.
    Stop,
}

/// Opens the SQLite file at `path`: see [`open`](super::open).
pub(super) fn open(path: &Path, history_len: usize) -> Result<(Arc<dyn Store>, Saved), StoreError> {
    let fail = |problem: String| StoreError {
        path: path.to_owned(),
        problem,
    };
    let owner = lock_owner(path).map_err(fail)?;
    let mut connection = Connection::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    prepare(&mut connection, MIGRATIONS, history_len).map_err(fail)?;
    let saved = load(&connection).map_err(|e| fail(format!("cannot read: {e}")))?;
    let (queue, messages) = crossbeam_channel::unbounded();
    let (room_changes, changes) = crossbeam_channel::unbounded();
    let health = Arc::new(Health {
        up: AtomicBool::new(true),
        path: path.to_owned(),
    });
    let writer = {
        let inbox = Inbox { changes, messages };
        let health = Arc::clone(&health);
        std::thread::Builder::new()
            .name("db-writer".into())
            .stack_size(WRITER_STACK_BYTES)
            .spawn(move || run_writer(connection, &inbox, history_len, &health))
            .map_err(|e| fail(format!("cannot start the writer thread: {e}")))?
    };
    let store = Sqlite {
        path: path.to_owned(),
        _owner: owner,
        queue,
        room_changes,
        falling_behind: AtomicBool::new(false),
        writer: Mutex::new(Some(writer)),
        health,
    };
    Ok((Arc::new(store), saved))
}

impl Store for Sqlite {
    /// One transaction for the room and the counter, on the writer thread.
    fn save_room(&self, room: &RoomRecord, next_id: u64) -> Result<(), StoreError> {
        self.change(|done| RoomChange::Save(room.clone(), next_id, done))
            .map_err(|e| self.error(format!("cannot save room {}: {e}", room.id)))
    }

    /// The history goes with the room, through the cascade.
    fn delete_room(&self, id: u64) -> Result<(), StoreError> {
        self.change(|done| RoomChange::Delete(id, done))
            .map_err(|e| self.error(format!("cannot delete room {id}: {e}")))
    }

    /// If the disk falls so far behind that the queue is full, the message is left out of
    /// the saved history, with one warning per episode.
    fn append_message(&self, room_id: u64, msg_id: u64, event: &Arc<String>) {
        // The bound is kept by hand on a list channel, which allocates as it fills: a
        // bounded channel of this size allocated 2 MiB up front, a third of the idle RSS.
        if self.queue.len() >= MESSAGE_QUEUE_LEN {
            if !self.falling_behind.swap(true, Relaxed) {
                log::warn!(
                    "database {}: the disk is falling behind; messages are left out of the saved history until it catches up",
                    self.path.display()
                );
            }
            return;
        }
        // An error means the writer has stopped: the server is shutting down.
        let queued = self
            .queue
            .send(Command::Append(room_id, msg_id, Arc::clone(event)));
        if queued.is_ok() && self.falling_behind.swap(false, Relaxed) {
            log::info!("database {}: history writer caught up", self.path.display());
        }
    }

    /// Stops the writer thread once it has written what is queued (later messages are not
    /// saved) and folded the WAL into the main file.
    fn close(&self) {
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            // A blocking send: the writer is draining the queue, and no lock is held here.
            if self.queue.send(Command::Stop).is_ok() && writer.join().is_err() {
                log::error!(
                    "database {}: the history writer panicked",
                    self.path.display()
                );
            }
        }
    }

    fn error(&self, problem: String) -> StoreError {
        StoreError {
            path: self.path.clone(),
            problem,
        }
    }

    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl Sqlite {
    /// Hands a room change to the writer thread and waits for its outcome.
    fn change(
        &self,
        change: impl FnOnce(Sender<rusqlite::Result<()>>) -> RoomChange,
    ) -> Result<(), String> {
        let (done, outcome) = crossbeam_channel::bounded(1);
        self.room_changes
            .send(change(done))
            .map_err(|_| "the writer thread has stopped".to_owned())?;
        match outcome.recv() {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the writer thread stopped before answering".into()),
        }
    }
}

/// The writer thread's two queues.
struct Inbox {
    changes: Receiver<RoomChange>,
    messages: Receiver<Command>,
}

/// The writer thread: owns the connection and does every write. A room change goes before
/// any message; messages are taken as they queued up (at most [`MAX_BATCH`]) and written
/// in one transaction, with the rooms they touched trimmed. Every outcome is recorded in
/// `health`, and while the store is down it probes every [`PROBE_INTERVAL`]. On
/// [`Command::Stop`] (or when the store is gone) it writes what came before, folds the WAL
/// into the main file and ends.
fn run_writer(mut connection: Connection, inbox: &Inbox, history_len: usize, health: &Health) {
    let path = &health.path;
    let mut batch: Vec<(u64, u64, Arc<String>)> = Vec::new();
    let mut stop = false;
    while !stop {
        while let Ok(change) = inbox.changes.try_recv() {
            apply(&mut connection, change, health);
        }
        let probe_due = if health.is_up() {
            crossbeam_channel::never()
        } else {
            crossbeam_channel::after(PROBE_INTERVAL)
        };
        crossbeam_channel::select! {
            recv(inbox.changes) -> change => {
                if let Ok(change) = change {
                    apply(&mut connection, change, health);
                }
                continue;
            }
            recv(probe_due) -> _ => {
                health.record(&probe(&connection, path));
                continue;
            }
            recv(inbox.messages) -> command => match command {
                Ok(Command::Append(room_id, msg_id, event)) => batch.push((room_id, msg_id, event)),
                Ok(Command::Stop) | Err(_) => stop = true,
            },
        }
        while !stop && batch.len() < MAX_BATCH {
            match inbox.messages.try_recv() {
                Ok(Command::Append(room_id, msg_id, event)) => batch.push((room_id, msg_id, event)),
                Ok(Command::Stop) => stop = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let written = write_messages(&mut connection, &batch, history_len);
        health.record(&written);
        if let Err(e) = written {
            log::error!(
                "database {}: {} messages not saved to the history: {e}",
                path.display(),
                batch.len()
            );
        }
        batch.clear();
    }
    // Moves everything from the WAL into the main file and empties the WAL, so that after
    // a clean stop the one file is the whole database.
    let checkpoint = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    if let Err(e) = checkpoint {
        log::warn!(
            "database {}: cannot checkpoint the WAL: {e}",
            path.display()
        );
    }
}

/// Writes one room change, records its outcome, and answers its caller (who may have
/// given up: not an error).
fn apply(connection: &mut Connection, change: RoomChange, health: &Health) {
    let (outcome, done) = match change {
        RoomChange::Save(room, next_id, done) => (save_room(connection, &room, next_id), done),
        RoomChange::Delete(id, done) => {
            let deleted = connection
                .prepare_cached("DELETE FROM rooms WHERE id = ?1")
                .and_then(|mut statement| statement.execute([id]));
            (deleted.map(drop), done)
        }
    };
    health.record(&outcome);
    let _ = done.send(outcome);
}

fn save_room(connection: &mut Connection, room: &RoomRecord, next_id: u64) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached(SAVE_ROOM)?.execute(params![
        room.id,
        room.title,
        room.description,
        room.visibility,
        room.password_hash,
        room.created_at,
        room.updated_at
    ])?;
    tx.prepare_cached(SAVE_NEXT_ID)?.execute([next_id])?;
    tx.commit()
}

/// Whether the database takes writes again: see the module docs.
fn probe(connection: &Connection, path: &Path) -> Result<(), String> {
    let stats = rustix::fs::statvfs(path).map_err(|e| format!("cannot stat: {e}"))?;
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    if free < PROBE_MIN_FREE_BYTES {
        return Err(format!("{free} bytes free"));
    }
    connection
        .execute(PROBE, [])
        .map(drop)
        .map_err(|e| e.to_string())
}

fn write_messages(
    connection: &mut Connection,
    batch: &[(u64, u64, Arc<String>)],
    history_len: usize,
) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut last_ids: BTreeMap<u64, u64> = BTreeMap::new();
    {
        let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
        for (room_id, msg_id, event) in batch {
            insert.execute(params![room_id, msg_id, &**event])?;
            let last = last_ids.entry(*room_id).or_default();
            *last = (*last).max(*msg_id);
        }
    }
    for (room_id, last_id) in last_ids {
        tx.prepare_cached(SAVE_LAST_MESSAGE_ID)?
            .execute(params![room_id, last_id])?;
        trim(&tx, room_id, history_len)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open;
    use crate::store::schema::migrate;

    /// A fresh path in the system temp directory, removed (with its WAL files) on drop.
    struct TempDb(PathBuf);

    impl TempDb {
        fn new(name: &str) -> TempDb {
            let path = std::env::temp_dir()
                .join(format!("chitchat-store-{}-{name}.db", std::process::id()));
            let db = TempDb(path);
            db.remove();
            db
        }

        fn remove(&self) {
            for suffix in ["", "-wal", "-shm", ".lock"] {
                let mut name = self.0.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            self.remove();
        }
    }

    fn room(id: u64, title: &str) -> RoomRecord {
        RoomRecord {
            id,
            title: title.into(),
            description: "".into(),
            visibility: "private".into(),
            password_hash: Some("$2b$04$hash".into()),
            created_at: "2026-11-28T15:19:28.123Z".into(),
            updated_at: "2026-11-28T15:19:28.123Z".into(),
        }
    }

    fn user_version(connection: &Connection) -> i64 {
        connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_file_is_migrated_to_the_latest_version() {
        let db = TempDb::new("new");
        let (store, saved) = open(Some(&db.0), 50).unwrap();
        store.close();
        let mut wal = db.0.clone().into_os_string();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(wal).map_or(0, |m| m.len());
        assert_eq!(wal_bytes, 0, "close folds the WAL into the main file");
        assert_eq!(saved.next_id, None);
        assert!(saved.rooms.is_empty());
        let connection = Connection::open(&db.0).unwrap();
        assert_eq!(user_version(&connection), MIGRATIONS.len() as i64);
        let mode: String = connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn the_wal_is_folded_in_every_128_pages() {
        let db = TempDb::new("checkpoint");
        let mut connection = Connection::open(&db.0).unwrap();
        prepare(&mut connection, MIGRATIONS, 50).unwrap();
        let pages: u32 = connection
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(pages, 128);
    }

    #[test]
    fn migrations_run_forward_from_the_version_a_file_has_and_keep_its_data() {
        let mut connection = Connection::open_in_memory().unwrap();
        let tx = connection.transaction().unwrap();
        migrate(&tx, &MIGRATIONS[..1]).unwrap();
        tx.execute(
            "INSERT INTO rooms VALUES (7, 'kept', '', 'public', NULL, 't', 't')",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
        // A later release appends a step; only that step runs on this file.
        let later = [MIGRATIONS[0], "ALTER TABLE rooms ADD COLUMN topic TEXT"];
        let tx = connection.transaction().unwrap();
        migrate(&tx, &later).unwrap();
        tx.commit().unwrap();
        assert_eq!(user_version(&connection), 2);
        let (title, topic): (String, Option<String>) = connection
            .query_row("SELECT title, topic FROM rooms WHERE id = 7", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .unwrap();
        assert_eq!((title.as_str(), topic), ("kept", None));
    }

    #[test]
    fn version_1_messages_are_numbered_in_order_and_get_their_id_in_the_event() {
        let mut connection = Connection::open_in_memory().unwrap();
        let tx = connection.transaction().unwrap();
        migrate(&tx, &MIGRATIONS[..1]).unwrap();
        tx.execute_batch(
            "INSERT INTO rooms VALUES (7, 'kept', '', 'public', NULL, 't', 't');
             INSERT INTO messages (room_id, event) VALUES (7, '{\"msg\":\"a\"}'), (7, '{\"msg\":\"b\"}');",
        )
        .unwrap();
        migrate(&tx, MIGRATIONS).unwrap();
        tx.commit().unwrap();
        let saved = load(&connection).unwrap();
        let history: Vec<(u64, &str)> = saved.history[&7]
            .iter()
            .map(|(id, e)| (*id, e.as_str()))
            .collect();
        assert_eq!(
            history,
            [(1, r#"{"msg":"a","id":1}"#), (2, r#"{"msg":"b","id":2}"#)]
        );
        assert_eq!(saved.rooms[0].last_message_id, 2);
    }

    #[test]
    fn a_file_from_a_newer_chitchat_is_refused() {
        let connection = Connection::open_in_memory().unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        let problem = migrate(&connection, MIGRATIONS).unwrap_err();
        assert!(problem.contains("schema version 99"), "{problem}");
    }

    #[test]
    fn rooms_counter_and_history_are_read_back() {
        let db = TempDb::new("roundtrip");
        let (store, _) = open(Some(&db.0), 2).unwrap();
        store.save_room(&room(3, "three"), 4).unwrap();
        store.save_room(&room(5, "five"), 6).unwrap();
        // A late write of an older counter must not move it back.
        store.save_room(&room(3, "three renamed"), 4).unwrap();
        for (id, text) in [(1, "a"), (2, "b"), (3, "c")] {
            store.append_message(3, id, &Arc::new(String::from(text)));
        }
        store.close();
        drop(store);
        let (store, saved) = open(Some(&db.0), 2).unwrap();
        store.close();
        assert_eq!(saved.next_id, Some(6));
        let rooms: Vec<_> = saved
            .rooms
            .iter()
            .map(|r| (&r.room, r.last_message_id))
            .collect();
        assert_eq!(
            rooms,
            [(&room(3, "three renamed"), 3), (&room(5, "five"), 0)]
        );
        let history: Vec<(u64, &str)> = saved.history[&3]
            .iter()
            .map(|(id, e)| (*id, e.as_str()))
            .collect();
        assert_eq!(history, [(2, "b"), (3, "c")]);
    }

    #[test]
    fn deleting_a_room_deletes_its_history_and_late_messages_are_skipped() {
        let db = TempDb::new("delete");
        let (store, _) = open(Some(&db.0), 10).unwrap();
        store.save_room(&room(2, "two"), 3).unwrap();
        store.append_message(2, 1, &Arc::new(String::from("before")));
        store.close();
        drop(store);
        let (store, _) = open(Some(&db.0), 10).unwrap();
        store.delete_room(2).unwrap();
        store.append_message(2, 2, &Arc::new(String::from("after the delete")));
        store.close();
        drop(store);
        let (store, saved) = open(Some(&db.0), 10).unwrap();
        store.close();
        assert!(saved.rooms.is_empty());
        assert!(saved.history.is_empty(), "{:?}", saved.history);
        assert_eq!(saved.next_id, Some(3));
    }

    #[test]
    fn a_smaller_history_len_trims_at_start() {
        let db = TempDb::new("trim");
        let (store, _) = open(Some(&db.0), 10).unwrap();
        store.save_room(&room(2, "two"), 3).unwrap();
        for (id, text) in [(1, "1"), (2, "2"), (3, "3"), (4, "4")] {
            store.append_message(2, id, &Arc::new(String::from(text)));
        }
        store.close();
        drop(store);
        let (store, saved) = open(Some(&db.0), 1).unwrap();
        store.close();
        let history: Vec<(u64, &str)> = saved.history[&2]
            .iter()
            .map(|(id, e)| (*id, e.as_str()))
            .collect();
        assert_eq!(history, [(4, "4")]);
        assert_eq!(saved.rooms[0].last_message_id, 4);
        drop(store);
        let (store, saved) = open(Some(&db.0), 0).unwrap();
        store.close();
        assert!(saved.history.is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_it() {
        let db = TempDb::new("garbage");
        std::fs::write(&db.0, vec![0x5a; 8192]).unwrap();
        let error = open(Some(&db.0), 50).err().unwrap();
        assert_eq!(error.path, db.0);
        assert!(
            error
                .to_string()
                .starts_with(&format!("database {}: ", db.0.display())),
            "{error}"
        );
    }
}
