//! `/metrics` and `/healthz` (SPEC, Metrics and health): the exposition read as a scraper
//! reads it (`prometheus::Scrape`, a parser of the text format, not substring checks), its
//! numbers moving as rooms, sockets and requests come and go, who may read it
//! (`metrics_allow`), and `/healthz` following the database for real: locked by another
//! connection, and on a file system that is full (a tmpfs; skipped with a message where the
//! test may not mount one).

mod common;
mod prometheus;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{error_body, Client, Response, Scratch, TestServer, TIMEOUT};
use prometheus::Scrape;
use serde_json::{json, Value};

/// The server's `/metrics`, checked for its status and `Content-Type`, parsed.
fn scrape(server: &TestServer) -> Scrape {
    let response = server.get("/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4")
    );
    Scrape::parse(&response.body)
}

/// Scrapes until `name` (no labels) reads `expected`: gauges of sockets drop a moment
/// after the client has gone, when the socket's thread ends.
fn await_gauge(server: &TestServer, name: &str, expected: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = scrape(server).value(name, &[]);
        if value == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {value}, not {expected}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Closes `client` as a browser would: a close frame, then its answer.
fn close(mut client: Client) {
    let _ = client.socket.close(None);
    while client.socket.read().is_ok() {}
}

// ---------------------------------------------------------------------------------------------
// The exposition

/// `/metrics` is Prometheus text (version 0.0.4) with every series SPEC names, each with
/// its type, every label value of the fixed sets present from the start, and the version.
#[test]
fn metrics_are_prometheus_text_with_every_series_the_spec_names() {
    let server = TestServer::start();
    let scrape = scrape(&server);
    for (name, kind) in [
        ("chitchat_rooms", "gauge"),
        ("chitchat_sockets_open", "gauge"),
        ("chitchat_users_joined", "gauge"),
        ("chitchat_events_received_total", "counter"),
        ("chitchat_events_delivered_total", "counter"),
        ("chitchat_sockets_closed_total", "counter"),
        ("chitchat_http_responses_total", "counter"),
        ("chitchat_limit_refusals_total", "counter"),
        ("chitchat_history_queue", "gauge"),
        ("chitchat_backend_up", "gauge"),
        ("chitchat_build_info", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    assert_eq!(scrape.value("chitchat_rooms", &[]), 1.0);
    assert_eq!(scrape.value("chitchat_backend_up", &[]), 1.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scrape.value("chitchat_build_info", &[("version", version)]),
        1.0
    );
    for reason in [
        "client",
        "slow",
        "flood",
        "too_big",
        "ping_timeout",
        "room_deleted",
        "shutdown",
        "backend",
        "access_changed",
    ] {
        let closed = scrape.value("chitchat_sockets_closed_total", &[("reason", reason)]);
        assert_eq!(closed, 0.0, "{reason}");
    }
    for limit in [
        "max_connections",
        "max_connections_per_ip",
        "token_attempts_per_minute",
        "rooms_per_minute",
        "msgs_per_second",
        "bcrypt_queue_len",
        "allowed_origins",
    ] {
        let refused = scrape.value("chitchat_limit_refusals_total", &[("limit", limit)]);
        assert_eq!(refused, 0.0, "{limit}");
    }
}

/// The numbers move as things happen: a room created, two sockets joining, a message, a
/// socket closing; frames received and events handed to sockets are counted one by one.
#[test]
fn metrics_move_as_rooms_sockets_and_messages_come_and_go() {
    let server = TestServer::start();
    server.create_room("Book club", "public", None);
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    let mut bob = server.ws("/chats/1/ws");
    bob.join("bob");
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    ann.say("hi");
    for client in [&mut ann, &mut bob] {
        client.next_event_where("the message", |e| e["msg"] == "hi");
    }
    let during = scrape(&server);
    assert_eq!(during.value("chitchat_rooms", &[]), 2.0);
    assert_eq!(during.value("chitchat_sockets_open", &[]), 2.0);
    assert_eq!(during.value("chitchat_users_joined", &[]), 2.0);
    // Frames: two joins and a send. Events: ann's join (to ann), bob's join (to both), the
    // message (to both).
    assert_eq!(during.value("chitchat_events_received_total", &[]), 3.0);
    assert_eq!(during.value("chitchat_events_delivered_total", &[]), 5.0);
    assert_eq!(
        during.value("chitchat_http_responses_total", &[("status", "201")]),
        1.0
    );

    close(ann);
    let closed = |s: &Scrape| s.value("chitchat_sockets_closed_total", &[("reason", "client")]);
    await_gauge(&server, "chitchat_sockets_open", 1.0);
    let after = scrape(&server);
    assert_eq!(after.value("chitchat_users_joined", &[]), 1.0);
    assert_eq!(closed(&after), 1.0);
}

/// Every REST response is counted under its status.
#[test]
fn http_responses_are_counted_by_status() {
    let server = TestServer::start();
    server.get("/chats");
    server.get("/chats");
    server.get("/no/such/path");
    server.post("/chats", &json!({"title": "x"}));
    let scrape = scrape(&server);
    let status = |code: &str| scrape.value("chitchat_http_responses_total", &[("status", code)]);
    assert_eq!(
        (status("200"), status("404"), status("400")),
        (2.0, 1.0, 1.0)
    );
    assert_eq!(
        scrape.get("chitchat_http_responses_total", &[("status", "500")]),
        None
    );
}

/// Chat sockets that end are counted by why: the client closed it, it sent a frame over
/// `max_message_bytes`, it stopped answering pings, its room was deleted.
#[test]
fn closed_sockets_are_counted_by_reason() {
    let server = TestServer::start_with(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.pong_timeout = Duration::from_millis(300);
    });
    let reason = |r: &str| scrape(&server).value("chitchat_sockets_closed_total", &[("reason", r)]);

    close(server.ws("/chats/1/ws"));
    assert_eq!(reason("client"), 1.0);

    let mut big = server.ws("/chats/1/ws");
    big.say(&"x".repeat(5000));
    assert_eq!(big.expect_close(), 1009);
    assert_eq!(reason("too_big"), 1.0);

    let room = server.create_room("Doomed", "public", None);
    let mut doomed = server.ws(&format!("/chats/{}/ws", room["id"]));
    doomed.join("dee");
    assert_eq!(server.delete(&format!("/chats/{}", room["id"])).status, 200);
    assert_eq!(doomed.expect_close(), 1001);
    assert_eq!(reason("room_deleted"), 1.0);

    let room = server.create_room("Closing", "public", None);
    let mut moved = server.ws(&format!("/chats/{}/ws", room["id"]));
    moved.join("moe");
    let private = json!({"visibility": "private", "password": "password1"});
    assert_eq!(
        server
            .put(&format!("/chats/{}", room["id"]), &private)
            .status,
        200
    );
    assert_eq!(moved.expect_close(), 1008);
    assert_eq!(reason("access_changed"), 1.0);

    // A socket nobody reads never answers a ping.
    let mut deaf = server.ws("/chats/1/ws");
    deaf.join("deaf");
    let mut alive = server.ws("/chats/1/ws");
    alive.join("alive");
    alive.next_event_where("deaf's leave", |e| e["event_type"] == "leave");
    assert_eq!(reason("ping_timeout"), 1.0);
    drop(deaf);
}

// ---------------------------------------------------------------------------------------------
// Who may read it

/// A client outside `metrics_allow` gets exactly the 404 of an unknown path, whatever the
/// method: nothing tells it `/metrics` exists.
#[test]
fn metrics_are_a_404_outside_metrics_allow() {
    let server = TestServer::start_with(|c| {
        c.metrics_allow = vec![chitchat::AddrRange::parse("10.0.0.0/8").unwrap()];
    });
    let unknown = server.get("/no/such/path");
    for method in ["GET", "POST", "DELETE"] {
        let response = server.send(method, "/metrics", None, None);
        assert_eq!(
            (response.status, response.json()),
            (404, error_body(404, None)),
            "{method}"
        );
        assert_eq!(response.body, unknown.body);
    }
}

/// Behind a trusted proxy, the client is the forwarded address: a client on the internet
/// reaching the server through a proxy on 127.0.0.1 is not served `/metrics`.
#[test]
fn metrics_are_a_404_to_a_client_behind_a_trusted_proxy() {
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec![chitchat::AddrRange::parse("127.0.0.1").unwrap()];
    });
    let proxied = server.request(
        "GET",
        "/metrics",
        &[("X-Forwarded-For", "203.0.113.9")],
        None,
    );
    assert_eq!(
        (proxied.status, proxied.json()),
        (404, error_body(404, None))
    );
    let local = server.request("GET", "/metrics", &[("X-Forwarded-For", "127.0.0.1")], None);
    assert_eq!(local.status, 200);
}

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
/// out: the room write is 503 with 605, `/healthz` is 503 with 605 and `backend_up` 0.
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
    assert_eq!(scrape(&server).value("chitchat_backend_up", &[]), 0.0);

    other.execute_batch("ROLLBACK").unwrap();
    let healthy = await_health(&server, 200);
    assert_eq!(healthy.json(), json!({"status": true}));
    assert_eq!(scrape(&server).value("chitchat_backend_up", &[]), 1.0);
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
