//! Opening a database file: the lock that keeps it to one server, the settings and
//! checks a file must pass, the schema and its migrations, trimming each room's history,
//! and loading what the room map starts from. `sqlite` owns the handle and the writer
//! thread that use the file once it is open.
//!
//! - The schema version is `PRAGMA user_version`. [`MIGRATIONS`] brings an older file
//!   forward, all steps in one transaction; a file from a newer ChitChat is refused.
//! - Nothing is reset silently: a file that cannot be opened, is not a database, fails
//!   SQLite's quick check, has an unknown schema or is locked by another process is a
//!   [`StoreError`](super::StoreError), and the server does not start (`main` exits with code 2).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::{RoomRecord, Saved, SavedRoom};

/// The schema, one step per version: `MIGRATIONS[n]` takes a file from version `n` to
/// `n + 1`. Steps are only ever appended, never edited once released, so every file, however
/// old, takes the same path to the current schema.
pub const MIGRATIONS: &[&str] = &[
    // 1: rooms, the id counter, and each room's recent `send` events as broadcast (JSON).
    // A room's messages go with it (`ON DELETE CASCADE`).
    "CREATE TABLE rooms (
         id            INTEGER PRIMARY KEY,
         title         TEXT NOT NULL,
         description   TEXT NOT NULL,
         visibility    TEXT NOT NULL,
         password_hash TEXT,
         created_at    TEXT NOT NULL,
         updated_at    TEXT NOT NULL
     );
     CREATE TABLE counters (
         name  TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     );
     CREATE TABLE messages (
         seq     INTEGER PRIMARY KEY,
         room_id INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
         event   TEXT NOT NULL
     );
     CREATE INDEX messages_by_room ON messages (room_id, seq);",
    // 2: message ids (SPEC, Message ids): each message's id in its room, stored beside it
    // and inside its event, and each room's last id. Messages kept from version 1 are
    // numbered 1, 2, 3... in the order they were said.
    "ALTER TABLE messages ADD COLUMN msg_id INTEGER NOT NULL DEFAULT 0;
     UPDATE messages SET msg_id = (SELECT count(*) FROM messages AS older
         WHERE older.room_id = messages.room_id AND older.seq <= messages.seq);
     UPDATE messages SET event = json_set(event, '$.id', msg_id);
     ALTER TABLE rooms ADD COLUMN last_message_id INTEGER NOT NULL DEFAULT 0;
     UPDATE rooms SET last_message_id =
         (SELECT coalesce(max(msg_id), 0) FROM messages WHERE room_id = rooms.id);
     CREATE INDEX messages_by_id ON messages (room_id, msg_id);",
];

/// How long a statement waits for another process's lock (a `sqlite3` shell in the middle
/// of a write) before it fails. Short: a room change's request waits for its write.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Deletes all but the room's newest `?2` messages.
const TRIM_HISTORY: &str = "DELETE FROM messages WHERE room_id = ?1 AND msg_id <= (
         SELECT msg_id FROM messages WHERE room_id = ?1 ORDER BY msg_id DESC LIMIT 1 OFFSET ?2)";

/// Takes the lock file beside `path` for this process's life, or says who holds it; then
/// creates the database file itself if it is missing, readable by the server's user only
/// (0600, SPEC, Limits: it holds the rooms' password hashes and everything said), before
/// SQLite opens it. SQLite gives its `-wal` and `-shm` files the database file's mode.
pub(super) fn lock_owner(path: &Path) -> Result<OwnedFd, String> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let private = || {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true).mode(0o600);
        options
    };
    let file = private()
        .open(&lock_path)
        .map_err(|e| format!("cannot open its lock file: {e}"))?;
    let fd = OwnedFd::from(file);
    match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Err("in use by another ChitChat server".into()),
        Err(e) => return Err(format!("cannot lock it: {e}")),
    }
    private()
        .open(path)
        .map_err(|e| format!("cannot create it: {e}"))?;
    Ok(fd)
}

/// Settings, checks and migrations on a freshly opened file; the error is the problem.
pub(super) fn prepare(
    connection: &mut Connection,
    migrations: &[&str],
    history_len: usize,
) -> Result<(), String> {
    let failed = |what: &'static str| move |e: rusqlite::Error| format!("{what}: {e}");
    connection
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(failed("cannot set the busy timeout"))?;
    // One plan per statement, whatever values are bound. Without it SQLite compiled the
    // history trim, which runs with every message, again at each run: its plan had looked
    // at the bound room id and `OFFSET`, and rusqlite clears a cached statement's bindings,
    // which SQLite takes for new values. The trim cost 103,000 instructions a message, now
    // 33,000 with the same plan (callgrind, a 50 x 20 fan-out, whose whole server ran 21 %
    // fewer instructions).
    connection
        .set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(failed("cannot fix the query plans"))?;
    // Opening is lazy: this first read is where a file that is not a database, or one
    // locked by another process, shows itself.
    connection
        .pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map_err(failed("cannot read"))?;
    let mode: String = connection
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(failed("cannot switch to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        log::warn!("database: the file system does not allow WAL; using journal mode {mode}");
    }
    // The WAL is folded into the main file once it holds 128 pages (512 KiB; SQLite's
    // default is 1,000). Each page written stays in the page cache, which is charged to the
    // server: at 50 messages/s the WAL grew by 400 KiB a second to 4 MiB, most of what the
    // small host's group gained while chat went on (`make bench`, scenario 14: peak 49.3
    // -> 44.8 MiB). The writer thread pays one more flush of the main file per checkpoint,
    // off the chat path.
    connection
        .execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 128;",
        )
        .map_err(failed("cannot configure"))?;
    let check: String = connection
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(failed("cannot check"))?;
    if check != "ok" {
        return Err(format!("damaged ({check}); restore a backup"));
    }
    // IMMEDIATE takes the write lock now: a file another process holds locked fails here,
    // at start, after BUSY_TIMEOUT, rather than at the first room write.
    let tx = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(failed("cannot take the write lock"))?;
    migrate(&tx, migrations)?;
    let rooms: Vec<u64> = tx
        .prepare("SELECT DISTINCT room_id FROM messages")
        .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
        .map_err(failed("cannot read the history"))?;
    for room_id in rooms {
        trim(&tx, room_id, history_len).map_err(failed("cannot trim the history"))?;
    }
    tx.commit().map_err(failed("cannot commit"))
}

/// Runs the steps of `migrations` the file has not had yet. Refuses a file whose version is
/// newer than `migrations` knows: it was written by a newer ChitChat, and guessing could
/// lose data.
pub(super) fn migrate(connection: &Connection, migrations: &[&str]) -> Result<(), String> {
    let failed = |e: rusqlite::Error| format!("cannot migrate the schema: {e}");
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(failed)?;
    let known = migrations.len();
    let version = usize::try_from(version)
        .ok()
        .filter(|v| *v <= known)
        .ok_or_else(|| {
            format!("schema version {version} is not one this ChitChat knows (0 to {known}); use the ChitChat that wrote it")
        })?;
    for (done, step) in migrations.iter().enumerate().skip(version) {
        connection.execute_batch(step).map_err(failed)?;
        connection
            .pragma_update(None, "user_version", done + 1)
            .map_err(failed)?;
        log::info!("database schema migrated to version {}", done + 1);
    }
    Ok(())
}

/// Everything the room map starts from.
pub(super) fn load(connection: &Connection) -> rusqlite::Result<Saved> {
    let next_id = connection
        .query_row(
            "SELECT value FROM counters WHERE name = 'next_room_id'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let rooms = connection
        .prepare(
            "SELECT id, title, description, visibility, password_hash, created_at, updated_at,
                    last_message_id
             FROM rooms ORDER BY id",
        )?
        .query_map([], |row| {
            Ok(SavedRoom {
                room: RoomRecord {
                    id: row.get(0)?,
                    title: row.get(1)?,
                    description: row.get(2)?,
                    visibility: row.get(3)?,
                    password_hash: row.get(4)?,
                    created_at: row.get(5)?,
                    updated_at: row.get(6)?,
                },
                last_message_id: row.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut history: HashMap<u64, Vec<(u64, Arc<String>)>> = HashMap::new();
    let mut statement = connection
        .prepare("SELECT room_id, msg_id, event FROM messages ORDER BY room_id, msg_id")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let event: String = row.get(2)?;
        history
            .entry(row.get(0)?)
            .or_default()
            .push((row.get(1)?, event.into()));
    }
    Ok(Saved {
        next_id,
        rooms,
        history,
    })
}

/// Deletes all but room `room_id`'s newest `history_len` messages.
pub(super) fn trim(
    connection: &Connection,
    room_id: u64,
    history_len: usize,
) -> rusqlite::Result<()> {
    connection
        .prepare_cached(TRIM_HISTORY)?
        .execute(params![room_id, history_len])
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// The trim runs with every message: compiling it again each time cost more than the
    /// rest of the message's write (see `prepare`).
    #[test]
    fn the_history_trim_is_compiled_once() {
        let mut connection = Connection::open_in_memory().unwrap();
        prepare(&mut connection, MIGRATIONS, 50).unwrap();
        connection
            .execute_batch(
                "INSERT INTO rooms (id, title, description, visibility, created_at, updated_at)
                 VALUES (1, 'a', '', 'public', '', ''), (2, 'b', '', 'public', '', '')",
            )
            .unwrap();
        for msg_id in 1..=10u64 {
            for room_id in [1u64, 2] {
                connection
                    .execute(
                        "INSERT INTO messages (room_id, msg_id, event) VALUES (?1, ?2, '{}')",
                        params![room_id, msg_id],
                    )
                    .unwrap();
                trim(&connection, room_id, 3 + msg_id as usize % 2).unwrap();
            }
        }
        let statement = connection.prepare_cached(TRIM_HISTORY).unwrap();
        assert_eq!(statement.get_status(StatementStatus::Run), 20);
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
        drop(statement);
        let kept: u64 = connection
            .query_row(
                "SELECT count(*) FROM messages WHERE room_id = 1",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(kept, 3, "the last trim kept 3");
    }
}
