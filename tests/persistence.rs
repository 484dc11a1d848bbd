//! Persistence (issue: rooms and recent messages survive a restart). What one server saved in
//! its SQLite file, the next server started on that file has: the rooms with their ids, times
//! and password hashes (so tokens issued before still open them), the id counter, and each
//! room's last `history_len` messages, replayed to a socket that joins before its own join.
//! A deleted room stays deleted, a `kill -9` loses no room that was answered 201, and a
//! database that is damaged, locked or from a newer ChitChat stops start-up with exit code 2.
//!
//! Most tests restart an in-process server on the same file ([`TestServer::stop`], then a new
//! one); those about crashes and exit codes run the real binary ([`Binary`]). Every wait has
//! a deadline.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;

use common::{
    error_body, http_request, is_rfc3339, room_without_times, ws_connect, Binary, Client, Exit,
    Scratch, TestServer, TIMEOUT,
};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

const SECRET: &str = "persistence-test-secret";

/// A scratch directory holding one test's database, removed when dropped.
type DataDir = Scratch;

/// The database file's name (the binary finds it as `chitchat.db` in its working directory).
const DB: &str = "chitchat.db";

/// An in-process server on `db`, with the same secret every time, as a restart would have.
fn start_on(db: &Path) -> TestServer {
    TestServer::start_with(|c| {
        c.db_path = Some(db.to_owned());
        c.secret_key = Some(SECRET.into());
    })
}

/// An in-memory server keeping `history_len` messages per room.
fn start_with_history(history_len: usize) -> TestServer {
    TestServer::start_with(|c| c.history_len = history_len)
}

/// `client` (already joined) says each of `messages`; returns the events broadcast for them.
fn say_all(client: &mut Client, messages: &[&str]) -> Vec<Value> {
    messages
        .iter()
        .map(|msg| {
            client.say(msg);
            client.next_event_where(&format!("the broadcast of {msg:?}"), |e| {
                e["event_type"] == "send" && e["msg"] == *msg
            })
        })
        .collect()
}

/// An event without its `time`, after checking that it is RFC 3339.
fn without_time(event: &Value) -> Value {
    let mut event = event.clone();
    let time = event["time"].take();
    assert!(is_rfc3339(time.as_str().unwrap_or_default()), "{time}");
    event.as_object_mut().unwrap().remove("time");
    event
}

/// The join event `name` (colour `#123456`, as [`Client::join`] sends) gets in room `room_id`.
fn join_event(name: &str, room_id: u64) -> Value {
    json!({"event_type": "join", "name": name, "color": "#123456",
           "msg": format!("{name} entered the room."), "room_id": room_id})
}

/// Sends `bob`'s join and asserts the next events are exactly `history` (the events as
/// broadcast, now marked `"replay":true`), then his own join.
fn assert_replay_then_join(bob: &mut Client, history: &[Value], room_id: u64) {
    bob.send_json(&json!({"event_type": "join", "name": "bob", "color": "#123456"}));
    for broadcast in history {
        let mut replayed = broadcast.clone();
        replayed["replay"] = json!(true);
        assert_eq!(bob.next_event(), replayed);
    }
    assert_eq!(without_time(&bob.next_event()), join_event("bob", room_id));
}

// ---------------------------------------------------------------------------------------------
// Restart (in-process)

/// Rooms come back after a restart exactly as they were: ids, titles, visibility, times.
#[test]
fn restart_keeps_rooms_with_their_ids_and_times() {
    let data = DataDir::new("keeps-rooms");
    let mut server = start_on(&data.path(DB));
    server.create_room("Alpha room", "public", None);
    server.create_room("Secret room", "private", Some("password1"));
    server.create_room("Hidden room", "hidden", Some("password2"));
    let listed = server.get("/chats").json();
    let hidden = server.get("/chats/Hidden%20room").json();
    server.stop();

    let server = start_on(&data.path(DB));
    let after = server.get("/chats");
    assert_eq!(after.status, 200);
    assert_eq!(after.json(), listed);
    let rooms: Vec<Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(room_without_times)
        .collect();
    assert_eq!(
        rooms,
        [
            json!({"id": 1, "title": "Public Chat", "description": "Everyone is welcome here.",
                   "visibility": "public", "users": []}),
            json!({"id": 2, "title": "Alpha room", "description": "", "visibility": "public",
                   "users": []}),
            json!({"id": 3, "title": "Secret room", "description": "", "visibility": "private"}),
        ]
    );
    assert_eq!(server.get("/chats/Hidden%20room").json(), hidden);
    assert_eq!(
        room_without_times(&hidden),
        json!({"id": 4, "title": "Hidden room", "description": "", "visibility": "hidden"})
    );
}

/// The id counter survives a restart: a room created after it gets the next id, even when
/// the room that had the highest id was deleted before the restart.
#[test]
fn ids_continue_after_a_restart_and_are_never_reused() {
    let data = DataDir::new("ids");
    let mut server = start_on(&data.path(DB));
    server.create_room("Room two", "public", None);
    server.create_room("Room three", "public", None);
    assert_eq!(server.delete("/chats/3").status, 200);
    server.stop();

    let server = start_on(&data.path(DB));
    let room = server.create_room("Room four", "public", None);
    assert_eq!(
        room_without_times(&room),
        json!({"id": 4, "title": "Room four", "description": "", "visibility": "public",
               "users": []})
    );
}

/// A room deleted before a restart does not come back, not even the default room.
#[test]
fn a_room_deleted_before_a_restart_stays_deleted() {
    let data = DataDir::new("deleted");
    let mut server = start_on(&data.path(DB));
    server.create_room("Doomed room", "public", None);
    assert_eq!(server.delete("/chats/2").json(), json!({"status": true}));
    assert_eq!(server.delete("/chats/1").json(), json!({"status": true}));
    server.stop();

    let server = start_on(&data.path(DB));
    assert_eq!(server.get("/chats").json(), json!([]));
    for path in [
        "/chats/1",
        "/chats/2",
        "/chats/Doomed%20room",
        "/chats/Public%20Chat",
    ] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.json(), error_body(101, None), "{path}");
    }
}

/// A token issued before a restart (with the same secret) still opens its private room:
/// the room keeps its id and password hash, which the token's key is made of.
#[test]
fn tokens_issued_before_a_restart_stay_valid() {
    let data = DataDir::new("tokens");
    let mut server = start_on(&data.path(DB));
    server.create_room("Secret room", "private", Some("password1"));
    let token = server.token("2", "ann", "password1");
    server.stop();

    let server = start_on(&data.path(DB));
    let response = server.send("GET", "/chats/2", Some(&token), None);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        room_without_times(&response.json()),
        json!({"id": 2, "title": "Secret room", "description": "", "visibility": "private",
               "users": []})
    );
    let mut request = server.ws_url("/chats/2/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", token.parse().unwrap());
    let mut ann = server
        .ws_request(request)
        .expect("the old token opens the socket");
    assert_eq!(without_time(&ann.join("ann")), join_event("ann", 2));
}

/// A room's messages come back after a restart, and a socket that joins gets them first,
/// exactly as they were broadcast (same text, same time), then its own join.
#[test]
fn restart_keeps_history_and_replays_it_to_a_socket_that_joins() {
    let data = DataDir::new("history");
    let mut server = start_on(&data.path(DB));
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    let said = say_all(&mut ann, &["one", "two", "three"]);
    server.stop();

    let server = start_on(&data.path(DB));
    let mut bob = server.ws("/chats/1/ws");
    assert_replay_then_join(&mut bob, &said, 1);
}

/// Deleting a room deletes its saved history: nothing of it is left in the file.
#[test]
fn deleting_a_room_deletes_its_saved_history() {
    let data = DataDir::new("delete-history");
    let mut server = start_on(&data.path(DB));
    server.create_room("Short lived", "public", None);
    let mut ann = server.ws("/chats/2/ws");
    ann.join("ann");
    say_all(&mut ann, &["soon gone"]);
    assert_eq!(server.delete("/chats/2").status, 200);
    server.stop();

    let db = rusqlite::Connection::open(data.path(DB)).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM messages"), 0);
    assert_eq!(count("SELECT count(*) FROM rooms WHERE id = 2"), 0);
}

// ---------------------------------------------------------------------------------------------
// History replay (in memory)

/// A joining socket gets the room's last `history_len` messages, oldest first, then its join.
#[test]
fn a_joining_socket_gets_the_last_history_len_messages_oldest_first_then_its_join() {
    let server = start_with_history(3);
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    let said = say_all(&mut ann, &["m1", "m2", "m3", "m4", "m5"]);
    let mut bob = server.ws("/chats/1/ws");
    assert_replay_then_join(&mut bob, &said[2..], 1);
    // The others see only the join: the replay went to bob alone.
    assert_eq!(without_time(&ann.next_event()), join_event("bob", 1));
}

/// Only messages are replayed: joins and leaves are not history.
#[test]
fn only_messages_are_replayed_not_joins_or_leaves() {
    let server = start_with_history(10);
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    let first = say_all(&mut ann, &["before carl"]);
    let mut carl = server.ws("/chats/1/ws");
    carl.join("carl");
    carl.send_json(&json!({"event_type": "leave"}));
    ann.next_event_where("carl's leave", |e| e["event_type"] == "leave");
    let second = say_all(&mut ann, &["after carl"]);
    let mut bob = server.ws("/chats/1/ws");
    assert_replay_then_join(&mut bob, &[first, second].concat(), 1);
}

/// `history_len: 0` keeps no history: a joining socket's first event is its own join.
#[test]
fn history_len_0_keeps_no_history() {
    let server = start_with_history(0);
    let mut ann = server.ws("/chats/1/ws");
    ann.join("ann");
    say_all(&mut ann, &["not kept"]);
    let mut bob = server.ws("/chats/1/ws");
    assert_replay_then_join(&mut bob, &[], 1);
}

// ---------------------------------------------------------------------------------------------
// The binary: crashes and start-up errors

/// `POST /chats` that tolerates the server dying: `None` if the connection fails or is cut
/// before the whole response arrives. The room comes back as `GET` shows it: without the
/// `owner_token` only the 201 carries.
fn try_create_room(addr: SocketAddr, title: &str) -> Option<(u16, Value)> {
    let body = json!({"title": title, "visibility": "public"}).to_string();
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let head = format!(
        "POST /chats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut room: Value = serde_json::from_str(body).ok()?;
    room.as_object_mut()?.remove("owner_token");
    Some((status, room))
}

/// The promise: a 201 means the room survives a crash. Eight clients create rooms as
/// fast as they can; the server is killed with SIGKILL in the middle; after a restart every
/// room that was answered 201 is there, exactly as it was answered. (The clients create
/// rooms as fast as they can on purpose: `rooms_per_minute` is off.)
#[test]
fn kill_9_during_a_burst_of_room_creation_loses_no_room_answered_201() {
    const CLIENTS: usize = 8;
    const KILL_AFTER: usize = 200;
    let data = DataDir::new("kill-9");
    let mut server = Binary::spawn_on_database_with(&data, SECRET, json!({"rooms_per_minute": 0}));
    let (http, _) = server.ready();
    let (created, answered) = mpsc::channel::<Value>();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let created = created.clone();
            std::thread::spawn(move || {
                for n in 0.. {
                    match try_create_room(http, &format!("burst {client}-{n}")) {
                        Some((201, room)) => {
                            let _ = created.send(room);
                        }
                        Some((status, body)) => panic!("create answered {status}: {body}"),
                        None => return,
                    }
                }
            })
        })
        .collect();
    drop(created);
    let mut rooms = Vec::new();
    while rooms.len() < KILL_AFTER {
        let room = answered
            .recv_timeout(TIMEOUT)
            .expect("rooms being created before the deadline");
        rooms.push(room);
    }
    server.kill();
    server.wait_exit();
    for client in clients {
        client.join().expect("a client thread");
    }
    rooms.extend(answered.try_iter());

    let mut restarted = Binary::spawn_on_database(&data, SECRET);
    let (http, _) = restarted.ready();
    let listed = http_request(http, "GET", "/chats", &[], None).json();
    let by_id: HashMap<u64, &Value> = listed
        .as_array()
        .expect("a list of rooms")
        .iter()
        .map(|room| (room["id"].as_u64().unwrap(), room))
        .collect();
    for room in &rooms {
        let id = room["id"].as_u64().unwrap();
        assert_eq!(by_id.get(&id), Some(&room), "room {id} was answered 201");
    }
}

/// Runs the binary on `data` and asserts that it exits with code 2, its last line of stderr
/// being `chitchat: database chitchat.db: <problem>`.
fn assert_start_fails(data: &DataDir, problem: &str) {
    let Exit { status, stderr, .. } = Binary::spawn_on_database(data, SECRET).wait_exit();
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    let expected = format!("chitchat: database chitchat.db: {problem}");
    assert_eq!(stderr.lines().last(), Some(&*expected), "stderr: {stderr}");
}

/// A file that is not a database stops start-up with exit code 2 and a message naming it,
/// and the file is left as it was: nothing is reset.
#[test]
fn a_corrupt_database_file_exits_2_naming_the_file() {
    let data = DataDir::new("corrupt");
    let garbage = "this is not an SQLite database\n".repeat(500);
    std::fs::write(data.path(DB), &garbage).unwrap();
    assert_start_fails(&data, "cannot read: file is not a database");
    assert_eq!(std::fs::read_to_string(data.path(DB)).unwrap(), garbage);
}

/// A database another process holds locked stops start-up with exit code 2.
#[test]
fn a_locked_database_exits_2() {
    let data = DataDir::new("locked");
    let holder = rusqlite::Connection::open(data.path(DB)).unwrap();
    holder
        .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x); BEGIN EXCLUSIVE;")
        .unwrap();
    assert_start_fails(&data, "cannot take the write lock: database is locked");
    drop(holder);
}

/// A second server on a database that a running one holds stops with exit code 2 instead
/// of handing out the same room ids (the lock file beside the database is held for life).
#[test]
fn a_second_server_on_the_same_database_exits_2() {
    let data = DataDir::new("second-server");
    let mut first = Binary::spawn_on_database(&data, SECRET);
    first.ready();
    assert_start_fails(&data, "in use by another ChitChat server");
}

/// A database written by a newer ChitChat (a schema version this one does not know) stops
/// start-up with exit code 2 rather than being guessed at.
#[test]
fn a_database_from_a_newer_chitchat_exits_2() {
    let data = DataDir::new("newer");
    let db = rusqlite::Connection::open(data.path(DB)).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    assert_start_fails(
        &data,
        "schema version 99 is not one this ChitChat knows (0 to 2); use the ChitChat that wrote it",
    );
}

/// Through the binary: `db_path` (here relative to the working directory) is where rooms
/// and history go, and SIGTERM writes out the history still queued before exiting 0.
#[test]
fn the_binary_keeps_rooms_and_history_across_sigterm_and_restart() {
    let data = DataDir::new("binary-restart");
    let mut server = Binary::spawn_on_database(&data, SECRET);
    let (http, ws) = server.ready();
    let (status, created) = try_create_room(http, "Kept room").expect("a response");
    assert_eq!(status, 201);
    let mut ann = ws_connect(ws, "/chats/2/ws");
    ann.join("ann");
    let said = say_all(&mut ann, &["kept", "also kept"]);
    server.signal("TERM");
    assert_eq!(server.wait_exit().status.code(), Some(0));
    assert!(data.path(DB).exists());

    let mut server = Binary::spawn_on_database(&data, SECRET);
    let (http, ws) = server.ready();
    let room = http_request(http, "GET", "/chats/2", &[], None);
    assert_eq!(room.json(), created);
    let mut bob = ws_connect(ws, "/chats/2/ws");
    assert_replay_then_join(&mut bob, &said, 2);
}
