//! Who may change a room (SPEC, "Who may change a room"; issue 20): the owner token a room's
//! creator gets, the operator's `admin_key`, and every token that is not enough. Each test
//! here failed on main, where anyone could rename, lock or delete any public room, room 1
//! included, and nothing was logged.
//!
//! Owner tokens are forged with the server's secret where a test needs one that the server
//! would not hand out (expired, or for room 1): the key derivation is pinned here on
//! purpose (`token.rs`: secret, `owner`, the room's id and creation time).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{error_body, Binary, Response, Scratch, TestServer, ADMIN_KEY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const PASSWORD: &str = "open sesame";

/// Asserts `response` is the JSON error `code` with HTTP `status`.
fn assert_error(response: &Response, status: u16, code: u16) {
    assert_eq!(response.status, status, "body: {}", response.body);
    assert_eq!(response.json(), error_body(code, None));
}

/// The claims of a JWT, read without checking it.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An owner token for room `id` created at `created_at`, signed as the server signs them,
/// expiring at `exp`.
fn forge_owner_token(secret: &str, id: u64, created_at: &str, exp: u64) -> String {
    let key = format!("{secret}\nowner\n{id}\n{created_at}");
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"room_id": id, "owner": true, "exp": exp}),
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

/// `PUT /chats/<path>` with `body` and an optional bearer token.
fn put(server: &TestServer, path: &str, token: Option<&str>, body: &Value) -> Response {
    server.send("PUT", path, token, Some(body))
}

/// `DELETE /chats/<path>` with an optional bearer token.
fn delete(server: &TestServer, path: &str, token: Option<&str>) -> Response {
    server.send("DELETE", path, token, None)
}

/// The attack of issue 20, step by step, without a token: rename "Public Chat", make it
/// hidden with a password of one's own, take its title, delete it. Every step is 403, and
/// room 1 is as it was.
#[test]
fn without_a_token_nobody_can_rename_lock_or_delete_public_chat() {
    let server = TestServer::start();
    let before = server.get("/chats/1").json();
    let rename = put(&server, "/chats/1", None, &json!({"title": "Mine now"}));
    assert_error(&rename, 403, 403);
    let lock = json!({"visibility": "hidden", "password": "locked out"});
    assert_error(&put(&server, "/chats/1", None, &lock), 403, 403);
    assert_error(&delete(&server, "/chats/1", None), 403, 403);
    assert_error(&delete(&server, "/chats/Public%20Chat", None), 403, 403);
    assert_eq!(server.get("/chats/1").json(), before);
}

/// `POST /chats` answers the room with `owner_token`: an HS256 JWT with `room_id`,
/// `owner: true` and an `exp` `owner_token_days` (30) ahead.
#[test]
fn a_created_room_comes_with_its_owner_token() {
    let server = TestServer::start();
    let room = server.create_room("Mine", "public", None);
    let token = room["owner_token"].as_str().expect("an owner_token");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "HS256");
    let claims = claims(token);
    assert_eq!(
        (&claims["room_id"], &claims["owner"]),
        (&json!(2), &json!(true))
    );
    let thirty_days = now_seconds() + 30 * 24 * 3600;
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp.abs_diff(thirty_days) <= 5, "exp {exp}");
}

/// The owner token changes and deletes its room, public or private.
#[test]
fn the_owner_token_changes_and_deletes_its_room() {
    let server = TestServer::start();
    for (title, visibility, password) in [
        ("Public one", "public", None),
        ("Private one", "private", Some(PASSWORD)),
    ] {
        let room = server.create_room(title, visibility, password);
        let owner = room["owner_token"].as_str().unwrap();
        let path = format!("/chats/{}", room["id"]);
        let changed = put(&server, &path, Some(owner), &json!({"description": "ours"}));
        assert_eq!(changed.status, 200, "{}", changed.body);
        assert_eq!(changed.json()["description"], "ours");
        let deleted = delete(&server, &path, Some(owner));
        assert_eq!(
            (deleted.status, deleted.json()),
            (200, json!({"status": true}))
        );
    }
}

/// A room token, from the password, lets its holder read and chat, not change the room:
/// 401 with code 104, for PUT and DELETE.
#[test]
fn a_room_token_cannot_change_or_delete_its_room() {
    let server = TestServer::start();
    server.create_room("Vault", "private", Some(PASSWORD));
    let token = server.token("Vault", "ann", PASSWORD);
    let body = json!({"visibility": "hidden", "password": "locked out"});
    assert_error(&put(&server, "/chats/2", Some(&token), &body), 401, 104);
    assert_error(&delete(&server, "/chats/2", Some(&token)), 401, 104);
    assert_eq!(server.get("/chats/2").json()["visibility"], "private");
}

/// Another room's owner token has a bad signature here (401); so has a forged one.
#[test]
fn another_rooms_owner_token_is_refused_with_401() {
    let server = TestServer::start();
    server.create_room("Target", "public", None);
    let other = server.create_room("Mine", "public", None);
    let owner = other["owner_token"].as_str().unwrap();
    assert_error(
        &put(&server, "/chats/2", Some(owner), &json!({"title": "Taken"})),
        401,
        401,
    );
    assert_error(&delete(&server, "/chats/2", Some(owner)), 401, 401);
    let forged = forge_owner_token(
        "not the secret",
        2,
        "2026-01-01T00:00:00.000Z",
        u64::MAX / 2,
    );
    assert_error(&delete(&server, "/chats/2", Some(&forged)), 401, 401);
}

/// An expired owner token is refused with 403, as any expired token.
#[test]
fn an_expired_owner_token_is_refused_with_403() {
    let server = TestServer::start();
    let room = server.create_room("Mine", "public", None);
    let created_at = room["createdAt"].as_str().unwrap();
    let expired = forge_owner_token(&server.secret, 2, created_at, now_seconds() - 10);
    let fresh = forge_owner_token(&server.secret, 2, created_at, now_seconds() + 600);
    assert_error(&delete(&server, "/chats/2", Some(&expired)), 403, 403);
    assert_eq!(delete(&server, "/chats/2", Some(&fresh)).status, 200);
}

/// Room 1 has no owner: only the admin key changes or deletes it; even a correctly signed
/// owner token for it is refused (401).
#[test]
fn room_1_answers_to_the_admin_key_only() {
    let server = TestServer::start();
    let room = server.get("/chats/1").json();
    let created_at = room["createdAt"].as_str().unwrap();
    let owner = forge_owner_token(&server.secret, 1, created_at, now_seconds() + 600);
    let body = json!({"description": "by the operator"});
    assert_error(&put(&server, "/chats/1", Some(&owner), &body), 401, 401);
    let changed = put(&server, "/chats/1", Some(ADMIN_KEY), &body);
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(
        server.get("/chats/1").json()["description"],
        "by the operator"
    );
    assert_eq!(delete(&server, "/chats/1", Some(ADMIN_KEY)).status, 200);
    assert_error(&server.get("/chats/1"), 404, 101);
}

/// The admin key changes and deletes any room, private and hidden ones included.
#[test]
fn the_admin_key_changes_and_deletes_any_room() {
    let server = TestServer::start();
    server.create_room("Vault", "private", Some(PASSWORD));
    server.create_room("Den", "hidden", Some(PASSWORD));
    let body = json!({"description": "checked"});
    assert_eq!(put(&server, "/chats/2", Some(ADMIN_KEY), &body).status, 200);
    assert_eq!(put(&server, "/chats/3", Some(ADMIN_KEY), &body).status, 200);
    assert_eq!(delete(&server, "/chats/3", Some(ADMIN_KEY)).status, 200);
    let wrong = format!("{ADMIN_KEY}x");
    assert_error(&delete(&server, "/chats/2", Some(&wrong)), 403, 403);
}

/// Without `admin_key` configured there is no admin: the key a test server would have
/// opens nothing.
#[test]
fn without_an_admin_key_nobody_is_admin() {
    let server = TestServer::start_with(|c| c.admin_key = None);
    let body = json!({"description": "x"});
    assert_error(&put(&server, "/chats/1", Some(ADMIN_KEY), &body), 403, 403);
}

/// An owner token outlives the room's password changes (a room token does not), and dies
/// with the room: a new room with the same title is not its room.
#[test]
fn an_owner_token_survives_password_changes_and_dies_with_its_room() {
    let server = TestServer::start();
    let room = server.create_room("Vault", "private", Some(PASSWORD));
    let owner = room["owner_token"].as_str().unwrap();
    for password in ["second password", "third password"] {
        let changed = put(
            &server,
            "/chats/2",
            Some(owner),
            &json!({"password": password}),
        );
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
    server.token("Vault", "ann", "third password");
    assert_eq!(delete(&server, "/chats/2", Some(owner)).status, 200);
    server.create_room("Vault", "private", Some(PASSWORD)); // id 3
    assert_error(&delete(&server, "/chats/3", Some(owner)), 401, 401);
    assert_error(&delete(&server, "/chats/2", Some(owner)), 404, 101);
}

/// `GET /chats/<room>/token/renew` with an owner token answers 201 with a fresh one, for a
/// public room too, in SPEC's shape; the fresh one works.
#[test]
fn renewing_an_owner_token_answers_a_fresh_one() {
    let server = TestServer::start();
    for (title, visibility, password) in [
        ("Open", "public", None),
        ("Closed", "private", Some(PASSWORD)),
    ] {
        let room = server.create_room(title, visibility, password);
        let (id, owner) = (
            room["id"].as_u64().unwrap(),
            room["owner_token"].as_str().unwrap(),
        );
        let renewed = server.send(
            "GET",
            &format!("/chats/{id}/token/renew"),
            Some(owner),
            None,
        );
        assert_eq!(renewed.status, 201, "{}", renewed.body);
        let fresh = renewed.json()["owner_token"].as_str().unwrap().to_owned();
        assert!(
            renewed.body.starts_with(&format!(
                "{{\"status\":true,\"room_id\":{id},\"owner_token\":\""
            )),
            "{}",
            renewed.body
        );
        assert_eq!(
            (claims(&fresh)["room_id"].as_u64(), &claims(&fresh)["owner"]),
            (Some(id), &json!(true))
        );
        let changed = put(
            &server,
            &format!("/chats/{id}"),
            Some(&fresh),
            &json!({"description": "d"}),
        );
        assert_eq!(changed.status, 200, "{}", changed.body);
    }
}

/// Every change and delete is logged at info: room id, what changed (never a password's
/// value), the client address, owner or admin.
#[test]
fn each_change_and_delete_is_logged_with_who_and_what() {
    let scratch = Scratch::new("owners-log");
    let config = json!({
        "address": "127.0.0.1:0",
        "ws_address": "127.0.0.1:0",
        "log_file": "chitchat.log",
        "log_level": "info",
        "bcrypt_cost": 4,
        "db_path": null,
        "admin_key": ADMIN_KEY,
    });
    let mut binary = Binary::spawn_with_config(&scratch, &config, &[("SECRET_KEY", "s")]);
    let (http, _) = binary.ready();
    let request = |method: &str, path: &str, token: Option<&str>, body: Option<Value>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        common::http_request(http, method, path, &headers, body.as_deref())
    };
    let created = request(
        "POST",
        "/chats",
        None,
        Some(json!({"title": "Logged", "visibility": "public"})),
    );
    let owner = created.json()["owner_token"].as_str().unwrap().to_owned();
    let change =
        json!({"description": "new", "visibility": "private", "password": "hunter2-secret"});
    assert_eq!(
        request("PUT", "/chats/2", Some(&owner), Some(change)).status,
        200
    );
    assert_eq!(
        request("DELETE", "/chats/2", Some(ADMIN_KEY), None).status,
        200
    );
    binary.signal("TERM");
    assert_eq!(binary.wait_exit().status.code(), Some(0));
    let log = std::fs::read_to_string(scratch.path("chitchat.log")).unwrap();
    assert!(
        log.contains("[INFO] room 2 changed by owner from 127.0.0.1: description, visibility private, password"),
        "no change line in\n{log}"
    );
    assert!(
        log.contains("[INFO] room 2 deleted by admin from 127.0.0.1"),
        "no delete line in\n{log}"
    );
    assert!(!log.contains("hunter2"), "a password in the log:\n{log}");
    assert!(!log.contains(ADMIN_KEY), "the admin key in the log:\n{log}");
}

/// An owner token reaches its room through its title too, and the hidden room it owns by
/// id (a valid token for it: SPEC, Rooms).
#[test]
fn an_owner_finds_its_hidden_room_by_id() {
    let server = TestServer::start();
    let room = server.create_room("Den", "hidden", Some(PASSWORD));
    let owner = room["owner_token"].as_str().unwrap();
    assert_error(&server.get("/chats/2"), 404, 101);
    let seen = server.send("GET", "/chats/2", Some(owner), None);
    assert_eq!(seen.status, 200, "{}", seen.body);
    let changed = put(
        &server,
        "/chats/Den",
        Some(owner),
        &json!({"description": "d"}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
}
