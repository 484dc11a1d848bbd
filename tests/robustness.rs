//! Robustness of the chat (SPEC, "Chat over WebSocket", "Ordering and delivery"; issue 4):
//! one order for everyone, every event to a socket that keeps reading, a bounded queue that
//! closes a slow reader with 1008 instead of slowing the room, dead peers found by ping/pong,
//! oversized frames closed with 1009, shutdown announced with 1001, and many sockets at once.
//!
//! Nothing here sleeps to synchronise: tests await the event they expect, and every wait ends
//! at the harness's `TIMEOUT`, so a broken server fails a test instead of hanging it. Threads
//! meet at a [`Gate`], which also gives up after `TIMEOUT`.

mod common;

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{Client, TestServer, TIMEOUT};
use serde_json::{json, Value};
use tungstenite::Message;

/// A meeting point for `needed` threads that gives up (panics) after [`TIMEOUT`], so one
/// thread failing early cannot leave the others waiting forever.
struct Gate {
    arrived: Mutex<usize>,
    all_here: Condvar,
    needed: usize,
}

impl Gate {
    fn new(needed: usize) -> Arc<Gate> {
        Arc::new(Gate {
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
            needed,
        })
    }

    /// Counts this thread in and waits until all `needed` threads are.
    fn pass(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_here.notify_all();
        let (arrived, wait) = self
            .all_here
            .wait_timeout_while(arrived, TIMEOUT, |n| *n < self.needed)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "only {} of {} threads reached the gate",
            *arrived,
            self.needed
        );
    }
}

/// Spawns a client thread with a small stack: the tests below run hundreds of them.
fn spawn<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name)
        .stack_size(256 * 1024)
        .spawn(work)
        .expect("spawn a client thread")
}

/// Joins a client thread, re-raising its panic with the thread's name.
fn finish<T>(handle: JoinHandle<T>) -> T {
    let name = handle.thread().name().unwrap_or("client").to_owned();
    handle
        .join()
        .unwrap_or_else(|_| panic!("{name} failed (its panic is printed above)"))
}

/// Reads events until `count` messages (`send` events) have arrived; returns them as
/// `name: msg`, in arrival order.
fn read_messages(client: &mut Client, count: usize) -> Vec<String> {
    let mut messages = Vec::with_capacity(count);
    while messages.len() < count {
        let what = format!("message {} of {count}", messages.len() + 1);
        let event = client.next_event_where(&what, |e| e["event_type"] == "send");
        messages.push(format!(
            "{}: {}",
            event["name"].as_str().unwrap_or("?"),
            event["msg"].as_str().unwrap_or("?")
        ));
    }
    messages
}

/// An event as one line, `"send" "name" "msg"`, for comparing whole sequences.
fn describe(event: &Value) -> String {
    format!("{} {} {}", event["event_type"], event["name"], event["msg"])
}

/// Whether `event` is `name`'s leave.
fn is_leave_of(event: &Value, name: &str) -> bool {
    event["event_type"] == "leave" && event["name"] == name
}

/// Whether `event` is the message `msg`.
fn is_message(event: &Value, msg: &str) -> bool {
    event["event_type"] == "send" && event["msg"] == msg
}

/// After the server's close frame, reads once more so tungstenite sends its close reply and
/// the closing handshake completes.
fn complete_close(client: &mut Client) {
    let _ = client.socket.read();
}

// ---------------------------------------------------------------------------------------------
// Bad input does not disturb anyone

/// Go regression: a `send` before `join` crashed the whole Go process. Here the sender gets
/// error 201, and a joined socket next to it keeps chatting with it.
#[test]
fn send_before_join_does_not_disturb_other_sockets() {
    let server = TestServer::start();
    let mut bob = server.ws("/chats/1/ws");
    bob.join("bob");
    let mut eve = server.ws("/chats/1/ws");
    eve.say("crash, please");
    let error = eve.next_event_where("an error event", |e| e["event_type"] == "error");
    assert_eq!(error["error"]["code"], 201, "{error}");
    bob.say("still alive");
    bob.next_event_where("bob's message", |e| is_message(e, "still alive"));
    eve.join("eve");
    eve.say("hello bob");
    let event = bob.next_event_where("eve's message", |e| is_message(e, "hello bob"));
    assert_eq!(event["name"], "eve");
    // The server still takes new sockets.
    server.ws("/chats/1/ws").join("carol");
}

/// A frame larger than `max_message_bytes` closes that socket with 1009, and the client gets
/// the close frame (not a reset).
#[test]
fn oversized_frame_closes_the_socket_with_1009() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1024);
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    alice.say(&"x".repeat(2000));
    assert_eq!(alice.expect_close(), 1009);
}

/// A socket closed for an oversized frame leaves the room; the others keep chatting.
#[test]
fn oversized_frame_disturbs_no_other_socket() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1024);
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    alice.say(&"x".repeat(2000));
    bob.next_event_where("alice's leave", |e| is_leave_of(e, "alice"));
    bob.say(&"y".repeat(900));
    bob.next_event_where("bob's message", |e| {
        e["event_type"] == "send" && e["name"] == "bob"
    });
}

/// A frame just under `max_message_bytes` is a normal message.
#[test]
fn frame_within_max_message_bytes_is_accepted() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 1024);
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    let msg = "z".repeat(900);
    alice.say(&msg);
    alice.next_event_where("alice's message", |e| is_message(e, &msg));
}

/// Bytes that are not WebSocket at all, sent to the WebSocket port, disturb no chat.
#[test]
fn garbage_on_the_websocket_port_disturbs_no_one() {
    use std::io::Write;
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    let mut raw = std::net::TcpStream::connect(server.ws_addr).expect("connect");
    raw.write_all(b"\x00\xffGARBAGE\r\n\r\n")
        .expect("write garbage");
    drop(raw);
    let mut bob = server.ws("/chats/1/ws");
    bob.join("bob");
    bob.say("fine");
    alice.next_event_where("bob's message", |e| is_message(e, "fine"));
}

// ---------------------------------------------------------------------------------------------
// Ordering and delivery

/// Two senders send 100 messages each at the same time; all three sockets (the two senders
/// and a listener) see all 200 in one and the same order, each sender's in its own order.
/// (The senders flood on purpose: `msgs_per_second` is off.)
#[test]
fn all_sockets_see_the_same_order_of_messages() {
    const PER_SENDER: usize = 100;
    let server = TestServer::start_with(|c| c.msgs_per_second = 0);
    let gate = Gate::new(3);
    let mut handles = vec![];
    for name in ["alice", "bob", "carol"] {
        let mut client = server.ws("/chats/1/ws");
        client.join(name);
        let gate = Arc::clone(&gate);
        handles.push(spawn(name.to_owned(), move || {
            gate.pass();
            if name != "carol" {
                for i in 0..PER_SENDER {
                    client.say(&format!("{i}"));
                }
            }
            read_messages(&mut client, 2 * PER_SENDER)
        }));
    }
    let seen: Vec<Vec<String>> = handles.into_iter().map(finish).collect();
    assert_eq!(seen[0], seen[1], "alice and bob saw different orders");
    assert_eq!(seen[0], seen[2], "alice and carol saw different orders");
    for sender in ["alice", "bob"] {
        let own: Vec<&String> = seen[0]
            .iter()
            .filter(|m| m.starts_with(&format!("{sender}: ")))
            .collect();
        let expected: Vec<String> = (0..PER_SENDER).map(|i| format!("{sender}: {i}")).collect();
        assert_eq!(
            own,
            expected.iter().collect::<Vec<_>>(),
            "{sender}'s messages out of order"
        );
    }
}

/// A socket that joins and then never reads does not slow the room: while more than 2 MB of
/// messages flow (and as long as it takes to fill that socket's buffers), the two reading
/// sockets get every message; the slow socket's queue overflows, its leave is broadcast, and
/// when it finally reads, its last frame is a close with code 1008. (The flooder floods on
/// purpose: `msgs_per_second` is off.)
#[test]
fn a_socket_that_stops_reading_is_closed_with_1008_and_slows_no_one() {
    /// Bytes of text in each message; a frame stays well under `max_message_bytes`.
    const MSG_BYTES: usize = 3000;
    /// Messages sent before the flooder waits until both reading sockets have them.
    const WINDOW: usize = 8;
    /// At least this much is sent, whatever happens.
    const MIN_FLOOD_BYTES: usize = 2 * 1024 * 1024 + 1;
    /// If the slow socket is still a member after this much, the test fails.
    const MAX_FLOOD_BYTES: usize = 64 * 1024 * 1024;
    let server = TestServer::start_with(|c| {
        c.send_queue_len = 16;
        c.msgs_per_second = 0;
    });
    let mut slow = server.ws("/chats/1/ws");
    slow.join("slow");
    let mut flooder = server.ws("/chats/1/ws");
    flooder.join("flooder");
    let mut reader = server.ws("/chats/1/ws");
    reader.join("reader");
    flooder.next_event_where("reader's join", |e| {
        e["event_type"] == "join" && e["name"] == "reader"
    });

    // The reader records every message and leave until the flooder's "done", and reports
    // each one to the flooder, which never gets more than a window ahead of it: only the slow
    // socket can fall behind, whatever the machine's load.
    let (progress, reader_progress) = mpsc::channel();
    let reader = spawn("reader".into(), move || {
        let mut seen = vec![];
        loop {
            let event = reader.next_event_where("the flood", |e| e["event_type"] != "join");
            seen.push(describe(&event));
            // The flooder stops listening once it has seen "done".
            let _ = progress.send(describe(&event));
            if is_message(&event, "done") {
                return seen;
            }
        }
    });
    let await_reader = |last: &str| loop {
        let seen = reader_progress
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("the reader did not get message {last:.12}..."));
        if seen == last {
            break;
        }
    };

    let filler = "x".repeat(MSG_BYTES);
    let mut seen = vec![];
    let mut sent_bytes = 0;
    let mut slow_left = false;
    let mut next = 0;
    while !(slow_left && sent_bytes >= MIN_FLOOD_BYTES) {
        assert!(
            sent_bytes < MAX_FLOOD_BYTES,
            "the slow socket was never closed after {sent_bytes} bytes"
        );
        for i in next..next + WINDOW {
            flooder.say(&format!("{i} {filler}"));
            sent_bytes += MSG_BYTES;
        }
        next += WINDOW;
        let last = format!("{} {filler}", next - 1);
        loop {
            let event = flooder.next_event_where("the flood", |e| e["event_type"] != "join");
            seen.push(describe(&event));
            slow_left |= is_leave_of(&event, "slow");
            if is_message(&event, &last) {
                break;
            }
        }
        await_reader(seen.last().expect("the flooder saw its last message"));
    }
    flooder.say("done");
    loop {
        let event = flooder.next_event_where("the flooder's done", |e| e["event_type"] != "join");
        seen.push(describe(&event));
        if is_message(&event, "done") {
            break;
        }
    }

    let expected_messages: Vec<String> = (0..next)
        .map(|i| format!("\"send\" \"flooder\" \"{i} {filler}\""))
        .chain(["\"send\" \"flooder\" \"done\"".into()])
        .collect();
    let messages: Vec<String> = seen
        .iter()
        .filter(|e| e.starts_with("\"send\""))
        .cloned()
        .collect();
    assert!(
        messages == expected_messages,
        "the flooder missed or reordered messages"
    );
    let leaves: Vec<&String> = seen.iter().filter(|e| e.starts_with("\"leave\"")).collect();
    assert_eq!(leaves, ["\"leave\" \"slow\" \"slow has left the room.\""]);
    let reader_seen = finish(reader);
    assert!(
        reader_seen == seen,
        "the reader saw other events, or another order, than the flooder"
    );
    assert_eq!(slow.expect_close(), 1008);
}

/// A room whose channels are far smaller than the burst slows its speaker down instead of
/// dropping anyone: with `send_queue_len` 4, one speaker writes 500 messages without
/// waiting, and four sockets that keep reading (however far behind their threads fall)
/// each get all 500 in order, and nobody is closed or leaves. (Issue 10: at 500 x 1,000
/// msg/s sockets that were reading were closed as slow readers.) `msgs_per_second` is off:
/// the speaker floods on purpose.
#[test]
fn sockets_that_keep_reading_get_every_event_when_their_channels_are_full() {
    const MESSAGES: usize = 500;
    let server = TestServer::start_with(|c| {
        c.send_queue_len = 4;
        c.msgs_per_second = 0;
    });
    let mut speaker = server.ws("/chats/1/ws");
    speaker.join("speaker");
    let readers: Vec<Client> = (0..4)
        .map(|i| {
            let mut reader = server.ws("/chats/1/ws");
            reader.join(&format!("reader{i}"));
            reader
        })
        .collect();
    speaker.next_event_where("the last reader's join", |e| e["name"] == "reader3");
    let readers: Vec<_> = readers
        .into_iter()
        .enumerate()
        .map(|(i, mut reader)| {
            spawn(format!("reader{i}"), move || {
                let messages = read_messages(&mut reader, MESSAGES);
                (messages, reader)
            })
        })
        .collect();
    for i in 0..MESSAGES {
        speaker.say(&format!("m{i}"));
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("speaker: m{i}")).collect();
    assert_eq!(read_messages(&mut speaker, MESSAGES), expected);
    let mut still_open = Vec::new();
    for reader in readers {
        let (messages, reader) = finish(reader);
        assert!(
            messages == expected,
            "a reader missed or reordered messages"
        );
        still_open.push(reader);
    }
    let users = server.get("/chats/1").json()["users"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(users, 5, "someone was dropped");
}

/// A reader whose socket takes little at a time (a small receive buffer) and who reads
/// nothing while long messages come gets every one of them, whole and in order, once it
/// reads again: what its socket did not take when the room's waker wrote for its sleeping
/// thread waits in the socket's own buffer and goes out after, never cut or reordered.
#[test]
fn a_reader_whose_socket_fills_gets_every_frame_whole_when_it_reads_again() {
    const MESSAGES: usize = 20;
    let server = TestServer::start_with(|c| {
        c.max_message_bytes = 256 * 1024;
        c.msgs_per_second = 0;
    });
    let mut reader = server.ws_with_receive_buffer("/chats/1/ws", 4096);
    reader.join("reader");
    let mut speaker = server.ws("/chats/1/ws");
    speaker.join("speaker");
    reader.next_event_where("the speaker's join", |e| {
        e["event_type"] == "join" && e["name"] == "speaker"
    });
    // 4 MB in all: more than loopback lets a sender's kernel buffer hold (its send buffer
    // starts at 2 x 10 segments of 64 KiB and grows).
    let long = "x".repeat(200_000);
    for i in 0..MESSAGES {
        speaker.say(&format!("{i} {long}"));
    }
    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("speaker: {i} {long}"))
        .collect();
    // The speaker hears all of them first: the reader read nothing while they were sent.
    assert!(
        read_messages(&mut speaker, MESSAGES) == expected,
        "the speaker missed, cut or reordered its own messages"
    );
    assert!(
        read_messages(&mut reader, MESSAGES) == expected,
        "the reader missed, cut or reordered messages"
    );
    let users = server.get("/chats/1").json()["users"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(users, 2, "the reader was dropped");
}

/// A socket that never reads (so never answers a ping) is dropped after `pong_timeout` and its
/// leave is broadcast; a socket that keeps reading (tungstenite answers pings as it reads) is
/// pinged and stays.
#[test]
fn a_socket_that_never_answers_pings_is_dropped_and_a_reading_one_stays() {
    let pong_timeout = Duration::from_millis(600);
    let server = TestServer::start_with(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = pong_timeout;
    });
    let mut deaf = server.ws("/chats/1/ws");
    deaf.join("deaf");
    let mut alive = server.ws("/chats/1/ws");
    alive.join("alive");
    let event = alive.next_event_where("deaf's leave", |e| e["event_type"] == "leave");
    assert_eq!(event["name"], "deaf", "{event}");
    // Keep reading for three more pong timeouts: a live socket is not dropped.
    let mut pings = 0;
    let until = Instant::now() + 3 * pong_timeout;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match alive.next_message(left) {
            Some(Message::Ping(_)) => pings += 1,
            Some(Message::Close(frame)) => panic!("the reading socket was closed: {frame:?}"),
            Some(_) => {}
            None => break,
        }
    }
    assert!(pings > 0, "no ping arrived in {:?}", 3 * pong_timeout);
    alive.say("still here");
    alive.next_event_where("alive's message", |e| is_message(e, "still here"));
    drop(deaf);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// Stopping the server (as SIGTERM does) sends close 1001 to a joined socket.
#[test]
fn shutdown_closes_joined_sockets_with_1001() {
    let mut server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    // Read on other threads, so a server that waits for close replies gets them.
    let alice = spawn("alice".into(), move || {
        let code = alice.expect_close();
        complete_close(&mut alice);
        code
    });
    server.stop();
    assert_eq!(finish(alice), 1001);
}

/// Stopping the server sends close 1001 to a socket that never joined, too.
#[test]
fn shutdown_closes_sockets_that_never_joined_with_1001() {
    let mut server = TestServer::start();
    let mut lurker = server.ws("/chats/1/ws");
    // Prove the socket is fully set up before stopping: it gets an answer to bad input.
    lurker.say("before join");
    lurker.next_event_where("an error event", |e| e["event_type"] == "error");
    let lurker = spawn("lurker".into(), move || {
        let code = lurker.expect_close();
        complete_close(&mut lurker);
        code
    });
    server.stop();
    assert_eq!(finish(lurker), 1001);
}

// ---------------------------------------------------------------------------------------------
// Many sockets at once

/// 200 sockets at once: 100 join and stay; then, all at the same time, the 100 stayers each
/// send a message while 100 more sockets join, send a message and leave (half by `leave`,
/// half by dropping the connection). Every stayer sees all 200 messages, and all stayers see
/// them in the same order. Each queue holds more than a socket's whole share of events
/// (about 600), so this shows no event is lost to a race, apart from the slow-reader rule
/// (a socket starved of CPU on a loaded machine could otherwise be closed with 1008).
/// All 200 come from 127.0.0.1, so `max_connections_per_ip` is off.
#[test]
fn two_hundred_sockets_join_chat_and_leave_concurrently_without_losing_a_message() {
    const STAYERS: usize = 100;
    const VISITORS: usize = 100;
    let server = TestServer::start_with(|c| {
        c.send_queue_len = 4096;
        c.max_connections_per_ip = 0;
    });
    let gate = Gate::new(STAYERS + VISITORS);
    let mut stayers = vec![];
    for i in 0..STAYERS {
        let gate = Arc::clone(&gate);
        let mut client = server.ws("/chats/1/ws");
        stayers.push(spawn(format!("stayer {i}"), move || {
            client.join(&format!("stayer{i}"));
            gate.pass();
            client.say(&format!("hello from stayer{i}"));
            read_messages(&mut client, STAYERS + VISITORS)
        }));
    }
    let mut visitors = vec![];
    for i in 0..VISITORS {
        let gate = Arc::clone(&gate);
        let ws_addr = server.ws_addr;
        visitors.push(spawn(format!("visitor {i}"), move || {
            gate.pass();
            let mut client = connect_to(ws_addr);
            let name = format!("visitor{i}");
            client.join(&name);
            let msg = format!("hello from {name}");
            client.say(&msg);
            client.next_event_where("the visitor's own message", |e| is_message(e, &msg));
            if i % 2 == 0 {
                client.send_json(&json!({"event_type": "leave", "name": name}));
            }
        }));
    }
    for visitor in visitors {
        finish(visitor);
    }
    let seen: Vec<Vec<String>> = stayers.into_iter().map(finish).collect();
    let mut expected: Vec<String> = (0..STAYERS)
        .map(|i| format!("stayer{i}: hello from stayer{i}"))
        .chain((0..VISITORS).map(|i| format!("visitor{i}: hello from visitor{i}")))
        .collect();
    expected.sort();
    let mut first = seen[0].clone();
    first.sort();
    assert!(
        first == expected,
        "stayer 0 did not see every message exactly once"
    );
    for (i, other) in seen.iter().enumerate().skip(1) {
        assert!(
            other == &seen[0],
            "stayer {i} saw another order than stayer 0"
        );
    }
}

/// Opens a socket to the public room on the WebSocket listener at `ws_addr`, from a thread
/// that has no `TestServer` (the harness's `ws` needs one).
fn connect_to(ws_addr: std::net::SocketAddr) -> Client {
    let stream = std::net::TcpStream::connect(ws_addr).expect("connect to the WebSocket listener");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let url = format!("ws://{ws_addr}/chats/1/ws");
    let (socket, response) =
        tungstenite::client(url, tungstenite::stream::MaybeTlsStream::Plain(stream))
            .unwrap_or_else(|e| panic!("handshake failed: {e}"));
    assert_eq!(response.status(), 101);
    Client {
        socket,
        protocol: None,
    }
}
