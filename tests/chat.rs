//! Chat over WebSocket (SPEC, "Chat over WebSocket"; issue 4): the handshake (room by id or
//! title, the three ways to present a token, JSON refusals), the join/send/leave events and
//! their exact shape, the error events a socket gets for bad input, and how REST operations on
//! a room (GET, PUT, DELETE) meet its live sockets.
//!
//! Every test starts its own server and talks to it with tungstenite, as a browser or
//! `websocat` would. Events are compared whole with `json!`; only `time` is taken from the
//! event, after checking that it is RFC 3339.

mod common;

use common::{error_body, is_rfc3339, Client, TestServer};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{HeaderValue, Request};
use tungstenite::Message;

/// The password of every private or hidden room these tests create.
const PASSWORD: &str = "correct horse";

/// A client request for `path` on `server`, ready for extra headers.
fn request(server: &TestServer, path: &str) -> Request<()> {
    server
        .ws_url(path)
        .into_client_request()
        .expect("a valid ws:// URL")
}

/// `request` with one more header.
fn with_header(mut request: Request<()>, name: &'static str, value: &str) -> Request<()> {
    let value = HeaderValue::from_str(value).expect("a valid header value");
    request.headers_mut().insert(name, value);
    request
}

/// Performs a handshake that the server must refuse; returns the status and the JSON body.
/// Panics if the handshake succeeds, fails another way, or the body is not JSON.
fn refusal(server: &TestServer, request: Request<()>) -> (u16, Value) {
    let path = request.uri().to_string();
    match server.ws_request(request) {
        Ok(_) => panic!("the handshake to {path} was accepted"),
        Err(tungstenite::Error::Http(response)) => {
            let content_type = response
                .headers()
                .get("Content-Type")
                .and_then(|v| v.to_str().ok());
            let is_json = content_type.is_some_and(|t| t.starts_with("application/json"));
            assert!(
                is_json,
                "refusal of {path} has Content-Type {content_type:?}"
            );
            let body = response.body().as_deref().unwrap_or_default();
            let json = serde_json::from_slice(body).unwrap_or_else(|e| {
                panic!(
                    "refusal body of {path} is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            });
            (response.status().as_u16(), json)
        }
        Err(e) => panic!("the handshake to {path} failed without an HTTP refusal: {e}"),
    }
}

/// The WebSocket error event SPEC prescribes for `code`: the HTTP error body plus
/// `"event_type":"error"`.
fn error_event(code: u16, field: Option<&str>) -> Value {
    let mut event = error_body(code, field);
    event["event_type"] = json!("error");
    event
}

/// `expected` with the `time` of `event` filled in, after checking that time is RFC 3339, so
/// that `assert_eq!(event, timed(&event, json!({...})))` compares the whole event.
fn timed(event: &Value, mut expected: Value) -> Value {
    let time = event["time"]
        .as_str()
        .unwrap_or_else(|| panic!("event without a string time: {event}"));
    assert!(is_rfc3339(time), "time {time:?} is not RFC 3339 in {event}");
    expected["time"] = json!(time);
    expected
}

/// A broadcast event as SPEC defines it; `color` is the one `Client::join` uses.
fn chat_event(event_type: &str, name: &str, msg: &str, room_id: u64) -> Value {
    json!({"event_type": event_type, "name": name, "color": "#123456", "msg": msg, "room_id": room_id})
}

/// A broadcast `send` event: a chat event with its message id.
fn message_event(name: &str, msg: &str, room_id: u64, id: u64) -> Value {
    let mut event = chat_event("send", name, msg, room_id);
    event["id"] = json!(id);
    event
}

/// Creates a private room and returns its id.
fn private_room(server: &TestServer, title: &str) -> u64 {
    let room = server.create_room(title, "private", Some(PASSWORD));
    room["id"].as_u64().expect("a numeric room id")
}

/// Opens a socket to a private room with `name`'s token as a bearer header.
fn ws_with_token(server: &TestServer, room_id: u64, name: &str) -> Client {
    let token = server.token(&room_id.to_string(), name, PASSWORD);
    let request = with_header(
        request(server, &format!("/chats/{room_id}/ws")),
        "Authorization",
        &format!("Bearer {token}"),
    );
    server
        .ws_request(request)
        .unwrap_or_else(|e| panic!("handshake with {name}'s token failed: {e}"))
}

/// Sends a `leave` frame claiming `name`.
fn leave(client: &mut Client, name: &str) {
    client.send_json(&json!({"event_type": "leave", "name": name}));
}

/// Awaits the next error event on `client`.
fn next_error(client: &mut Client) -> Value {
    client.next_event_where("an error event", |e| e["event_type"] == "error")
}

/// The usernames in a room's `users`, sorted.
fn usernames(room: &Value) -> Vec<String> {
    let users = room["users"]
        .as_array()
        .unwrap_or_else(|| panic!("room without a users array: {room}"));
    let mut names: Vec<String> = users
        .iter()
        .map(|u| {
            u["username"]
                .as_str()
                .expect("a username string")
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Handshake

/// The public room is reached by its id, and a join there carries `room_id` 1.
#[test]
fn public_room_accepts_a_socket_by_id() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let event = alice.join("alice");
    assert_eq!(event["room_id"], 1);
}

/// The public room is reached by its percent-encoded title too.
#[test]
fn public_room_accepts_a_socket_by_title() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/Public%20Chat/ws");
    let event = alice.join("alice");
    assert_eq!(event["room_id"], 1);
}

/// Titles in the WebSocket path match case-insensitively, as in REST paths.
#[test]
fn room_title_in_the_socket_path_is_case_insensitive() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/public%20CHAT/ws");
    let event = alice.join("alice");
    assert_eq!(event["room_id"], 1);
}

/// An unknown room id is refused with 404 and the JSON body of code 101.
#[test]
fn unknown_room_id_refuses_the_handshake_with_404() {
    let server = TestServer::start();
    let (status, body) = refusal(&server, request(&server, "/chats/99/ws"));
    assert_eq!((status, body), (404, error_body(101, None)));
}

/// An unknown room title is refused with 404 and the JSON body of code 101.
#[test]
fn unknown_room_title_refuses_the_handshake_with_404() {
    let server = TestServer::start();
    let (status, body) = refusal(&server, request(&server, "/chats/No%20Such%20Room/ws"));
    assert_eq!((status, body), (404, error_body(101, None)));
}

/// A private room without a token is refused with 403 and code 403.
#[test]
fn private_room_without_token_refuses_the_handshake_with_403() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let (status, body) = refusal(&server, request(&server, &format!("/chats/{id}/ws")));
    assert_eq!((status, body), (403, error_body(403, None)));
}

/// A hidden room asked for by its title is refused without a token just like a private
/// one; asked for by id, it is not there at all (SPEC, Rooms: ids cannot be walked).
#[test]
fn hidden_room_without_token_refuses_the_handshake_403_by_title_404_by_id() {
    let server = TestServer::start();
    let room = server.create_room("Hideout", "hidden", Some(PASSWORD));
    let (status, body) = refusal(&server, request(&server, "/chats/Hideout/ws"));
    assert_eq!((status, body), (403, error_body(403, None)));
    let (status, body) = refusal(
        &server,
        request(&server, &format!("/chats/{}/ws", room["id"])),
    );
    assert_eq!((status, body), (404, error_body(101, None)));
}

/// A token given as the `Sec-WebSocket-Protocol` value opens the room, and the server echoes
/// that value back (browsers drop the connection otherwise).
#[test]
fn token_as_subprotocol_opens_a_private_room_and_is_echoed() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let token = server.token(&id.to_string(), "alice", PASSWORD);
    let request = with_header(
        request(&server, &format!("/chats/{id}/ws")),
        "Sec-WebSocket-Protocol",
        &token,
    );
    let mut alice = server
        .ws_request(request)
        .expect("the handshake with a subprotocol token succeeds");
    assert_eq!(alice.protocol.as_deref(), Some(token.as_str()));
    assert_eq!(alice.join("alice")["room_id"], id);
}

/// A token given as `Authorization: Bearer` opens the room.
#[test]
fn token_as_bearer_header_opens_a_private_room() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let mut alice = ws_with_token(&server, id, "alice");
    assert_eq!(alice.join("alice")["room_id"], id);
}

/// A token given as the `?token=` query parameter opens the room.
#[test]
fn token_as_query_parameter_opens_a_private_room() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let token = server.token(&id.to_string(), "alice", PASSWORD);
    let mut alice = server.ws(&format!("/chats/{id}/ws?token={token}"));
    assert_eq!(alice.join("alice")["room_id"], id);
}

/// A hidden room is reached by its exact title with a token.
#[test]
fn hidden_room_accepts_a_socket_by_title_with_token() {
    let server = TestServer::start();
    let room = server.create_room("Hideout", "hidden", Some(PASSWORD));
    let token = server.token("Hideout", "alice", PASSWORD);
    let mut alice = server.ws(&format!("/chats/Hideout/ws?token={token}"));
    assert_eq!(alice.join("alice")["room_id"], room["id"]);
}

/// A token signed for another room has a bad signature here: 401, code 401.
#[test]
fn token_of_another_room_refuses_the_handshake_with_401() {
    let server = TestServer::start();
    let first = private_room(&server, "First Room");
    let second = private_room(&server, "Second Room");
    let token = server.token(&first.to_string(), "alice", PASSWORD);
    let request = with_header(
        request(&server, &format!("/chats/{second}/ws")),
        "Authorization",
        &format!("Bearer {token}"),
    );
    let (status, body) = refusal(&server, request);
    assert_eq!((status, body), (401, error_body(401, None)));
}

/// A token whose signature was tampered with is refused with 401, code 401.
#[test]
fn tampered_token_refuses_the_handshake_with_401() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let token = server.token(&id.to_string(), "alice", PASSWORD);
    let (signed, signature) = token.rsplit_once('.').expect("a JWT has three parts");
    // Change the first signature character: the last one may only carry padding bits.
    let first = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{first}{}", &signature[1..]);
    let (status, body) = refusal(
        &server,
        request(&server, &format!("/chats/{id}/ws?token={tampered}")),
    );
    assert_eq!((status, body), (401, error_body(401, None)));
}

/// A string that is not a JWT at all is refused with 403, code 403.
#[test]
fn malformed_token_refuses_the_handshake_with_403() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let request = with_header(
        request(&server, &format!("/chats/{id}/ws")),
        "Authorization",
        "Bearer not-a-token",
    );
    let (status, body) = refusal(&server, request);
    assert_eq!((status, body), (403, error_body(403, None)));
}

/// A malformed token given as the subprotocol is refused with 403 too.
#[test]
fn malformed_token_as_subprotocol_refuses_the_handshake_with_403() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let request = with_header(
        request(&server, &format!("/chats/{id}/ws")),
        "Sec-WebSocket-Protocol",
        "garbage",
    );
    let (status, body) = refusal(&server, request);
    assert_eq!((status, body), (403, error_body(403, None)));
}

// ---------------------------------------------------------------------------------------------
// Join, send, leave

/// A join is broadcast with exactly the fields SPEC lists, the same event to every joined
/// socket, the joiner included.
#[test]
fn join_is_broadcast_with_its_exact_shape_to_every_joined_socket() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    let mut carol = server.ws("/chats/1/ws");
    let own = alice.join("alice");
    assert_eq!(
        own,
        timed(
            &own,
            chat_event("join", "alice", "alice entered the room.", 1)
        )
    );
    bob.join("bob");
    let own = carol.join("carol");
    assert_eq!(
        own,
        timed(
            &own,
            chat_event("join", "carol", "carol entered the room.", 1)
        )
    );
    let seen_by_alice = alice.next_event_where("carol's join", |e| {
        e["event_type"] == "join" && e["name"] == "carol"
    });
    let seen_by_bob = bob.next_event_where("carol's join", |e| {
        e["event_type"] == "join" && e["name"] == "carol"
    });
    assert_eq!(seen_by_alice, own);
    assert_eq!(seen_by_bob, own);
}

/// A join without a colour is broadcast with the default colour `#000000`.
#[test]
fn join_without_color_uses_the_default_color() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.send_json(&json!({"event_type": "join", "name": "alice"}));
    let event = alice.next_event_where("alice's join", |e| e["event_type"] == "join");
    let mut expected = chat_event("join", "alice", "alice entered the room.", 1);
    expected["color"] = json!("#000000");
    assert_eq!(event, timed(&event, expected));
}

/// A send is broadcast to every joined socket, the sender included, as one same event.
#[test]
fn send_is_broadcast_to_every_joined_socket_including_the_sender() {
    let server = TestServer::start();
    let mut clients: Vec<Client> = (0..3).map(|_| server.ws("/chats/1/ws")).collect();
    for (client, name) in clients.iter_mut().zip(["alice", "bob", "carol"]) {
        client.join(name);
    }
    clients[1].say("hello, room");
    let events: Vec<Value> = clients
        .iter_mut()
        .map(|c| c.next_event_where("bob's message", |e| e["event_type"] == "send"))
        .collect();
    assert_eq!(
        events[1],
        timed(&events[1], message_event("bob", "hello, room", 1, 1))
    );
    assert_eq!(events[0], events[1]);
    assert_eq!(events[2], events[1]);
}

/// A `leave` frame is broadcast as "<name> has left the room." to the others.
#[test]
fn leave_is_broadcast_with_its_message() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    leave(&mut alice, "alice");
    let event = bob.next_event_where("alice's leave", |e| e["event_type"] == "leave");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("leave", "alice", "alice has left the room.", 1)
        )
    );
}

/// A joined socket that closes (with a close frame) produces its leave event for the others.
#[test]
fn closing_a_joined_socket_broadcasts_its_leave() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    alice.socket.close(None).expect("send a close frame");
    let event = bob.next_event_where("alice's leave", |e| e["event_type"] == "leave");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("leave", "alice", "alice has left the room.", 1)
        )
    );
}

/// A joined socket whose TCP connection just goes away (no close frame) produces its leave too.
#[test]
fn dropping_a_joined_connection_broadcasts_its_leave() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    drop(alice);
    let event = bob.next_event_where("alice's leave", |e| e["event_type"] == "leave");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("leave", "alice", "alice has left the room.", 1)
        )
    );
}

/// After `leave` the socket stays open and can join again, under the same or another name,
/// and then speak under that name.
#[test]
fn a_socket_can_leave_and_join_again() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    leave(&mut alice, "alice");
    bob.next_event_where("alice's leave", |e| {
        e["event_type"] == "leave" && e["name"] == "alice"
    });
    alice.join("alice");
    bob.next_event_where("alice's second join", |e| {
        e["event_type"] == "join" && e["name"] == "alice"
    });
    leave(&mut alice, "alice");
    alice.join("alicia");
    alice.say("new name");
    let event = bob.next_event_where("alicia's message", |e| e["event_type"] == "send");
    assert_eq!(
        event,
        timed(&event, message_event("alicia", "new name", 1, 1))
    );
}

/// A name left by one socket is free for another socket to take.
#[test]
fn a_name_given_up_by_leave_can_be_taken_by_another_socket() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    let mut other = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    leave(&mut alice, "alice");
    bob.next_event_where("alice's leave", |e| e["event_type"] == "leave");
    let event = other.join("alice");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("join", "alice", "alice entered the room.", 1)
        )
    );
}

/// Go regression: a `send` frame could carry any name. The broadcast uses the joined name,
/// whatever the frame claims (SPEC, "What the Go version got wrong").
#[test]
fn send_with_another_name_is_broadcast_under_the_joined_name() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    alice.send_json(
        &json!({"event_type": "send", "name": "bob", "color": "#ff0000", "msg": "I am bob"}),
    );
    let event = bob.next_event_where("the spoofed message", |e| e["event_type"] == "send");
    assert_eq!(
        event,
        timed(&event, message_event("alice", "I am bob", 1, 1))
    );
}

/// A `leave` frame naming someone else takes away only the sender's own name.
#[test]
fn leave_with_another_name_leaves_only_the_sender() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    leave(&mut alice, "bob");
    let event = bob.next_event_where("a leave", |e| e["event_type"] == "leave");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("leave", "alice", "alice has left the room.", 1)
        )
    );
    bob.say("still here");
    let event = bob.next_event_where("bob's message", |e| e["event_type"] == "send");
    assert_eq!(
        event,
        timed(&event, message_event("bob", "still here", 1, 1))
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: an error event to that socket only, and the socket stays open

/// Go regression: a `send` before `join` crashed the Go server. Here it gets error 201 and
/// the socket stays usable.
#[test]
fn send_before_join_gets_error_201_and_socket_stays_open() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.say("who am I?");
    assert_eq!(next_error(&mut alice), error_event(201, None));
    alice.join("alice");
    alice.say("now I am alice");
    let event = alice.next_event_where("alice's message", |e| e["event_type"] == "send");
    assert_eq!(
        event,
        timed(&event, message_event("alice", "now I am alice", 1, 1))
    );
}

/// After `leave` the socket is no longer joined: a `send` gets error 201.
#[test]
fn send_after_leave_gets_error_201() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    leave(&mut alice, "alice");
    alice.say("am I still here?");
    assert_eq!(next_error(&mut alice), error_event(201, None));
}

/// A `leave` before `join` gets error 201 and the socket stays usable.
#[test]
fn leave_before_join_gets_error_201_and_socket_stays_open() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    leave(&mut alice, "alice");
    assert_eq!(next_error(&mut alice), error_event(201, None));
    alice.join("alice");
}

/// A text frame that is not JSON gets error 303, and the socket stays usable.
#[test]
fn invalid_json_gets_error_303_and_socket_stays_open() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice
        .socket
        .send(Message::text("{this is not json"))
        .expect("send a frame");
    assert_eq!(next_error(&mut alice), error_event(303, None));
    alice.join("alice");
}

/// A JSON value that is not an object gets error 303.
#[test]
fn json_that_is_not_an_object_gets_error_303() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice
        .socket
        .send(Message::text("[1, 2, 3]"))
        .expect("send a frame");
    assert_eq!(next_error(&mut alice), error_event(303, None));
    alice.join("alice");
}

/// An unknown `event_type` gets error 303 naming the field `event_type`.
#[test]
fn unknown_event_type_gets_error_303() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    alice.send_json(&json!({"event_type": "shout", "name": "alice", "msg": "hi"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("event_type")));
    alice.say("still joined");
    alice.next_event_where("alice's message", |e| e["event_type"] == "send");
}

/// A frame without `event_type` gets error 303 naming the field `event_type`.
#[test]
fn missing_event_type_gets_error_303() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.send_json(&json!({"name": "alice", "msg": "hi"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("event_type")));
    alice.join("alice");
}

/// A join without a name gets error 303 naming the field `name`.
#[test]
fn join_without_name_gets_error_303_field_name() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.send_json(&json!({"event_type": "join", "color": "#123456"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("name")));
    alice.join("alice");
}

/// A join whose name is only blanks gets error 303 naming the field `name` (names are trimmed).
#[test]
fn join_with_blank_name_gets_error_303_field_name() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.send_json(&json!({"event_type": "join", "name": "   ", "color": "#123456"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("name")));
}

/// A join whose name is longer than 32 characters gets error 303 naming the field `name`.
#[test]
fn join_with_too_long_name_gets_error_303_field_name() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.send_json(&json!({"event_type": "join", "name": "n".repeat(33), "color": "#123456"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("name")));
    alice.join(&"n".repeat(32));
}

/// A send with an empty `msg` gets error 303 naming the field `msg`, and nothing is broadcast.
#[test]
fn send_with_empty_msg_gets_error_303_field_msg() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    alice.say("");
    assert_eq!(next_error(&mut alice), error_event(303, Some("msg")));
    alice.say("after the empty one");
    let event = alice.next_event_where("the next message", |e| e["event_type"] == "send");
    assert_eq!(event["msg"], "after the empty one");
}

/// A send without `msg` gets error 303 naming the field `msg`.
#[test]
fn send_without_msg_gets_error_303_field_msg() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    alice.send_json(&json!({"event_type": "send", "name": "alice"}));
    assert_eq!(next_error(&mut alice), error_event(303, Some("msg")));
}

/// A binary frame gets error 303, and the socket stays usable.
#[test]
fn binary_frame_gets_error_303_and_socket_stays_open() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice.join("alice");
    alice
        .socket
        .send(Message::binary(
            br#"{"event_type":"send","msg":"hi"}"#.to_vec(),
        ))
        .expect("send a frame");
    assert_eq!(next_error(&mut alice), error_event(303, None));
    alice.say("text again");
    alice.next_event_where("alice's message", |e| e["event_type"] == "send");
}

/// An error event goes to the offending socket only: the others see nothing of it.
#[test]
fn error_event_goes_to_the_offending_socket_only() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    alice.join("alice");
    bob.join("bob");
    alice
        .socket
        .send(Message::text("not json"))
        .expect("send a frame");
    next_error(&mut alice);
    alice.say("marker");
    // Events reach bob in room order, so anything sent to him because of the bad frame
    // would come before the marker.
    let event = bob.next_event_where("alice's marker", |e| e["event_type"] != "join");
    assert_eq!(event["msg"], "marker", "bob got {event}");
}

/// A name already joined, in another case, gets error 202; the socket can then pick another.
#[test]
fn duplicate_name_case_insensitively_gets_error_202() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut other = server.ws("/chats/1/ws");
    alice.join("Alice");
    other.send_json(&json!({"event_type": "join", "name": "aLICE", "color": "#123456"}));
    assert_eq!(next_error(&mut other), error_event(202, Some("name")));
    other.join("alice2");
}

/// In a private room a name other than the token's `username` gets error 204; the token's
/// name then joins.
#[test]
fn private_room_join_with_another_name_than_the_token_gets_error_204() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let mut alice = ws_with_token(&server, id, "alice");
    alice.send_json(&json!({"event_type": "join", "name": "mallory", "color": "#123456"}));
    assert_eq!(next_error(&mut alice), error_event(204, Some("name")));
    let event = alice.join("alice");
    assert_eq!(
        event,
        timed(
            &event,
            chat_event("join", "alice", "alice entered the room.", id)
        )
    );
}

// ---------------------------------------------------------------------------------------------
// REST operations and live sockets

/// `GET /chats/1` lists exactly the names joined right now: not a socket that never joined,
/// not one that left, not one that closed.
#[test]
fn room_users_are_exactly_the_live_joined_names() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    let mut bob = server.ws("/chats/1/ws");
    let _lurker = server.ws("/chats/1/ws");
    let mut carol = server.ws("/chats/1/ws");
    let mut dave = server.ws("/chats/1/ws");
    for (client, name) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut dave, "dave"),
    ] {
        client.join(name);
    }
    let room = server.get("/chats/1").json();
    assert_eq!(usernames(&room), ["alice", "bob", "carol", "dave"]);
    leave(&mut carol, "carol");
    drop(dave);
    // The two leaves may come in either order.
    let mut left = [0, 1]
        .map(|_| alice.next_event_where("a leave", |e| e["event_type"] == "leave")["name"].take());
    left.sort_by_key(|name| name.to_string());
    assert_eq!(left, [json!("carol"), json!("dave")]);
    let room = server.get("/chats/1").json();
    assert_eq!(usernames(&room), ["alice", "bob"]);
    let user = &room["users"][0];
    assert_eq!(user["color"], "#123456");
    assert!(
        user["last_activity"].as_str().is_some_and(is_rfc3339),
        "last_activity in {user}"
    );
}

/// A private room lists its joined names to a token holder.
#[test]
fn private_room_users_are_listed_with_a_token() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let mut alice = ws_with_token(&server, id, "alice");
    alice.join("alice");
    let token = server.token(&id.to_string(), "bob", PASSWORD);
    let response = server.send("GET", &format!("/chats/{id}"), Some(&token), None);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(usernames(&response.json()), ["alice"]);
}

/// `DELETE` of a room tells its joined sockets with error event 101, then closes them with
/// 1001.
#[test]
fn deleting_a_room_sends_error_101_then_close_1001_to_its_sockets() {
    let server = TestServer::start();
    let id = private_room(&server, "Doomed Room");
    let mut alice = ws_with_token(&server, id, "alice");
    let mut bob = ws_with_token(&server, id, "bob");
    alice.join("alice");
    bob.join("bob");
    let response = server.delete(&format!("/chats/{id}"));
    assert_eq!(
        (response.status, response.json()),
        (200, json!({"status": true}))
    );
    for client in [&mut alice, &mut bob] {
        assert_eq!(next_error(client), error_event(101, None));
        assert_eq!(client.expect_close(), 1001);
    }
}

/// A socket in a deleted room that never joined is told and closed too: it is a live socket
/// of that room.
#[test]
fn deleting_a_room_closes_its_sockets_that_never_joined() {
    let server = TestServer::start();
    let id = private_room(&server, "Doomed Room");
    let mut lurker = ws_with_token(&server, id, "lurker");
    let response = server.delete(&format!("/chats/{id}"));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(next_error(&mut lurker), error_event(101, None));
    assert_eq!(lurker.expect_close(), 1001);
}

/// Once a room is deleted, a new socket to it is refused with 404, code 101.
#[test]
fn deleted_room_refuses_new_sockets_with_404() {
    let server = TestServer::start();
    let id = private_room(&server, "Doomed Room");
    let token = server.token(&id.to_string(), "alice", PASSWORD);
    let response = server.delete(&format!("/chats/{id}"));
    assert_eq!(response.status, 200, "{}", response.body);
    let path = format!("/chats/{id}/ws?token={token}");
    let (status, body) = refusal(&server, request(&server, &path));
    assert_eq!((status, body), (404, error_body(101, None)));
}

/// `PUT` on a room (new title and description) leaves its sockets connected and chatting.
#[test]
fn updating_a_room_keeps_its_sockets_connected() {
    let server = TestServer::start();
    let id = private_room(&server, "Secret Room");
    let mut alice = ws_with_token(&server, id, "alice");
    let mut bob = ws_with_token(&server, id, "bob");
    alice.join("alice");
    bob.join("bob");
    let patch = json!({"title": "Renamed Room", "description": "new words"});
    let response = server.put(&format!("/chats/{id}"), &patch);
    assert_eq!(response.status, 200, "{}", response.body);
    alice.say("still here");
    let event = bob.next_event_where("alice's message", |e| e["event_type"] == "send");
    assert_eq!(
        event,
        timed(&event, message_event("alice", "still here", id, 1))
    );
}

/// A client's ping is answered with a pong carrying the same payload (`websocat --ping`).
#[test]
fn client_ping_is_answered_with_pong() {
    let server = TestServer::start();
    let mut alice = server.ws("/chats/1/ws");
    alice
        .socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .expect("send a ping");
    match alice.next_message(common::TIMEOUT) {
        Some(Message::Pong(payload)) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}
