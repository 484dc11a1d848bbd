//! Tokens (SPEC, "Tokens" and the token rows of the REST table): issuing, renewing, and
//! refusing every kind of bad token with its own code.
//!
//! Forged tokens are built by hand from the parts of a real one (base64url of the JSON
//! header and payload): the tests never know the signing key, and need not. A token signed
//! with another algorithm must be refused on the algorithm (402) before any signature check;
//! a changed signature or payload, or a token from another room, fails the signature (401).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{error_body, Response, TestServer};
use serde_json::{json, Value};

const PASSWORD: &str = "open sesame";

/// Starts a server with one private room, "Vault" (id 2), whose password is [`PASSWORD`].
fn server_with_private_room() -> TestServer {
    let server = TestServer::start();
    server.create_room("Vault", "private", Some(PASSWORD));
    server
}

/// `GET /chats/<room>/token/renew` with an optional bearer token.
fn renew(server: &TestServer, room: &str, token: Option<&str>) -> Response {
    server.send("GET", &format!("/chats/{room}/token/renew"), token, None)
}

/// Asserts `response` is the JSON error `code` (blaming `field`) with HTTP `status`.
fn assert_error(response: &Response, status: u16, code: u16, field: Option<&str>) {
    assert_eq!(response.status, status, "body: {}", response.body);
    assert_eq!(response.json(), error_body(code, field));
}

/// The three dot-separated parts of a JWT.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    match parts[..] {
        [header, payload, signature] => [header, payload, signature],
        _ => panic!("a JWT has three parts: {token:?}"),
    }
}

/// Decodes one base64url JSON part of a JWT.
fn decode(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("{part:?} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{part:?} is not JSON: {e}"))
}

/// Encodes a JSON value as one base64url part of a JWT.
fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Seconds since the Unix epoch, as JWT `exp` counts them.
fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The `exp` claim of a token.
fn exp_of(token: &str) -> u64 {
    let payload = decode(parts(token)[1]);
    payload["exp"]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer exp: {payload}"))
}

// ---------------------------------------------------------------------------------------
// Issuing
// ---------------------------------------------------------------------------------------

/// `POST /chats/<room>/token` with the right secret answers 201 `{status, name, room_id, token}`.
#[test]
fn token_request_for_a_private_room_answers_201_with_name_room_id_and_token() {
    let server = server_with_private_room();
    let response = server.post(
        "/chats/2/token",
        &json!({"name": "alice", "secret": PASSWORD}),
    );
    assert_eq!(response.status, 201, "body: {}", response.body);
    let body = response.json();
    let token = body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token string: {body}"));
    parts(token);
    assert_eq!(
        body,
        json!({"status": true, "name": "alice", "room_id": 2, "token": token})
    );
}

/// The token is an HS256 JWT whose claims are `username`, `room_id` and an `exp` 60 minutes
/// ahead.
#[test]
fn token_is_an_hs256_jwt_with_username_room_id_and_exp_an_hour_ahead() {
    let server = server_with_private_room();
    let before = now_seconds();
    let token = server.token("2", "alice", PASSWORD);
    let after = now_seconds();
    let [header, payload, _] = parts(&token);
    assert_eq!(decode(header)["alg"], "HS256");
    let payload = decode(payload);
    assert_eq!(payload["username"], "alice", "claims: {payload}");
    assert_eq!(payload["room_id"], 2, "claims: {payload}");
    let exp = exp_of(&token);
    assert!(
        (before + 3600..=after + 3601).contains(&exp),
        "exp {exp} is not an hour after {before}"
    );
}

/// A token can be requested by room title, here for a hidden room.
#[test]
fn token_can_be_requested_by_room_title() {
    let server = TestServer::start();
    server.create_room("Back Room", "hidden", Some(PASSWORD));
    let response = server.post(
        "/chats/back%20room/token",
        &json!({"name": "alice", "secret": PASSWORD}),
    );
    assert_eq!(response.status, 201, "body: {}", response.body);
    let token = response.json()["token"].clone();
    assert_eq!(
        response.json(),
        json!({"status": true, "name": "alice", "room_id": 2, "token": token})
    );
}

/// A public room needs no token: the request answers 200 `{"status":true}` and no token.
#[test]
fn token_request_for_a_public_room_answers_200_status_true() {
    let server = TestServer::start();
    let response = server.post(
        "/chats/1/token",
        &json!({"name": "alice", "secret": "anything"}),
    );
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
}

/// A wrong secret is refused: HTTP 401, code 304, field `secret`.
#[test]
fn wrong_secret_is_refused_with_304_on_secret() {
    let server = server_with_private_room();
    let response = server.post(
        "/chats/2/token",
        &json!({"name": "alice", "secret": "open sesamE"}),
    );
    assert_error(&response, 401, 304, Some("secret"));
}

/// A missing secret is refused: HTTP 401, code 304, field `secret`.
#[test]
fn missing_secret_is_refused_with_304_on_secret() {
    let server = server_with_private_room();
    let response = server.post("/chats/2/token", &json!({"name": "alice"}));
    assert_error(&response, 401, 304, Some("secret"));
}

/// A missing name is refused: HTTP 400, code 303, field `name`.
#[test]
fn missing_name_is_refused_with_303_on_name() {
    let server = server_with_private_room();
    let response = server.post("/chats/2/token", &json!({"secret": PASSWORD}));
    assert_error(&response, 400, 303, Some("name"));
}

/// A body that is not JSON is refused: HTTP 400, code 303, no field.
#[test]
fn token_request_body_that_is_not_json_is_refused_with_303() {
    let server = server_with_private_room();
    let body = format!("name=alice&secret={PASSWORD}");
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let response = server.request("POST", "/chats/2/token", &headers, Some(body.as_bytes()));
    assert_error(&response, 400, 303, None);
}

/// A token for an unknown room is 404 with code 101.
#[test]
fn token_request_for_an_unknown_room_is_404_with_code_101() {
    let server = TestServer::start();
    let response = server.post(
        "/chats/7/token",
        &json!({"name": "alice", "secret": PASSWORD}),
    );
    assert_error(&response, 404, 101, None);
}

// ---------------------------------------------------------------------------------------
// Renewing
// ---------------------------------------------------------------------------------------

/// Renewing answers 201 with the same shape, and the new token works in turn.
#[test]
fn renew_answers_201_with_a_token_that_works() {
    let server = server_with_private_room();
    let first = server.token("2", "alice", PASSWORD);
    let response = renew(&server, "2", Some(&first));
    assert_eq!(response.status, 201, "body: {}", response.body);
    let body = response.json();
    let second = body["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token string: {body}"))
        .to_owned();
    assert_eq!(
        body,
        json!({"status": true, "name": "alice", "room_id": 2, "token": second})
    );
    let again = renew(&server, "Vault", Some(&second));
    assert_eq!(
        again.status, 201,
        "the renewed token is refused: {}",
        again.body
    );
}

/// Renewing gives a later expiry. (`exp` counts whole seconds, so renew until a second
/// has passed.)
#[test]
fn renew_moves_the_expiry_forward() {
    let server = server_with_private_room();
    let first = server.token("2", "alice", PASSWORD);
    let deadline = Instant::now() + common::TIMEOUT;
    loop {
        let response = renew(&server, "2", Some(&first));
        assert_eq!(response.status, 201, "body: {}", response.body);
        let renewed = response.json()["token"]
            .as_str()
            .expect("a token")
            .to_owned();
        assert!(
            exp_of(&renewed) >= exp_of(&first),
            "renewing moved the expiry back"
        );
        if exp_of(&renewed) > exp_of(&first) {
            break;
        }
        assert!(Instant::now() < deadline, "the expiry never moved forward");
        std::thread::sleep(Duration::from_millis(50)); // polling the clock, not synchronising
    }
}

/// Renewing in a public room answers 200 `{"status":true}`, token or not.
#[test]
fn renew_in_a_public_room_answers_200_status_true() {
    let server = TestServer::start();
    let response = renew(&server, "1", None);
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.json(), json!({"status": true}));
}

// ---------------------------------------------------------------------------------------
// Refusing bad tokens
// ---------------------------------------------------------------------------------------

/// No token where one is needed is 403 with code 403.
#[test]
fn missing_token_is_refused_with_403() {
    let server = server_with_private_room();
    assert_error(&renew(&server, "2", None), 403, 403, None);
}

/// A token that is not a JWT at all is 403 with code 403.
#[test]
fn malformed_token_is_refused_with_403() {
    let server = server_with_private_room();
    for token in ["garbage", "a.b", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9.e30"] {
        let response = renew(&server, "2", Some(token));
        assert_eq!(response.status, 403, "token {token:?}: {}", response.body);
        assert_eq!(response.json(), error_body(403, None), "token {token:?}");
    }
}

/// A token with `"alg":"none"` and no signature is refused on the algorithm: 401, code 402.
#[test]
fn token_with_alg_none_is_refused_with_402() {
    let server = server_with_private_room();
    let real = server.token("2", "alice", PASSWORD);
    let header = encode(&json!({"alg": "none", "typ": "JWT"}));
    let forged = format!("{header}.{}.", parts(&real)[1]);
    assert_error(&renew(&server, "2", Some(&forged)), 401, 402, None);
}

/// A token claiming HS512 is refused on the algorithm (401, code 402), before its signature
/// is even looked at.
#[test]
fn token_signed_with_hs512_is_refused_with_402() {
    let server = server_with_private_room();
    let real = server.token("2", "alice", PASSWORD);
    let header = encode(&json!({"alg": "HS512", "typ": "JWT"}));
    let signature = URL_SAFE_NO_PAD.encode([7u8; 64]);
    let forged = format!("{header}.{}.{signature}", parts(&real)[1]);
    assert_error(&renew(&server, "2", Some(&forged)), 401, 402, None);
}

/// A real token with one bit of its signature flipped is 401, code 401.
#[test]
fn token_with_a_tampered_signature_is_refused_with_401() {
    let server = server_with_private_room();
    let real = server.token("2", "alice", PASSWORD);
    let [header, payload, signature] = parts(&real);
    let mut bytes = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("a base64url signature");
    bytes[0] ^= 1;
    let forged = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_error(&renew(&server, "2", Some(&forged)), 401, 401, None);
}

/// A real token whose payload is rewritten to another name keeps a signature that no longer
/// matches: 401, code 401. Nobody can become someone else by editing a token.
#[test]
fn token_with_a_tampered_payload_is_refused_with_401() {
    let server = server_with_private_room();
    let real = server.token("2", "alice", PASSWORD);
    let [header, payload, signature] = parts(&real);
    let mut claims = decode(payload);
    claims["username"] = json!("mallory");
    let forged = format!("{header}.{}.{signature}", encode(&claims));
    assert_error(&renew(&server, "2", Some(&forged)), 401, 401, None);
}

/// A valid token of one room does not open another: 401, code 401.
#[test]
fn token_of_another_room_is_refused_with_401() {
    let server = server_with_private_room();
    server.create_room("Annex", "private", Some(PASSWORD));
    let vault = server.token("2", "alice", PASSWORD);
    assert_error(&renew(&server, "3", Some(&vault)), 401, 401, None);
    let response = server.send("DELETE", "/chats/3", Some(&vault), None);
    assert_error(&response, 401, 401, None);
}

/// An expired token is 403, code 403. The server runs with a one-second token lifetime and
/// the test renews with the first token until the server stops accepting it.
#[test]
fn expired_token_is_refused_with_403() {
    let server = TestServer::start_with(|config| config.token_ttl = Duration::from_secs(1));
    server.create_room("Vault", "private", Some(PASSWORD));
    let token = server.token("2", "alice", PASSWORD);
    let deadline = Instant::now() + common::TIMEOUT;
    let refused = loop {
        let response = renew(&server, "2", Some(&token));
        if response.status != 201 {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "a token with a 1 s lifetime is still accepted after {:?}",
            common::TIMEOUT
        );
        std::thread::sleep(Duration::from_millis(50)); // polling the clock, not synchronising
    };
    assert_error(&refused, 403, 403, None);
}

/// A token dies with its room: once the room is deleted, a new room, even with the same title
/// and password, does not accept it (401, code 401), and the old id is simply gone (404).
#[test]
fn token_dies_when_its_room_is_deleted() {
    let server = server_with_private_room();
    let token = server.token("2", "alice", PASSWORD);
    let deleted = server.delete("/chats/2");
    assert_eq!(
        (deleted.status, deleted.json()),
        (200, json!({"status": true}))
    );
    assert_error(&renew(&server, "2", Some(&token)), 404, 101, None);
    server.create_room("Vault", "private", Some(PASSWORD)); // id 3
    assert_error(&renew(&server, "3", Some(&token)), 401, 401, None);
    assert_error(&renew(&server, "Vault", Some(&token)), 401, 401, None);
}
