//! `/healthz` (SPEC, Metrics and health) following the database for real: locked by
//! another connection, and on a file system that is full (a tmpfs; skipped with a message
//! where the test may not mount one).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Response, Scratch, TestServer, TIMEOUT};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// /healthz and the database

/// The body of `/healthz` and of any write while the database takes none.
fn storage_unavailable() -> Value {
    json!({"status": false, "error": {"code": 605, "error": "Backend error: Storage unavailable"}})
}

/// Asserts `response` is 503 with code 605.
fn assert_storage_unavailable(response: &Response) {
    assert_eq!(
        (response.status, response.json()),
        (503, storage_unavailable())
    );
}

/// A server keeping its rooms in `db_path`.
fn server_with_database(db_path: &Path) -> TestServer {
    let db_path = db_path.to_owned();
    TestServer::start_with(move |c| c.db_path = Some(db_path))
}

/// Polls `/healthz` until it answers `status`; panics after [`TIMEOUT`].
fn await_health(server: &TestServer, status: u16) -> Response {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let response = server.get("/healthz");
        if response.status == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {}",
            response.status
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Another connection holding the database's write lock (a `sqlite3` shell in the middle
/// of a write, say) makes the server's writes fail once SQLite's busy timeout (1 s) runs
/// out: the room write is 503 with 605, and `/healthz` is 503 with 605.
/// Once the lock is released the server finds out by itself (its probe), and writes again.
#[test]
fn healthz_is_503_while_the_database_is_locked_and_200_once_it_is_free() {
    let scratch = Scratch::new("metrics-locked-db");
    let db_path = scratch.path("chitchat.db");
    let server = server_with_database(&db_path);
    assert_eq!(server.get("/healthz").json(), json!({"status": true}));

    let other = rusqlite::Connection::open(&db_path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = server.post(
        "/chats",
        &json!({"title": "Locked out", "visibility": "public"}),
    );
    assert_storage_unavailable(&refused);
    assert_storage_unavailable(&server.get("/healthz"));

    other.execute_batch("ROLLBACK").unwrap();
    let healthy = await_health(&server, 200);
    assert_eq!(healthy.json(), json!({"status": true}));
    server.create_room("Back in", "public", None);
}

/// A tmpfs of `size`, mounted for one test and unmounted (and its directory removed) when
/// dropped. Declare it before the server, so the server stops first.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot and returns `None` (the test is then skipped).
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir =
            std::env::temp_dir().join(format!("chitchat-tmpfs-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            outcome => {
                let why = match outcome {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                eprintln!("skipped {test}: cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {why}");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `filler` until the file system refuses: no space is left after it.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.path("filler")).expect("create the filler");
        let chunk = vec![0x5a; 4096];
        let mut written = 0usize;
        loop {
            match filler.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "filling failed with {e}");
                    break;
                }
            }
            assert!(written < 64 << 20, "the tmpfs never filled");
        }
    }

    /// Frees the space [`Tmpfs::fill`] took.
    fn free(&self) {
        std::fs::remove_file(self.path("filler")).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// On a full disk SQLite cannot append the write to its WAL (`SQLITE_FULL`): creating a
/// room is 503 with 605 and the room does not exist; `/healthz` is 503 with 605.
#[test]
fn a_room_write_on_a_full_disk_is_503_605_and_healthz_follows() {
    let Some(disk) = Tmpfs::mount("full-disk-write", "1m") else {
        return;
    };
    let server = server_with_database(&disk.path("chitchat.db"));
    disk.fill();
    let refused = server.post(
        "/chats",
        &json!({"title": "No room", "visibility": "public"}),
    );
    assert_storage_unavailable(&refused);
    assert_eq!(server.get("/chats/No%20room").status, 404);
    assert_storage_unavailable(&server.get("/healthz"));
}

/// While the disk stays full, `/healthz` stays 503 through the server's probes (one a
/// second): the room the failed write left in the WAL does not count as recovery.
#[test]
fn healthz_stays_503_while_the_disk_stays_full() {
    let Some(disk) = Tmpfs::mount("full-disk-stays", "1m") else {
        return;
    };
    let server = server_with_database(&disk.path("chitchat.db"));
    disk.fill();
    let refused = server.post(
        "/chats",
        &json!({"title": "No room", "visibility": "public"}),
    );
    assert_storage_unavailable(&refused);
    // Three probes' worth of waiting: time passing is what this test is about.
    std::thread::sleep(3 * Duration::from_secs(1));
    assert_storage_unavailable(&server.get("/healthz"));
}

/// Chat does not need the disk: while it is full, sockets join and talk as usual (the
/// messages are left out of the saved history).
#[test]
fn chat_goes_on_while_the_disk_is_full() {
    let Some(disk) = Tmpfs::mount("full-disk-chat", "1m") else {
        return;
    };
    let server = server_with_database(&disk.path("chitchat.db"));
    disk.fill();
    assert_storage_unavailable(&server.post(
        "/chats",
        &json!({"title": "No room", "visibility": "public"}),
    ));
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    let mut bob = server.ws("/chats/1/ws");
    bob.join("bob");
    ann.say("the disk is full, we are not");
    for client in [&mut ann, &mut bob] {
        client.next_event_where("the message", |e| {
            e["msg"] == "the disk is full, we are not"
        });
    }
}

/// Once the disk has room again, the server finds out by itself (its probe: nobody writes
/// meanwhile), `/healthz` is 200 again, and room writes succeed.
#[test]
fn the_server_serves_writes_again_by_itself_once_the_disk_has_room() {
    let Some(disk) = Tmpfs::mount("full-disk-recovery", "1m") else {
        return;
    };
    let server = server_with_database(&disk.path("chitchat.db"));
    disk.fill();
    assert_storage_unavailable(&server.post(
        "/chats",
        &json!({"title": "Too soon", "visibility": "public"}),
    ));
    disk.free();
    assert_eq!(await_health(&server, 200).json(), json!({"status": true}));
    server.create_room("Room again", "public", None);
    assert_eq!(server.get("/chats/Room%20again").status, 200);
}
