//! Message ids, history and resuming (SPEC, "Message ids, history and resuming").
//!
//! Every `send` a room broadcasts carries `"id"`, the room's message number (1, 2, 3... per
//! room, the same for every member, going on by one after a restart, even after `kill -9`);
//! joins and leaves carry none. A socket that joins first gets the room's kept messages
//! (`history_len`), each as it was broadcast plus `"replay":true`, then its own join; a join
//! with `"since": N` gets only the kept messages with an id above N, so a client that comes
//! back sees nothing twice. `GET /chats/<room>/messages[?since=N][&limit=L]` serves the same
//! kept messages, as broadcast, oldest first.
//!
//! Most tests use an in-process [`TestServer`]; the restart tests run the real binary
//! ([`Binary`]) so that it can be killed with SIGKILL. Every wait has a deadline.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    error_body, http_request, is_rfc3339, ws_connect, Binary, Client, Response, Scratch,
    TestServer, TIMEOUT,
};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// The password of every private and hidden room in these tests.
const PASSWORD: &str = "history-password";

// ---------------------------------------------------------------------------------------------
// Helpers

/// An event without its `time`, after checking that it is an RFC 3339 string.
fn without_time(event: &Value) -> Value {
    let mut copy = event.clone();
    let time = copy
        .as_object_mut()
        .unwrap_or_else(|| panic!("an event is a JSON object: {event}"))
        .remove("time")
        .unwrap_or_else(|| panic!("event without a time: {event}"));
    let time = time
        .as_str()
        .unwrap_or_else(|| panic!("time is not a string: {time}"));
    assert!(is_rfc3339(time), "time {time:?} is not RFC 3339");
    copy
}

/// A broadcast `send` event (without its time) from `name`, who joined with [`Client::join`]'s
/// colour.
fn message(name: &str, msg: &str, room_id: u64, id: u64) -> Value {
    json!({"event_type": "send", "name": name, "color": "#123456", "msg": msg,
           "room_id": room_id, "id": id})
}

/// The join event (without its time) of `name` in room `room_id`: no id.
fn join_event(name: &str, room_id: u64) -> Value {
    json!({"event_type": "join", "name": name, "color": "#123456",
           "msg": format!("{name} entered the room."), "room_id": room_id})
}

/// The leave event (without its time) of `name` in room `room_id`: no id.
fn leave_event(name: &str, room_id: u64) -> Value {
    json!({"event_type": "leave", "name": name, "color": "#123456",
           "msg": format!("{name} has left the room."), "room_id": room_id})
}

/// A broadcast event as it is replayed to a socket that joins later.
fn replayed(broadcast: &Value) -> Value {
    let mut event = broadcast.clone();
    event["replay"] = json!(true);
    event
}

/// The WebSocket error event for `code`, blaming `field`.
fn error_event(code: u16, field: Option<&str>) -> Value {
    let mut event = error_body(code, field);
    event["event_type"] = json!("error");
    event
}

/// `client` (joined) says each of `messages` and reads the broadcast of each back; returns
/// those events whole. Nothing else may come in between.
fn say_all(client: &mut Client, messages: &[&str]) -> Vec<Value> {
    messages
        .iter()
        .map(|msg| {
            client.say(msg);
            let event = client.next_event();
            assert_eq!(
                event["msg"], *msg,
                "the next event is the broadcast of {msg:?}"
            );
            event
        })
        .collect()
}

/// The next `count` events on `client`, which must all be `send` events.
fn next_sends(client: &mut Client, count: usize) -> Vec<Value> {
    (0..count)
        .map(|_| {
            let event = client.next_event();
            assert_eq!(event["event_type"], "send", "{event}");
            event
        })
        .collect()
}

/// Sends a join frame for `name` (the colour [`Client::join`] uses), without `since`.
fn send_join(client: &mut Client, name: &str) {
    client.send_json(&json!({"event_type": "join", "name": name, "color": "#123456"}));
}

/// Sends a join frame for `name` carrying `since` (any JSON, to test bad ones too).
fn join_since(client: &mut Client, name: &str, since: Value) {
    let frame = json!({"event_type": "join", "name": name, "color": "#123456", "since": since});
    client.send_json(&frame);
}

/// Asserts the next events on `client` are exactly `history` replayed, then `name`'s join.
fn assert_replay_then_join(client: &mut Client, history: &[Value], name: &str, room_id: u64) {
    for broadcast in history {
        assert_eq!(client.next_event(), replayed(broadcast));
    }
    assert_eq!(
        without_time(&client.next_event()),
        join_event(name, room_id)
    );
}

/// The ids of `events`, in order.
fn ids(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["id"].as_u64().unwrap_or_else(|| panic!("no id in {e}")))
        .collect()
}

/// The next text frame's exact text.
fn next_text(client: &mut Client) -> String {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match client.next_message(deadline.saturating_duration_since(Instant::now())) {
            Some(Message::Text(text)) => return text.as_str().to_owned(),
            Some(Message::Close(frame)) => panic!("socket closed ({frame:?}) awaiting a frame"),
            Some(_) => {}
            None => break,
        }
    }
    panic!("timed out awaiting a text frame");
}

/// `GET path` with an optional bearer token.
fn get(server: &TestServer, path: &str, token: Option<&str>) -> Response {
    server.send("GET", path, token, None)
}

/// Asserts `response` is 200 with a JSON body equal to `expected`.
fn assert_messages(response: &Response, expected: &[Value]) {
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.json(), json!(expected));
}

/// An in-memory server keeping `history_len` messages per room.
fn start_with_history(history_len: usize) -> TestServer {
    TestServer::start_with(|c| c.history_len = history_len)
}

/// A socket in room 1 joined as `name`.
fn joined(server: &TestServer, name: &str) -> Client {
    let mut client = server.ws("/chats/1/ws");
    client.join(name);
    client
}

/// Creates a `visibility` room (private and hidden ones with [`PASSWORD`]) and returns its id.
fn room(server: &TestServer, title: &str, visibility: &str) -> u64 {
    let password = (visibility != "public").then_some(PASSWORD);
    let room = server.create_room(title, visibility, password);
    room["id"].as_u64().expect("a numeric room id")
}

/// A socket in room `room_id`, opened with `name`'s token as a bearer header and joined.
fn joined_with_token(server: &TestServer, room_id: u64, name: &str, token: &str) -> Client {
    let mut request = server
        .ws_url(&format!("/chats/{room_id}/ws"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    let mut client = server
        .ws_request(request)
        .unwrap_or_else(|e| panic!("handshake with {name}'s token failed: {e}"));
    assert_eq!(without_time(&client.join(name)), join_event(name, room_id));
    client
}

// ---------------------------------------------------------------------------------------------
// Ids

/// A room's messages are numbered 1, 2, 3... in the order they are said, whoever says them,
/// and every member gets each message with the same id (and the same event, time included).
#[test]
fn ids_go_up_by_one_from_1_and_every_member_sees_the_same_ids() {
    let server = TestServer::start();
    let mut ann = joined(&server, "ann");
    let mut bob = joined(&server, "bob");
    let mut carl = joined(&server, "carl");
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    for client in [&mut ann, &mut bob] {
        client.next_event_where("carl's join", |e| e["name"] == "carl");
    }

    let script = [
        ("ann", "one"),
        ("bob", "two"),
        ("carl", "three"),
        ("ann", "four"),
    ];
    let mut seen: [Vec<Value>; 3] = Default::default();
    for (speaker, msg) in script {
        let mut members = [&mut ann, &mut bob, &mut carl];
        let at = ["ann", "bob", "carl"].iter().position(|n| *n == speaker);
        members[at.unwrap()].say(msg);
        for (member, events) in members.iter_mut().zip(&mut seen) {
            events.push(member.next_event());
        }
    }
    let expected: Vec<Value> = script
        .iter()
        .zip(1..)
        .map(|((name, msg), id)| message(name, msg, 1, id))
        .collect();
    let [ann_saw, bob_saw, carl_saw] = seen;
    assert_eq!(
        ann_saw.iter().map(without_time).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(bob_saw, ann_saw);
    assert_eq!(carl_saw, ann_saw);
}

/// Each room numbers its own messages: two rooms both start at 1, and messages said in one
/// room do not move the other's count.
#[test]
fn each_room_counts_its_own_ids_from_1() {
    let server = TestServer::start();
    let second = room(&server, "Second room", "public");
    let mut ann = joined(&server, "ann");
    let mut bob = server.ws(&format!("/chats/{second}/ws"));
    bob.join("bob");

    let first_room = say_all(&mut ann, &["a1"]);
    let second_room = say_all(&mut bob, &["b1", "b2"]);
    let first_room = [first_room, say_all(&mut ann, &["a2", "a3"])].concat();
    let second_room = [second_room, say_all(&mut bob, &["b3"])].concat();

    assert_eq!(
        first_room.iter().map(without_time).collect::<Vec<_>>(),
        [
            message("ann", "a1", 1, 1),
            message("ann", "a2", 1, 2),
            message("ann", "a3", 1, 3),
        ]
    );
    assert_eq!(
        second_room.iter().map(without_time).collect::<Vec<_>>(),
        [
            message("bob", "b1", second, 1),
            message("bob", "b2", second, 2),
            message("bob", "b3", second, 3),
        ]
    );
}

/// Only messages are numbered: join and leave events carry no id, and do not use one up.
#[test]
fn joins_and_leaves_carry_no_id_and_take_no_number() {
    let server = TestServer::start();
    let mut ann = joined(&server, "ann");
    say_all(&mut ann, &["first"]);
    let mut bob = server.ws("/chats/1/ws");
    bob.join("bob");
    assert_eq!(without_time(&ann.next_event()), join_event("bob", 1));
    bob.send_json(&json!({"event_type": "leave"}));
    assert_eq!(without_time(&ann.next_event()), leave_event("bob", 1));
    let said = say_all(&mut ann, &["second"]);
    assert_eq!(without_time(&said[0]), message("ann", "second", 1, 2));
}

/// On the wire, `id` comes right after `time`, and a replayed event is the broadcast text
/// with `"replay":true` as its last field.
#[test]
fn on_the_wire_id_follows_time_and_replay_comes_last() {
    let server = TestServer::start();
    let mut ann = joined(&server, "ann");
    ann.say("exact");
    let live = next_text(&mut ann);
    let time = serde_json::from_str::<Value>(&live).unwrap()["time"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        live,
        format!(
            r##"{{"event_type":"send","name":"ann","color":"#123456","msg":"exact","room_id":1,"time":"{time}","id":1}}"##
        )
    );
    let mut bob = server.ws("/chats/1/ws");
    send_join(&mut bob, "bob");
    assert_eq!(
        next_text(&mut bob),
        format!(
            r##"{{"event_type":"send","name":"ann","color":"#123456","msg":"exact","room_id":1,"time":"{time}","id":1,"replay":true}}"##
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Ids across restarts (the binary)

/// The database file, in the binary's working directory.
const DB: &str = "chitchat.db";

/// Waits until the database at `db` holds `count` messages of room `room_id` and that room's
/// last message id is `count`: the history writer commits a moment after the broadcast. Reads
/// the file read-only, as another process would.
fn await_saved(db: &Path, room_id: u64, count: u64) {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let connection = rusqlite::Connection::open_with_flags(db, flags).expect("open the database");
    let saved = || -> (u64, u64) {
        connection
            .query_row(
                "SELECT (SELECT count(*) FROM messages WHERE room_id = ?1),
                        (SELECT last_message_id FROM rooms WHERE id = ?1)",
                [room_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("read the messages table")
    };
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = saved();
        if now == (count, count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out awaiting {count} saved messages of room {room_id}: (rows, last id) = {now:?}"
        );
        // Polling another process's commits: there is no event to wait for.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Says five messages on the binary at `ws` in room 1; returns their broadcasts.
fn say_five(ws: std::net::SocketAddr) -> Vec<Value> {
    let mut ann = ws_connect(ws, "/chats/1/ws");
    ann.join("ann");
    let said = say_all(&mut ann, &["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(ids(&said), [1, 2, 3, 4, 5]);
    said
}

/// After a restart on the same database: a socket that joins gets the five messages said
/// before it, then its messages go on from id 6; `/messages` has all seven.
fn assert_ids_go_on_after_restart(data: &Scratch, before: &[Value]) {
    let mut server = Binary::spawn_on_database(data, "history-test-secret");
    let (http, ws) = server.ready();
    let mut bob = ws_connect(ws, "/chats/1/ws");
    send_join(&mut bob, "bob");
    assert_replay_then_join(&mut bob, before, "bob", 1);
    let after = say_all(&mut bob, &["m6", "m7"]);
    assert_eq!(
        after.iter().map(without_time).collect::<Vec<_>>(),
        [message("bob", "m6", 1, 6), message("bob", "m7", 1, 7)]
    );
    let kept = http_request(http, "GET", "/chats/1/messages", &[], None);
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(kept.json(), json!([before, &after[..]].concat()));
}

/// `kill -9` after the messages are on disk: the restarted server goes on from the last id
/// written (6, 7, ...), never handing out an id again.
#[test]
fn ids_continue_by_one_after_kill_9_and_restart() {
    let data = Scratch::new("history-ids-kill-9");
    let mut server = Binary::spawn_on_database(&data, "history-test-secret");
    let (_, ws) = server.ready();
    let said = say_five(ws);
    await_saved(&data.path(DB), 1, 5);
    server.kill();
    let exit = server.wait_exit();
    assert_eq!(exit.status.signal(), Some(9), "{}", exit.output);

    assert_ids_go_on_after_restart(&data, &said);
}

/// A clean stop (SIGTERM) writes out what is queued; the next server goes on from there.
#[test]
fn ids_continue_by_one_after_sigterm_and_restart() {
    let data = Scratch::new("history-ids-sigterm");
    let mut server = Binary::spawn_on_database(&data, "history-test-secret");
    let (_, ws) = server.ready();
    let said = say_five(ws);
    server.signal("TERM");
    let exit = server.wait_exit();
    assert_eq!(exit.status.code(), Some(0), "{}", exit.output);

    assert_ids_go_on_after_restart(&data, &said);
}

/// With `history_len: 0` nothing is kept, yet ids still never go back: after a restart on
/// the same database the next message gets the next id, not 1 again (SPEC: ids survive a
/// restart, never reused).
#[test]
fn ids_continue_after_a_restart_with_history_len_0() {
    let data = Scratch::new("history-ids-len-0");
    let start = || {
        TestServer::start_with(|c| {
            c.db_path = Some(data.path(DB));
            c.history_len = 0;
        })
    };
    let mut server = start();
    let mut ann = joined(&server, "ann");
    assert_eq!(ids(&say_all(&mut ann, &["one", "two"])), [1, 2]);
    drop(ann);
    server.stop();

    let server = start();
    let mut bob = joined(&server, "bob");
    let said = say_all(&mut bob, &["three"]);
    assert_eq!(without_time(&said[0]), message("bob", "three", 1, 3));
}

// ---------------------------------------------------------------------------------------------
// Replay

/// The live broadcast of a message has no `replay` field; the same message replayed to a
/// socket that joins later is the same event (same id, same time) with `"replay":true`, and
/// what comes after the join is live again.
#[test]
fn only_replayed_events_carry_replay_true() {
    let server = TestServer::start();
    let mut ann = joined(&server, "ann");
    let live = say_all(&mut ann, &["said before bob"]).remove(0);
    assert_eq!(without_time(&live), message("ann", "said before bob", 1, 1));

    let mut bob = server.ws("/chats/1/ws");
    send_join(&mut bob, "bob");
    let replay = bob.next_event();
    assert_eq!(replay, replayed(&live));
    assert_eq!(replay["time"], live["time"]);
    assert_eq!(without_time(&bob.next_event()), join_event("bob", 1));
    assert_eq!(without_time(&ann.next_event()), join_event("bob", 1));

    let after = say_all(&mut ann, &["said after bob"]).remove(0);
    assert_eq!(without_time(&after), message("ann", "said after bob", 1, 2));
    assert_eq!(bob.next_event(), after);
}

// ---------------------------------------------------------------------------------------------
// Joining with `since`

/// A server with room 1 holding `msgs` said by ann (who stays joined); returns the server,
/// ann and the broadcasts.
fn room_with(history_len: usize, msgs: &[&str]) -> (TestServer, Client, Vec<Value>) {
    let server = start_with_history(history_len);
    let mut ann = joined(&server, "ann");
    let said = say_all(&mut ann, msgs);
    (server, ann, said)
}

const FIVE: [&str; 5] = ["m1", "m2", "m3", "m4", "m5"];

/// `since: 0` asks for everything kept: all five messages are replayed, then the join.
#[test]
fn join_with_since_0_replays_everything_kept() {
    let (server, _ann, said) = room_with(50, &FIVE);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(0));
    assert_replay_then_join(&mut bob, &said, "bob", 1);
}

/// `since: 3` replays only the messages with ids 4 and 5.
#[test]
fn join_with_since_in_the_middle_replays_only_newer_messages() {
    let (server, _ann, said) = room_with(50, &FIVE);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(3));
    assert_replay_then_join(&mut bob, &said[3..], "bob", 1);
}

/// `since` at the newest id replays nothing: the next event is the socket's own join.
#[test]
fn join_with_since_at_the_newest_id_replays_nothing() {
    let (server, _ann, _) = room_with(50, &FIVE);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(5));
    assert_replay_then_join(&mut bob, &[], "bob", 1);
}

/// `since` beyond the newest id (a client from before a restore, say) replays nothing.
#[test]
fn join_with_since_beyond_the_newest_id_replays_nothing() {
    let (server, _ann, _) = room_with(50, &FIVE);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(1000));
    assert_replay_then_join(&mut bob, &[], "bob", 1);
}

/// `since` older than the oldest kept message replays everything kept (here ids 3 to 5 of
/// five, with `history_len: 3`); the gap from 1 to 3 tells the client what it missed.
#[test]
fn join_with_since_older_than_the_oldest_kept_replays_everything_kept() {
    let (server, _ann, said) = room_with(3, &FIVE);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(1));
    assert_replay_then_join(&mut bob, &said[2..], "bob", 1);
    assert_eq!(ids(&said[2..]), [3, 4, 5]);
}

/// A `since` that is not a whole number of zero or more gets error 303 naming `since`; the
/// join does not happen (nobody sees it), the socket stays open and can join after.
#[test]
fn join_with_a_bad_since_gets_error_303_field_since_and_can_join_after() {
    let (server, mut ann, said) = room_with(50, &["kept"]);
    let mut bob = server.ws("/chats/1/ws");
    for bad in [json!(-1), json!("x"), json!(1.5), json!("1")] {
        join_since(&mut bob, "bob", bad.clone());
        assert_eq!(
            bob.next_event(),
            error_event(303, Some("since")),
            "since {bad}"
        );
    }
    join_since(&mut bob, "bob", json!(0));
    assert_replay_then_join(&mut bob, &said, "bob", 1);
    // The refused joins were never broadcast: the first thing ann hears is the real one.
    assert_eq!(without_time(&ann.next_event()), join_event("bob", 1));
}

// ---------------------------------------------------------------------------------------------
// Resuming

/// A socket that leaves and joins again with `since` (the last id it saw) gets only what was
/// said while it was away, then its join, then the chat live: nothing twice.
#[test]
fn rejoining_after_leave_with_since_sees_nothing_twice() {
    let (server, mut ann, first) = room_with(50, &["m1", "m2"]);
    let mut bob = server.ws("/chats/1/ws");
    send_join(&mut bob, "bob");
    assert_replay_then_join(&mut bob, &first, "bob", 1);
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    let live = say_all(&mut ann, &["m3"]);
    assert_eq!(bob.next_event(), live[0]);

    bob.send_json(&json!({"event_type": "leave"}));
    assert_eq!(without_time(&ann.next_event()), leave_event("bob", 1));
    let missed = say_all(&mut ann, &["m4", "m5"]);

    join_since(&mut bob, "bob", json!(3));
    assert_replay_then_join(&mut bob, &missed, "bob", 1);
    ann.next_event_where("bob's second join", |e| e["name"] == "bob");
    let next = say_all(&mut ann, &["m6"]);
    assert_eq!(bob.next_event(), next[0]);
    assert_eq!(ids(&next), [6]);
}

/// A client whose socket closed reconnects on a new socket with `since`: it gets only what
/// was said in between, then its join, then the chat live: nothing twice.
#[test]
fn reconnecting_on_a_new_socket_with_since_sees_nothing_twice() {
    let (server, mut ann, _) = room_with(50, &["m1", "m2"]);
    let mut bob = server.ws("/chats/1/ws");
    send_join(&mut bob, "bob");
    let seen = next_sends(&mut bob, 2);
    assert_eq!(ids(&seen), [1, 2]);
    drop(bob);
    assert_eq!(
        without_time(&ann.next_event_where("bob's leave", |e| e["event_type"] == "leave")),
        leave_event("bob", 1)
    );
    let missed = say_all(&mut ann, &["m3", "m4"]);

    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(2));
    assert_replay_then_join(&mut bob, &missed, "bob", 1);
    ann.next_event_where("bob's new join", |e| e["name"] == "bob");
    let next = say_all(&mut ann, &["m5"]);
    assert_eq!(bob.next_event(), next[0]);
}

// ---------------------------------------------------------------------------------------------
// GET /chats/<room>/messages

/// A public room's `/messages` is its kept messages exactly as they were broadcast (no
/// `replay` field), oldest first; by id or by title; `[]` before anyone spoke.
#[test]
fn messages_of_a_public_room_are_its_kept_events_as_broadcast() {
    let server = TestServer::start();
    assert_messages(&get(&server, "/chats/1/messages", None), &[]);
    let mut ann = joined(&server, "ann");
    let said = say_all(&mut ann, &["one", "two", "three"]);
    assert_eq!(
        said.iter().map(without_time).collect::<Vec<_>>(),
        [
            message("ann", "one", 1, 1),
            message("ann", "two", 1, 2),
            message("ann", "three", 1, 3),
        ]
    );
    assert_messages(&get(&server, "/chats/1/messages", None), &said);
    assert_messages(&get(&server, "/chats/public%20CHAT/messages", None), &said);
}

/// `since=N` keeps the messages with an id above N; `limit=L` the newest L of those; both
/// together narrow in turn.
#[test]
fn messages_since_and_limit_pick_the_newer_and_the_newest() {
    let (server, _ann, said) = room_with(3, &FIVE);
    let kept = &said[2..];
    let cases: [(&str, &[Value]); 9] = [
        ("", kept),
        ("?since=0", kept),
        ("?since=3", &said[3..]),
        ("?since=5", &[]),
        ("?since=99", &[]),
        ("?limit=1", &said[4..]),
        ("?limit=3", kept),
        ("?since=1&limit=2", &said[3..]),
        ("?limit=2&since=4", &said[4..]),
    ];
    for (query, expected) in cases {
        let response = get(&server, &format!("/chats/1/messages{query}"), None);
        assert_eq!(response.status, 200, "{query}: {}", response.body);
        assert_eq!(response.json(), json!(expected), "{query}");
    }
}

/// A private room's messages need its token: 403 without one, 200 with it.
#[test]
fn messages_of_a_private_room_need_its_token() {
    let server = TestServer::start();
    let id = room(&server, "Staff room", "private");
    let token = server.token(&id.to_string(), "ann", PASSWORD);
    let mut ann = joined_with_token(&server, id, "ann", &token);
    let said = say_all(&mut ann, &["staff only"]);
    assert_eq!(without_time(&said[0]), message("ann", "staff only", id, 1));

    let refused = get(&server, &format!("/chats/{id}/messages"), None);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json(), error_body(403, None));
    assert_messages(
        &get(&server, &format!("/chats/{id}/messages"), Some(&token)),
        &said,
    );
}

/// A hidden room's messages are found by its exact title and need its token too.
#[test]
fn messages_of_a_hidden_room_need_its_token() {
    let server = TestServer::start();
    let id = room(&server, "Back room", "hidden");
    let token = server.token("Back%20room", "ann", PASSWORD);
    let mut ann = joined_with_token(&server, id, "ann", &token);
    let said = say_all(&mut ann, &["psst"]);

    let refused = get(&server, "/chats/Back%20room/messages", None);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json(), error_body(403, None));
    assert_messages(
        &get(&server, "/chats/Back%20room/messages", Some(&token)),
        &said,
    );
    assert_messages(
        &get(&server, &format!("/chats/{id}/messages"), Some(&token)),
        &said,
    );
}

/// An unknown room, by id or title, is 404 with code 101.
#[test]
fn messages_of_an_unknown_room_are_404_code_101() {
    let server = TestServer::start();
    for path in ["/chats/99/messages", "/chats/No%20such%20room/messages"] {
        let response = get(&server, path, None);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.json(), error_body(101, None), "{path}");
    }
}

/// A `since` or `limit` that is not a whole number, a `limit` of 0 or above `history_len`:
/// 400 with code 105, naming the parameter.
#[test]
fn a_bad_since_or_limit_is_400_code_105_naming_it() {
    let server = start_with_history(3);
    let cases = [
        ("since=x", "since"),
        ("since=-1", "since"),
        ("since=1.5", "since"),
        ("since=", "since"),
        ("limit=0", "limit"),
        ("limit=4", "limit"),
        ("limit=x", "limit"),
        ("limit=-1", "limit"),
        ("since=1&limit=0", "limit"),
    ];
    for (query, field) in cases {
        let response = get(&server, &format!("/chats/1/messages?{query}"), None);
        assert_eq!(response.status, 400, "{query}");
        assert_eq!(response.json(), error_body(105, Some(field)), "{query}");
    }
}

/// `/messages` is read-only: POST is 405 with `Allow: GET` and the JSON error body.
#[test]
fn post_to_messages_is_405_allowing_get() {
    let server = TestServer::start();
    let response = server.post("/chats/1/messages", &json!({"msg": "hi"}));
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET"));
    assert_eq!(response.json(), error_body(405, None));
}

// ---------------------------------------------------------------------------------------------
// history_len: 0

/// `history_len: 0` keeps nothing: a joining socket's first event is its own join, ids still
/// count, and `/messages` is `[]`.
#[test]
fn history_len_0_replays_nothing_and_messages_is_empty() {
    let (server, mut ann, said) = room_with(0, &["not kept"]);
    assert_eq!(ids(&said), [1]);
    let mut bob = server.ws("/chats/1/ws");
    join_since(&mut bob, "bob", json!(0));
    assert_replay_then_join(&mut bob, &[], "bob", 1);
    ann.next_event_where("bob's join", |e| e["name"] == "bob");
    assert_eq!(ids(&say_all(&mut ann, &["neither"])), [2]);
    assert_messages(&get(&server, "/chats/1/messages", None), &[]);
    assert_messages(&get(&server, "/chats/1/messages?since=0", None), &[]);
}

/// With `history_len: 0` the limit range 1..=0 is empty: every `limit` is refused with 400,
/// code 105, field `limit`.
#[test]
fn history_len_0_refuses_every_limit() {
    let server = start_with_history(0);
    for limit in ["1", "0", "50"] {
        let response = get(&server, &format!("/chats/1/messages?limit={limit}"), None);
        assert_eq!(response.status, 400, "limit={limit}");
        assert_eq!(
            response.json(),
            error_body(105, Some("limit")),
            "limit={limit}"
        );
    }
}
