//! The REST side of rooms (SPEC, "Rooms" and "REST API"): every endpoint but the WebSocket,
//! the validation rules, hidden rooms, lookup by title, routing errors, and the Go defects
//! this rewrite fixes (ids reused after a delete, the bcrypt hash in every response).
//!
//! Each test starts its own server, talks to it over a real socket, and asserts the status
//! and the whole JSON body; room timestamps are checked apart (RFC 3339) and then left out.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Barrier;

use common::{
    error_body, http_request, read_response, room_without_times, Response, TestServer, ADMIN_KEY,
};
use serde_json::{json, Value};

/// A public room nobody has joined, as every client sees it (timestamps left out).
fn public_view(id: u64, title: &str, description: &str) -> Value {
    json!({"id": id, "title": title, "description": description, "visibility": "public", "users": []})
}

/// A private or hidden room as seen without its token: no `users` key at all.
fn closed_view(id: u64, title: &str, description: &str, visibility: &str) -> Value {
    json!({"id": id, "title": title, "description": description, "visibility": visibility})
}

/// A private or hidden room nobody has joined, as its token holder sees it.
fn token_view(id: u64, title: &str, description: &str, visibility: &str) -> Value {
    let mut room = closed_view(id, title, description, visibility);
    room["users"] = json!([]);
    room
}

/// Asserts `response` has `status` and a body equal to `expected` once room times are dropped.
fn assert_room(response: &Response, status: u16, expected: &Value) {
    assert_eq!(response.status, status, "body: {}", response.body);
    assert_eq!(room_without_times(&response.json()), *expected);
}

/// Asserts `response` is the JSON error `code` (blaming `field`) with HTTP `status`.
fn assert_error(response: &Response, status: u16, code: u16, field: Option<&str>) {
    assert_eq!(response.status, status, "body: {}", response.body);
    assert_eq!(response.json(), error_body(code, field));
}

/// POSTs a raw room body and returns the answer.
fn create(server: &TestServer, body: Value) -> Response {
    server.post("/chats", &body)
}

/// The id of a room JSON.
fn id_of(room: &Value) -> u64 {
    room["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("room has no integer id: {room}"))
}

/// `DELETE` with an optional token.
fn delete(server: &TestServer, path: &str, token: Option<&str>) -> Response {
    server.send("DELETE", path, token, None)
}

/// `PUT` with an optional token.
fn put(server: &TestServer, path: &str, token: Option<&str>, body: &Value) -> Response {
    server.send("PUT", path, token, Some(body))
}

/// The `GET /chats` listing with timestamps left out, ordered by id.
fn listing(server: &TestServer) -> Vec<Value> {
    let response = server.get("/chats");
    assert_eq!(response.status, 200, "body: {}", response.body);
    let rooms = response.json();
    let rooms = rooms
        .as_array()
        .unwrap_or_else(|| panic!("GET /chats is not an array: {rooms}"));
    let mut rooms: Vec<Value> = rooms.iter().map(room_without_times).collect();
    rooms.sort_by_key(id_of);
    rooms
}

/// The default room as `GET /chats/1` shows it (SPEC fixes its id, title and visibility but
/// not its description, which is taken as served).
fn default_room(server: &TestServer) -> Value {
    let response = server.get("/chats/1");
    assert_eq!(response.status, 200, "body: {}", response.body);
    let room = room_without_times(&response.json());
    let description = room["description"]
        .as_str()
        .unwrap_or_else(|| panic!("no description: {room}"));
    public_view(1, "Public Chat", description)
}

// ---------------------------------------------------------------------------------------
// The default room, listing, creating
// ---------------------------------------------------------------------------------------

/// At start there is one room: id 1, "Public Chat", public, nobody in it.
#[test]
fn server_starts_with_public_chat_as_room_1() {
    let server = TestServer::start();
    let response = server.get("/chats/1");
    assert_eq!(response.status, 200, "body: {}", response.body);
    let room = room_without_times(&response.json());
    assert!(
        room["description"]
            .as_str()
            .is_some_and(|d| d.chars().count() <= 70),
        "the default room's description breaks the description rule: {room}"
    );
    assert_eq!(room, default_room(&server));
}

/// On a fresh server `GET /chats` lists exactly the default room.
#[test]
fn listing_at_start_is_only_the_public_chat() {
    let server = TestServer::start();
    assert_eq!(listing(&server), vec![default_room(&server)]);
}

/// `GET /chats` shows public and private rooms (private ones without `users`) and leaves
/// hidden rooms out.
#[test]
fn listing_leaves_hidden_rooms_out() {
    let server = TestServer::start();
    server.create_room("Open Room", "public", None);
    server.create_room("Closed Room", "private", Some("closed-password"));
    server.create_room("Secret Room", "hidden", Some("hidden-password"));
    assert_eq!(
        listing(&server),
        vec![
            default_room(&server),
            public_view(2, "Open Room", ""),
            closed_view(3, "Closed Room", "", "private"),
        ]
    );
}

/// `GET /chats?limit=L&after=ID` pages the listing by id: rooms with an id above `ID`, at
/// most `L`, hidden rooms skipped; the ids tell the next page's `after`.
#[test]
fn listing_pages_by_id_with_limit_and_after() {
    let server = TestServer::start();
    server.create_room("Open Room", "public", None);
    server.create_room("Secret Room", "hidden", Some("hidden-password"));
    server.create_room("Closed Room", "private", Some("closed-password"));
    server.create_room("Last Room", "public", None);
    let ids = |query: &str| -> Vec<u64> {
        let response = server.get(&format!("/chats?{query}"));
        assert_eq!(response.status, 200, "{query}: {}", response.body);
        response
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect()
    };
    assert_eq!(ids("limit=2"), [1, 2]);
    assert_eq!(ids("limit=2&after=2"), [4, 5]);
    assert_eq!(ids("after=4"), [5]);
    assert_eq!(ids("after=5&limit=1000"), Vec::<u64>::new());
    assert_eq!(
        listing(&server).len(),
        4,
        "without parameters, every listed room"
    );
}

/// A `limit` outside 1 to 1000, or a `limit` or `after` that is not a whole number, is
/// 400 with code 105 naming it.
#[test]
fn a_bad_page_is_400_105_naming_the_parameter() {
    let server = TestServer::start();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=-1", "after"),
        ("after=1.5&limit=2", "after"),
    ] {
        assert_error(
            &server.get(&format!("/chats?{query}")),
            400,
            105,
            Some(field),
        );
    }
}

/// `POST /chats` answers 201 with the new room and a `Location` header naming its path.
#[test]
fn creating_a_room_answers_201_with_the_room_and_its_location() {
    let server = TestServer::start();
    let body =
        json!({"title": "Book Club", "description": "Novels, weekly", "visibility": "public"});
    let response = create(&server, body);
    assert_room(
        &response,
        201,
        &public_view(2, "Book Club", "Novels, weekly"),
    );
    let location = response.header("Location").expect("a Location header");
    assert!(location.ends_with("/chats/2"), "Location is {location:?}");
}

/// Following the `Location` of a created room returns that very room, timestamps included.
#[test]
fn location_of_a_created_room_serves_that_room() {
    let server = TestServer::start();
    let response = create(
        &server,
        json!({"title": "Book Club", "visibility": "public"}),
    );
    assert_eq!(response.status, 201, "body: {}", response.body);
    let location = response.header("Location").expect("a Location header");
    let path = match location.find("/chats/") {
        Some(start) => &location[start..],
        None => panic!("Location does not name a room path: {location:?}"),
    };
    let fetched = server.get(path);
    assert_eq!(fetched.status, 200, "body: {}", fetched.body);
    let mut created = response.json();
    created.as_object_mut().unwrap().remove("owner_token");
    assert_eq!(fetched.json(), created);
}

/// A new room's `createdAt` and `updatedAt` are RFC 3339 and equal.
#[test]
fn created_room_has_equal_rfc3339_timestamps() {
    let server = TestServer::start();
    let room = server.create_room("Timely", "public", None);
    room_without_times(&room); // checks both are RFC 3339
    assert_eq!(room["createdAt"], room["updatedAt"], "room: {room}");
}

/// `description` may be left out; it is then the empty string.
#[test]
fn missing_description_is_stored_as_empty() {
    let server = TestServer::start();
    let response = create(&server, json!({"title": "Quiet", "visibility": "public"}));
    assert_room(&response, 201, &public_view(2, "Quiet", ""));
}

/// `visibility` is matched case-insensitively and stored lower-case.
#[test]
fn visibility_is_case_insensitive_and_stored_lower_case() {
    let server = TestServer::start();
    let response = create(&server, json!({"title": "Loud", "visibility": "PUBLIC"}));
    assert_room(&response, 201, &public_view(2, "Loud", ""));
    let response = create(
        &server,
        json!({"title": "Den", "visibility": "Hidden", "password": "den-password"}),
    );
    assert_room(&response, 201, &closed_view(3, "Den", "", "hidden"));
}

// ---------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------

/// Ids are handed out 2, 3, 4… in creation order after the default room's 1.
#[test]
fn room_ids_are_assigned_in_creation_order() {
    let server = TestServer::start();
    let ids: Vec<u64> = ["First", "Second", "Third"]
        .iter()
        .map(|title| id_of(&server.create_room(title, "public", None)))
        .collect();
    assert_eq!(ids, vec![2, 3, 4]);
}

/// A deleted room's id is never handed out again, so a new room can never take over a live
/// one (Go regression: the id counter went down on delete).
#[test]
fn room_ids_are_never_reused_after_delete() {
    let server = TestServer::start();
    server.create_room("Alpha", "public", None); // 2
    server.create_room("Beta", "public", None); // 3
    assert_eq!(delete(&server, "/chats/2", Some(ADMIN_KEY)).status, 200);
    assert_eq!(id_of(&server.create_room("Gamma", "public", None)), 4);
    assert_eq!(delete(&server, "/chats/4", Some(ADMIN_KEY)).status, 200);
    assert_eq!(id_of(&server.create_room("Delta", "public", None)), 5);
    assert_room(&server.get("/chats/3"), 200, &public_view(3, "Beta", ""));
    assert_error(&server.get("/chats/2"), 404, 101, None);
    assert_error(&server.get("/chats/4"), 404, 101, None);
}

// ---------------------------------------------------------------------------------------
// Addressing a room: id, title, percent-encoding, unknown rooms
// ---------------------------------------------------------------------------------------

/// A room is found by its title whatever the case.
#[test]
fn room_is_found_by_title_case_insensitively() {
    let server = TestServer::start();
    server.create_room("Garden", "public", None);
    for path in ["/chats/Garden", "/chats/garden", "/chats/GARDEN"] {
        assert_room(&server.get(path), 200, &public_view(2, "Garden", ""));
    }
}

/// A title with spaces is reached percent-encoded, as in SPEC: `/chats/My%20chat%20room`.
#[test]
fn room_is_found_by_percent_encoded_title_with_spaces() {
    let server = TestServer::start();
    server.create_room("My chat room", "public", None);
    assert_room(
        &server.get("/chats/My%20chat%20room"),
        200,
        &public_view(2, "My chat room", ""),
    );
}

/// Percent-decoding and case-insensitivity combine: `/chats/mY%20CHAT%20Room`.
#[test]
fn percent_encoded_title_is_matched_case_insensitively() {
    let server = TestServer::start();
    server.create_room("My chat room", "public", None);
    assert_room(
        &server.get("/chats/mY%20CHAT%20Room"),
        200,
        &public_view(2, "My chat room", ""),
    );
}

/// Percent-encoded UTF-8 in a title is decoded as UTF-8.
#[test]
fn percent_encoded_utf8_title_is_decoded() {
    let server = TestServer::start();
    server.create_room("Café Crème", "public", None);
    assert_room(
        &server.get("/chats/Caf%C3%A9%20Cr%C3%A8me"),
        200,
        &public_view(2, "Café Crème", ""),
    );
}

/// An unknown id or title is 404 with code 101.
#[test]
fn unknown_room_is_404_with_code_101() {
    let server = TestServer::start();
    assert_error(&server.get("/chats/99"), 404, 101, None);
    assert_error(&server.get("/chats/Nowhere"), 404, 101, None);
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// A title shorter than 2 characters once trimmed is rejected (105, field `title`).
#[test]
fn title_shorter_than_2_characters_after_trimming_is_rejected() {
    let server = TestServer::start();
    let response = create(&server, json!({"title": "   x   ", "visibility": "public"}));
    assert_error(&response, 400, 105, Some("title"));
}

/// A title longer than 70 characters is rejected (105, field `title`).
#[test]
fn title_longer_than_70_characters_is_rejected() {
    let server = TestServer::start();
    let response = create(
        &server,
        json!({"title": "t".repeat(71), "visibility": "public"}),
    );
    assert_error(&response, 400, 105, Some("title"));
}

/// Titles of exactly 2 and exactly 70 characters are accepted.
#[test]
fn titles_of_2_and_70_characters_are_accepted() {
    let server = TestServer::start();
    let long = "t".repeat(70);
    assert_room(
        &create(&server, json!({"title": "ab", "visibility": "public"})),
        201,
        &public_view(2, "ab", ""),
    );
    assert_room(
        &create(&server, json!({"title": long, "visibility": "public"})),
        201,
        &public_view(3, &long, ""),
    );
}

/// The title limit counts characters, not bytes: 70 two-byte characters are accepted.
#[test]
fn title_length_counts_characters_not_bytes() {
    let server = TestServer::start();
    let title = "é".repeat(70);
    let response = create(&server, json!({"title": title, "visibility": "public"}));
    assert_room(&response, 201, &public_view(2, &title, ""));
}

/// An all-digit title is rejected (it could not be reached by title): 105, field `title`.
#[test]
fn all_digit_title_is_rejected() {
    let server = TestServer::start();
    let response = create(&server, json!({"title": "2024", "visibility": "public"}));
    assert_error(&response, 400, 105, Some("title"));
}

/// Digits mixed with other characters make a valid title.
#[test]
fn title_mixing_digits_and_letters_is_accepted() {
    let server = TestServer::start();
    let response = create(
        &server,
        json!({"title": "Room 101", "visibility": "public"}),
    );
    assert_room(&response, 201, &public_view(2, "Room 101", ""));
}

/// A title that differs from an existing one only in case is a duplicate: 102, field `title`.
#[test]
fn duplicate_title_is_rejected_case_insensitively_with_102() {
    let server = TestServer::start();
    server.create_room("Chess Club", "public", None);
    let response = create(
        &server,
        json!({"title": "cHESS cLUB", "visibility": "public"}),
    );
    assert_error(&response, 400, 102, Some("title"));
}

/// The default room's title is taken like any other.
#[test]
fn title_of_the_default_room_is_taken() {
    let server = TestServer::start();
    let response = create(
        &server,
        json!({"title": "public chat", "visibility": "public"}),
    );
    assert_error(&response, 400, 102, Some("title"));
}

/// A hidden room's title is taken too, although the room is not listed.
#[test]
fn title_of_a_hidden_room_is_taken() {
    let server = TestServer::start();
    server.create_room("Crypt", "hidden", Some("crypt-password"));
    let response = create(&server, json!({"title": "CRYPT", "visibility": "public"}));
    assert_error(&response, 400, 102, Some("title"));
}

/// A deleted room's title is free again.
#[test]
fn deleted_rooms_title_can_be_used_again() {
    let server = TestServer::start();
    server.create_room("Phoenix", "public", None);
    assert_eq!(delete(&server, "/chats/2", Some(ADMIN_KEY)).status, 200);
    let response = create(&server, json!({"title": "Phoenix", "visibility": "public"}));
    assert_room(&response, 201, &public_view(3, "Phoenix", ""));
}

/// A description longer than 70 characters is rejected (105, field `description`).
#[test]
fn description_longer_than_70_characters_is_rejected() {
    let server = TestServer::start();
    let body = json!({"title": "Wordy", "description": "d".repeat(71), "visibility": "public"});
    assert_error(&create(&server, body), 400, 105, Some("description"));
}

/// A description of exactly 70 characters is accepted.
#[test]
fn description_of_70_characters_is_accepted() {
    let server = TestServer::start();
    let description = "d".repeat(70);
    let body = json!({"title": "Wordy", "description": description, "visibility": "public"});
    assert_room(
        &create(&server, body),
        201,
        &public_view(2, "Wordy", &description),
    );
}

/// A visibility other than public, private or hidden is rejected (105, field `visibility`).
#[test]
fn unknown_visibility_is_rejected() {
    let server = TestServer::start();
    let body = json!({"title": "Odd", "visibility": "secret", "password": "long-enough"});
    assert_error(&create(&server, body), 400, 105, Some("visibility"));
}

/// A private room needs a password (105, field `password`).
#[test]
fn private_room_without_password_is_rejected() {
    let server = TestServer::start();
    let body = json!({"title": "Locked", "visibility": "private"});
    assert_error(&create(&server, body), 400, 105, Some("password"));
}

/// A hidden room's password needs at least 8 characters (105, field `password`).
#[test]
fn hidden_room_with_a_7_character_password_is_rejected() {
    let server = TestServer::start();
    let body = json!({"title": "Nook", "visibility": "hidden", "password": "1234567"});
    assert_error(&create(&server, body), 400, 105, Some("password"));
}

/// A private room with an 8-character password is created, shown without `users`.
#[test]
fn private_room_with_an_8_character_password_is_accepted() {
    let server = TestServer::start();
    let body = json!({"title": "Locked", "visibility": "private", "password": "12345678"});
    assert_room(
        &create(&server, body),
        201,
        &closed_view(2, "Locked", "", "private"),
    );
}

/// A public room given a password is rejected on `visibility`, so nobody makes one by
/// accident believing it is protected.
#[test]
fn public_room_given_a_password_is_rejected_on_visibility() {
    let server = TestServer::start();
    let body = json!({"title": "Leaky", "visibility": "public", "password": "long-enough"});
    assert_error(&create(&server, body), 400, 105, Some("visibility"));
}

// ---------------------------------------------------------------------------------------
// Hidden and private rooms
// ---------------------------------------------------------------------------------------

/// A hidden room is reachable by its id with a token for it; without one it is not found
/// (SPEC, Rooms: hidden rooms are reached by exact title).
#[test]
fn hidden_room_is_reachable_by_id_with_its_token_only() {
    let server = TestServer::start();
    server.create_room("Speakeasy", "hidden", Some("swordfish-1"));
    assert_error(&server.get("/chats/2"), 404, 101, None);
    let token = server.token("Speakeasy", "alice", "swordfish-1");
    assert_room(
        &server.send("GET", "/chats/2", Some(&token), None),
        200,
        &token_view(2, "Speakeasy", "", "hidden"),
    );
}

/// A hidden room is reachable by its exact title.
#[test]
fn hidden_room_is_reachable_by_exact_title() {
    let server = TestServer::start();
    server.create_room("Speakeasy", "hidden", Some("swordfish-1"));
    assert_room(
        &server.get("/chats/Speakeasy"),
        200,
        &closed_view(2, "Speakeasy", "", "hidden"),
    );
}

/// Without a token a private room is shown without its `users`.
#[test]
fn private_room_hides_users_without_a_token() {
    let server = TestServer::start();
    server.create_room("Boardroom", "private", Some("board-password"));
    assert_room(
        &server.get("/chats/2"),
        200,
        &closed_view(2, "Boardroom", "", "private"),
    );
}

/// The holder of a private room's token sees its `users`.
#[test]
fn private_room_shows_users_to_its_token_holder() {
    let server = TestServer::start();
    server.create_room("Boardroom", "private", Some("board-password"));
    let token = server.token("2", "alice", "board-password");
    let response = server.send("GET", "/chats/2", Some(&token), None);
    assert_room(&response, 200, &token_view(2, "Boardroom", "", "private"));
}

/// A member who joined over the WebSocket appears in `users` with name, colour and the time
/// of their last activity.
#[test]
fn joined_member_appears_in_the_rooms_users() {
    let server = TestServer::start();
    let mut client = server.ws("/chats/1/ws");
    client.join("alice"); // returns once the join is broadcast
    let response = server.get("/chats/1");
    assert_eq!(response.status, 200, "body: {}", response.body);
    let mut room = room_without_times(&response.json());
    let users = room["users"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no users array: {}", response.body));
    assert_eq!(users.len(), 1, "users: {}", response.body);
    let last_activity = users[0]["last_activity"].take();
    assert!(
        last_activity.as_str().is_some_and(common::is_rfc3339),
        "last_activity is not RFC 3339: {last_activity}"
    );
    let mut expected = default_room(&server);
    expected["users"] = json!([{"username": "alice", "color": "#123456", "last_activity": null}]);
    assert_eq!(room, expected);
}

/// No response ever carries a room's password or its bcrypt hash (Go regression: the hash
/// was in every room response). Checked on the raw bodies of every endpoint.
#[test]
fn no_response_contains_a_password_or_its_hash() {
    let server = TestServer::start();
    let passwords = ["correct horse", "battery staple", "new password 1"];
    let mut bodies = vec![];
    let mut record = |response: Response| {
        bodies.push(response.body.clone());
        response
    };
    let private = json!({"title": "Vault", "visibility": "private", "password": passwords[0]});
    let owner = record(create(&server, private)).json()["owner_token"]
        .as_str()
        .expect("an owner token")
        .to_owned();
    let hidden = json!({"title": "Cellar", "visibility": "hidden", "password": passwords[1]});
    record(create(&server, hidden));
    record(server.get("/chats"));
    for path in ["/chats/2", "/chats/Vault", "/chats/Cellar"] {
        record(server.get(path));
    }
    let token = record(server.post(
        "/chats/2/token",
        &json!({"name": "alice", "secret": passwords[0]}),
    ));
    let token = token.json()["token"].as_str().expect("a token").to_owned();
    record(server.send("GET", "/chats/2", Some(&token), None));
    record(server.send("GET", "/chats/2/token/renew", Some(&token), None));
    record(put(
        &server,
        "/chats/2",
        Some(&owner),
        &json!({"description": "still secret"}),
    ));
    record(put(
        &server,
        "/chats/2",
        Some(&owner),
        &json!({"password": passwords[2]}),
    ));
    record(server.post(
        "/chats/2/token",
        &json!({"name": "bob", "secret": passwords[0]}),
    ));
    record(server.get("/chats"));
    record(server.get("/chats/2"));
    for body in &bodies {
        assert!(!body.contains("$2"), "a bcrypt hash leaked: {body}");
        assert!(
            !body.to_lowercase().contains("password"),
            "a password field leaked: {body}"
        );
        for password in passwords {
            assert!(
                !body.contains(password),
                "the password {password:?} leaked: {body}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// PUT
// ---------------------------------------------------------------------------------------

/// `PUT` on a public room with its owner token answers 200 with the updated room.
#[test]
fn put_updates_title_and_description_of_a_public_room() {
    let server = TestServer::start();
    let room = server.create_room("Old Name", "public", None);
    let response = put(
        &server,
        "/chats/2",
        room["owner_token"].as_str(),
        &json!({"title": "New Name", "description": "changed"}),
    );
    assert_room(&response, 200, &public_view(2, "New Name", "changed"));
    assert_room(
        &server.get("/chats/2"),
        200,
        &public_view(2, "New Name", "changed"),
    );
}

/// After a rename the room answers to its new title and no longer to the old one.
#[test]
fn renamed_room_is_found_by_its_new_title_only() {
    let server = TestServer::start();
    server.create_room("Old Name", "public", None);
    assert_eq!(
        put(
            &server,
            "/chats/Old%20Name",
            Some(ADMIN_KEY),
            &json!({"title": "New Name"})
        )
        .status,
        200
    );
    assert_room(
        &server.get("/chats/new%20name"),
        200,
        &public_view(2, "New Name", ""),
    );
    assert_error(&server.get("/chats/Old%20Name"), 404, 101, None);
}

/// Fields a `PUT` does not name keep their values.
#[test]
fn put_leaves_fields_it_does_not_name_unchanged() {
    let server = TestServer::start();
    create(
        &server,
        json!({"title": "Steady", "description": "as before", "visibility": "public"}),
    );
    let response = put(
        &server,
        "/chats/2",
        Some(ADMIN_KEY),
        &json!({"description": "only this"}),
    );
    assert_room(&response, 200, &public_view(2, "Steady", "only this"));
}

/// A `PUT` keeps `createdAt` and moves `updatedAt` forward.
#[test]
fn put_keeps_created_at_and_moves_updated_at() {
    let server = TestServer::start();
    let created = server.create_room("Clock", "public", None);
    // Timestamps have millisecond resolution: update until the clock has visibly moved.
    let deadline = std::time::Instant::now() + common::TIMEOUT;
    let updated = loop {
        let response = put(
            &server,
            "/chats/2",
            Some(ADMIN_KEY),
            &json!({"description": "tick"}),
        );
        assert_eq!(response.status, 200, "body: {}", response.body);
        let updated = response.json();
        if updated["updatedAt"] != created["updatedAt"] {
            break updated;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "updatedAt never moved: {updated}"
        );
    };
    assert_eq!(updated["createdAt"], created["createdAt"]);
    let (before, after) = (
        created["updatedAt"].as_str().unwrap(),
        updated["updatedAt"].as_str().unwrap(),
    );
    assert!(after > before, "updatedAt went from {before} to {after}");
}

/// `PUT` applies the title rules of `POST` (all digits: 105, field `title`).
#[test]
fn put_applies_the_title_rules() {
    let server = TestServer::start();
    server.create_room("Steady", "public", None);
    assert_error(
        &put(
            &server,
            "/chats/2",
            Some(ADMIN_KEY),
            &json!({"title": "12"}),
        ),
        400,
        105,
        Some("title"),
    );
    assert_room(&server.get("/chats/2"), 200, &public_view(2, "Steady", ""));
}

/// Renaming a room to another room's title (in any case) is 102, field `title`.
#[test]
fn put_to_another_rooms_title_is_rejected_with_102() {
    let server = TestServer::start();
    server.create_room("Alpha", "public", None);
    server.create_room("Beta", "public", None);
    assert_error(
        &put(
            &server,
            "/chats/3",
            Some(ADMIN_KEY),
            &json!({"title": "ALPHA"}),
        ),
        400,
        102,
        Some("title"),
    );
}

/// A room may change only the case of its own title: it is no duplicate of itself.
#[test]
fn put_may_change_the_case_of_a_rooms_own_title() {
    let server = TestServer::start();
    server.create_room("quiet room", "public", None);
    let response = put(
        &server,
        "/chats/2",
        Some(ADMIN_KEY),
        &json!({"title": "Quiet Room"}),
    );
    assert_room(&response, 200, &public_view(2, "Quiet Room", ""));
}

/// A private room made hidden by its owner leaves the listing but stays reachable.
#[test]
fn put_making_a_private_room_hidden_takes_it_out_of_the_listing() {
    let server = TestServer::start();
    let room = server.create_room("Boardroom", "private", Some("board-password"));
    let response = put(
        &server,
        "/chats/2",
        room["owner_token"].as_str(),
        &json!({"visibility": "HIDDEN"}),
    );
    assert_room(&response, 200, &token_view(2, "Boardroom", "", "hidden"));
    assert_eq!(listing(&server), vec![default_room(&server)]);
    assert_room(
        &server.get("/chats/Boardroom"),
        200,
        &closed_view(2, "Boardroom", "", "hidden"),
    );
}

/// Making a public room private without a password is rejected (105, field `password`).
#[test]
fn put_making_a_room_private_needs_a_password() {
    let server = TestServer::start();
    server.create_room("Open", "public", None);
    assert_error(
        &put(
            &server,
            "/chats/2",
            Some(ADMIN_KEY),
            &json!({"visibility": "private"}),
        ),
        400,
        105,
        Some("password"),
    );
}

/// Giving a public room a password is rejected on `visibility`, as on creation.
#[test]
fn put_giving_a_public_room_a_password_is_rejected_on_visibility() {
    let server = TestServer::start();
    server.create_room("Open", "public", None);
    let response = put(
        &server,
        "/chats/2",
        Some(ADMIN_KEY),
        &json!({"password": "long-enough"}),
    );
    assert_error(&response, 400, 105, Some("visibility"));
}

/// `PUT` on an unknown room is 404 with code 101.
#[test]
fn put_of_an_unknown_room_is_404_with_code_101() {
    let server = TestServer::start();
    assert_error(
        &put(
            &server,
            "/chats/42",
            Some(ADMIN_KEY),
            &json!({"description": "x"}),
        ),
        404,
        101,
        None,
    );
}

/// `PUT` on a private room without a token is refused (403, code 403) and changes nothing.
#[test]
fn put_of_a_private_room_without_a_token_is_403() {
    let server = TestServer::start();
    server.create_room("Boardroom", "private", Some("board-password"));
    let response = put(
        &server,
        "/chats/2",
        None,
        &json!({"description": "defaced"}),
    );
    assert_error(&response, 403, 403, None);
    assert_room(
        &server.get("/chats/2"),
        200,
        &closed_view(2, "Boardroom", "", "private"),
    );
}

/// `PUT` on a hidden room, by its title, without a token is refused (403, code 403).
#[test]
fn put_of_a_hidden_room_without_a_token_is_403() {
    let server = TestServer::start();
    server.create_room("Den", "hidden", Some("den-password"));
    assert_error(
        &put(
            &server,
            "/chats/Den",
            None,
            &json!({"description": "defaced"}),
        ),
        403,
        403,
        None,
    );
}

/// `PUT` on a private room with its owner token answers 200 with the room, `users`
/// included; its room token, from the password, is refused (401, code 104).
#[test]
fn put_of_a_private_room_with_its_owner_token_updates_it() {
    let server = TestServer::start();
    let room = server.create_room("Boardroom", "private", Some("board-password"));
    let token = server.token("2", "alice", "board-password");
    let refused = put(
        &server,
        "/chats/2",
        Some(&token),
        &json!({"description": "minutes"}),
    );
    assert_error(&refused, 401, 104, None);
    let response = put(
        &server,
        "/chats/2",
        room["owner_token"].as_str(),
        &json!({"description": "minutes"}),
    );
    assert_room(
        &response,
        200,
        &token_view(2, "Boardroom", "minutes", "private"),
    );
}

/// Changing a room's password kills every token issued under the old one (401, code 401).
#[test]
fn put_changing_the_password_kills_old_tokens() {
    let server = TestServer::start();
    let room = server.create_room("Boardroom", "private", Some("first password"));
    let old = server.token("2", "alice", "first password");
    let response = put(
        &server,
        "/chats/2",
        room["owner_token"].as_str(),
        &json!({"password": "second password"}),
    );
    assert_room(&response, 200, &token_view(2, "Boardroom", "", "private"));
    let renew = server.send("GET", "/chats/2/token/renew", Some(&old), None);
    assert_error(&renew, 401, 401, None);
    let again = put(
        &server,
        "/chats/2",
        Some(&old),
        &json!({"description": "sneaky"}),
    );
    assert_error(&again, 401, 401, None);
}

/// After a password change the new password opens the room and the old one does not.
#[test]
fn put_changing_the_password_makes_only_the_new_one_open_the_room() {
    let server = TestServer::start();
    let room = server.create_room("Boardroom", "private", Some("first password"));
    assert_eq!(
        put(
            &server,
            "/chats/2",
            room["owner_token"].as_str(),
            &json!({"password": "second password"})
        )
        .status,
        200
    );
    let old = server.post(
        "/chats/2/token",
        &json!({"name": "bob", "secret": "first password"}),
    );
    assert_error(&old, 401, 304, Some("secret"));
    server.token("2", "bob", "second password");
}

// ---------------------------------------------------------------------------------------
// DELETE
// ---------------------------------------------------------------------------------------

/// `DELETE` of a public room answers 200 `{"status":true}` and the room is gone.
#[test]
fn deleting_a_public_room_answers_status_true_and_removes_it() {
    let server = TestServer::start();
    server.create_room("Brief", "public", None);
    let response = delete(&server, "/chats/Brief", Some(ADMIN_KEY));
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
    assert_error(&server.get("/chats/2"), 404, 101, None);
    assert_eq!(listing(&server), vec![default_room(&server)]);
}

/// `DELETE` of an unknown room is 404 with code 101.
#[test]
fn delete_of_an_unknown_room_is_404_with_code_101() {
    let server = TestServer::start();
    assert_error(
        &delete(&server, "/chats/42", Some(ADMIN_KEY)),
        404,
        101,
        None,
    );
}

/// `DELETE` of a private room without a token is refused (403, code 403); the room stays.
#[test]
fn delete_of_a_private_room_without_a_token_is_403() {
    let server = TestServer::start();
    server.create_room("Boardroom", "private", Some("board-password"));
    assert_error(&delete(&server, "/chats/2", None), 403, 403, None);
    assert_room(
        &server.get("/chats/2"),
        200,
        &closed_view(2, "Boardroom", "", "private"),
    );
}

/// `DELETE` of a hidden room without a token is refused (403, code 403); the room stays.
#[test]
fn delete_of_a_hidden_room_without_a_token_is_403() {
    let server = TestServer::start();
    server.create_room("Den", "hidden", Some("den-password"));
    assert_error(&delete(&server, "/chats/Den", None), 403, 403, None);
    assert_room(
        &server.get("/chats/Den"),
        200,
        &closed_view(2, "Den", "", "hidden"),
    );
}

/// `DELETE` of a private room with its owner token answers `{"status":true}` and removes
/// it; its room token is refused (401, code 104).
#[test]
fn delete_of_a_private_room_with_its_owner_token_removes_it() {
    let server = TestServer::start();
    let room = server.create_room("Boardroom", "private", Some("board-password"));
    let token = server.token("2", "alice", "board-password");
    assert_error(&delete(&server, "/chats/2", Some(&token)), 401, 104, None);
    let response = delete(&server, "/chats/2", room["owner_token"].as_str());
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
    assert_error(&server.get("/chats/2"), 404, 101, None);
}

// ---------------------------------------------------------------------------------------
// Routing, content type, malformed and oversized bodies, concurrency
// ---------------------------------------------------------------------------------------

/// `GET /healthz` answers 200 `{"status":true}`.
#[test]
fn healthz_answers_status_true() {
    let server = TestServer::start();
    let response = server.get("/healthz");
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
}

/// `GET /` serves the HTML page with the real WebSocket port filled in for `__WS_PORT__`.
#[test]
fn root_serves_the_web_page_with_the_websocket_port_filled_in() {
    let server = TestServer::start();
    let response = server.get("/");
    assert_eq!(response.status, 200, "body: {}", response.body);
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/html"),
        "Content-Type is {content_type:?}"
    );
    assert!(
        response.body.to_lowercase().contains("<html"),
        "not an HTML page: {}",
        response.body
    );
    assert!(
        !response.body.contains("__WS_PORT__"),
        "the WebSocket port placeholder was left in"
    );
    assert!(
        response.body.contains(&server.ws_addr.port().to_string()),
        "the page lacks the WebSocket port"
    );
}

/// Every JSON response, success or error, says `Content-Type: application/json`.
#[test]
fn every_json_response_is_labelled_application_json() {
    let server = TestServer::start();
    let private = json!({"title": "Vault", "visibility": "private", "password": "vault-password"});
    let responses = [
        ("GET /chats", server.get("/chats")),
        ("GET /chats/1", server.get("/chats/1")),
        ("POST /chats", create(&server, private)),
        (
            "POST /chats invalid",
            create(&server, json!({"title": "1", "visibility": "public"})),
        ),
        ("GET /chats/99", server.get("/chats/99")),
        ("GET /nowhere", server.get("/nowhere")),
        ("PATCH /chats", server.send("PATCH", "/chats", None, None)),
        (
            "PUT /chats/2 untokened",
            put(&server, "/chats/2", None, &json!({"description": "x"})),
        ),
        (
            "POST token private",
            server.post(
                "/chats/2/token",
                &json!({"name": "a", "secret": "vault-password"}),
            ),
        ),
        (
            "POST token public",
            server.post("/chats/1/token", &json!({"name": "a", "secret": ""})),
        ),
        (
            "POST token wrong secret",
            server.post("/chats/2/token", &json!({"name": "a", "secret": "nope"})),
        ),
        (
            "PUT /chats/1",
            put(&server, "/chats/1", None, &json!({"description": "x"})),
        ),
        (
            "DELETE /chats/2 untokened",
            delete(&server, "/chats/2", None),
        ),
        ("GET /healthz", server.get("/healthz")),
    ];
    for (what, response) in &responses {
        let content_type = response.header("Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{what} ({}) has Content-Type {content_type:?}",
            response.status
        );
        response.json();
    }
}

/// An unknown path is 404 with a JSON error body.
#[test]
fn unknown_path_is_404_with_a_json_error() {
    let server = TestServer::start();
    for path in [
        "/nowhere",
        "/chats/1/nowhere",
        "/chats/1/token/nowhere",
        "/chatsx",
    ] {
        let response = server.get(path);
        assert_eq!(response.status, 404, "GET {path}: {}", response.body);
        assert_eq!(response.json(), error_body(404, None), "GET {path}");
    }
}

/// A known path with the wrong method is 405 with a JSON error and an `Allow` header that
/// lists the methods the path does take.
#[test]
fn wrong_method_is_405_with_an_allow_header_and_a_json_error() {
    let server = TestServer::start();
    let cases: [(&str, &str, &[&str]); 6] = [
        ("DELETE", "/chats", &["GET", "POST"]),
        ("POST", "/chats/1", &["DELETE", "GET", "PUT"]),
        ("GET", "/chats/1/token", &["POST"]),
        ("POST", "/chats/1/token/renew", &["GET"]),
        ("POST", "/healthz", &["GET"]),
        ("PUT", "/", &["GET"]),
    ];
    for (method, path, allowed) in cases {
        let response = server.send(method, path, None, None);
        assert_eq!(response.status, 405, "{method} {path}: {}", response.body);
        assert_eq!(response.json(), error_body(405, None), "{method} {path}");
        let allow = response
            .header("Allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        // HEAD and OPTIONS are allowed to appear besides the path's own methods.
        let mut listed: Vec<String> = allow
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| m != "HEAD" && m != "OPTIONS")
            .collect();
        listed.sort();
        assert_eq!(listed, allowed, "{method} {path}: Allow is {allow:?}");
    }
}

/// A `POST /chats` body that is not valid JSON is 400 with code 103.
#[test]
fn malformed_json_in_post_is_400_with_code_103() {
    let server = TestServer::start();
    let headers = [("Content-Type", "application/json")];
    let response = server.request("POST", "/chats", &headers, Some(br#"{"title": "Broken","#));
    assert_error(&response, 400, 103, None);
    assert_eq!(listing(&server), vec![default_room(&server)]);
}

/// A `PUT` body that is not valid JSON is 400 with code 103 and changes nothing (from
/// someone who may change the room: the token is checked before the body is read).
#[test]
fn malformed_json_in_put_is_400_with_code_103() {
    let server = TestServer::start();
    server.create_room("Steady", "public", None);
    let auth = format!("Bearer {ADMIN_KEY}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let response = server.request("PUT", "/chats/2", &headers, Some(b"{description: x}"));
    assert_error(&response, 400, 103, None);
    assert_room(&server.get("/chats/2"), 200, &public_view(2, "Steady", ""));
}

/// An empty `POST /chats` body is not JSON: 400 with code 103.
#[test]
fn empty_post_body_is_400_with_code_103() {
    let server = TestServer::start();
    let headers = [("Content-Type", "application/json")];
    let response = server.request("POST", "/chats", &headers, Some(b""));
    assert_error(&response, 400, 103, None);
}

/// A body that is not UTF-8 is not JSON: 400 with code 103, never a panic.
#[test]
fn body_that_is_not_utf8_is_400_with_code_103() {
    let server = TestServer::start();
    let headers = [("Content-Type", "application/json")];
    let body = b"{\"title\": \"\xff\xfe\", \"visibility\": \"public\"}";
    let response = server.request("POST", "/chats", &headers, Some(body));
    assert_error(&response, 400, 103, None);
    assert_eq!(listing(&server), vec![default_room(&server)]);
}

/// A 2 MB body sent chunked, with no `Content-Length` to trust, is refused with 413 too.
#[test]
fn two_megabyte_chunked_body_is_413() {
    let server = TestServer::start();
    let mut stream = TcpStream::connect(server.http_addr).expect("connect to the HTTP listener");
    stream.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    let head = format!(
        "POST /chats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.http_addr
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    // The server may answer 413 and stop reading before the end: write errors are expected.
    let _ = (0..32).try_for_each(|_| stream.write_all(chunk.as_bytes()));
    let _ = stream.write_all(b"0\r\n\r\n");
    let response = read_response(stream);
    assert_error(&response, 413, 413, None);
    let health = server.get("/healthz");
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": true}))
    );
}

/// A 2 MB body is refused with 413 and a JSON error, and the server keeps serving.
#[test]
fn two_megabyte_body_is_413_and_the_server_keeps_serving() {
    let server = TestServer::start();
    let body = json!({"title": "Huge", "description": "x".repeat(2 * 1024 * 1024), "visibility": "public"});
    let response = server.post("/chats", &body);
    assert_error(&response, 413, 413, None);
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "413 has Content-Type {content_type:?}"
    );
    let health = server.get("/healthz");
    assert_eq!(
        (health.status, health.json()),
        (200, json!({"status": true}))
    );
    assert_eq!(listing(&server), vec![default_room(&server)]);
}

/// Sixteen clients creating the same title at the same moment make exactly one room: one
/// 201, fifteen 102s.
#[test]
fn sixteen_simultaneous_creates_of_one_title_make_exactly_one_room() {
    const CLIENTS: usize = 16;
    let server = TestServer::start();
    let addr = server.http_addr;
    let start = Barrier::new(CLIENTS);
    let body = json!({"title": "Rush Hour", "visibility": "public"}).to_string();
    let responses: Vec<Response> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let headers = [("Content-Type", "application/json")];
                    http_request(addr, "POST", "/chats", &headers, Some(body.as_bytes()))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a client thread"))
            .collect()
    });
    let created: Vec<&Response> = responses.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "responses: {responses:#?}");
    for response in responses.iter().filter(|r| r.status != 201) {
        assert_error(response, 400, 102, Some("title"));
    }
    let titled: Vec<Value> = listing(&server)
        .into_iter()
        .filter(|r| r["title"] == "Rush Hour")
        .collect();
    assert_eq!(titled, vec![room_without_times(&created[0].json())]);
}

/// Two PUTs to one room at once both take effect, or the second is refused: a change of
/// password racing a change of visibility never silently reverts the password (issue 10:
/// an update read the hash under one lock, hashed, then wrote it back under another).
#[test]
fn concurrent_puts_to_one_room_never_revert_each_other() {
    let server = TestServer::start();
    for round in 0..20 {
        let title = format!("Race {round}");
        let room = server.create_room(&title, "private", Some("password-a"));
        let id = room["id"].as_u64().expect("a room id").to_string();
        // The owner token: the one that may change the room, through password changes.
        let token = room["owner_token"]
            .as_str()
            .expect("an owner token")
            .to_owned();
        let path = format!("/chats/{id}");
        // The room may be hidden by now: found by title.
        let by_title = format!("/chats/Race%20{round}");
        let start = Barrier::new(2);
        let (password, visibility) = std::thread::scope(|scope| {
            let put = |body: Value| {
                let (start, server, path, token) = (&start, &server, &path, &token);
                scope.spawn(move || {
                    start.wait();
                    server.send("PUT", path, Some(token), Some(&body)).status
                })
            };
            let password = put(json!({"password": "password-b"}));
            let visibility = put(json!({"visibility": "hidden"}));
            (password.join().unwrap(), visibility.join().unwrap())
        });
        // An owner token survives the other change: both always land.
        assert_eq!((password, visibility), (200, 200), "round {round}");
        let login = |secret: &str| {
            let body = json!({"name": "ann", "secret": secret});
            server.post(&format!("{by_title}/token"), &body).status
        };
        assert_eq!(
            login("password-b"),
            201,
            "round {round}: the new password was reverted"
        );
        assert_eq!(login("password-a"), 401, "round {round}");
        let shown = server.get(&by_title).json()["visibility"].clone();
        assert_eq!(
            shown, "hidden",
            "round {round}: the visibility was reverted"
        );
    }
}
