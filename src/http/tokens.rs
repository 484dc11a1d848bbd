//! The token endpoints (`POST /chats/<room>/token`, `GET /chats/<room>/token/renew`, which
//! also renews owner tokens) and the check endpoints make of a presented room token
//! ([`require_token`], the `Authorization: Bearer` header). Signing and verifying are `crate::token`; wrong
//! secrets are counted by `limits` before bcrypt runs.

use std::net::IpAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tiny_http::Request;

use crate::access;
use crate::error::{ApiError, ErrorKind};
use crate::path::RoomRef;
use crate::rooms::RoomKey;
use crate::token;
use crate::visible;
use crate::State;

use super::{bcrypt_slot, read_json, Reply};

/// The body of `POST /chats/<room>/token`.
#[derive(Deserialize)]
struct TokenRequest {
    name: Option<String>,
    secret: Option<String>,
}

/// A wrong secret counts toward `token_attempts_per_minute` for this address and room; past
/// it the request is refused before bcrypt runs. A right secret, or a full bcrypt queue,
/// counts nothing there; every check, right or wrong, holds one of the address's
/// `bcrypt_per_ip` slots while it runs.
pub(super) fn issue_token(
    state: &State,
    request: &mut Request,
    room: &RoomRef,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let body: TokenRequest = read_json(state, request, ErrorKind::InvalidJson)?;
    // A hidden room is asked for by its title here: by id it is not found, before any
    // bcrypt, exactly as a missing room (`access::find`).
    let key = access::find(state, room, None)?;
    if !key.visibility.needs_token() {
        return Ok(Reply::json(200, &json!({"status": true})));
    }
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| ApiError::field(ErrorKind::InvalidJson, "name"))?;
    // The token's name is the name its holder joins with: the same rule as a join's.
    if !visible::is_visible(name) {
        return Err(ApiError::field(ErrorKind::DuplicateUsername, "name"));
    }
    let secret = body.secret.unwrap_or_default();
    let attempt = state.limits.token_attempt(client, key.id, Instant::now())?;
    let _bcrypt = bcrypt_slot(state, client, true)?;
    // This worker waits, holding no lock, while a `hasher` thread runs bcrypt.
    let matches = match &key.password_hash {
        Some(hash) => state.hasher.verify(&secret, hash)?,
        None => false,
    };
    if !matches {
        attempt.keep();
        log::info!("room {}: wrong password for a token", key.id);
        return Err(ApiError::field(ErrorKind::Unauthorized, "secret"));
    }
    drop(attempt);
    token_reply(state, &key, name)
}

/// A room token gets a fresh room token; an owner token a fresh owner token, for any room
/// (SPEC, REST API); a public room without an owner token answers 200 with no token.
pub(super) fn renew_token(
    state: &State,
    request: &Request,
    room: &RoomRef,
) -> Result<Reply, ApiError> {
    let presented = bearer(request);
    let key = access::find(state, room, presented.as_deref())?;
    let owner = presented
        .as_deref()
        .filter(|_| key.id != access::DEFAULT_ROOM_ID)
        .is_some_and(|t| token::verify_owner(&state.secret, &key, t).is_ok());
    if owner {
        let owner_token = token::issue_owner(&state.secret, &key, state.config.owner_token_ttl)
            .ok_or_else(|| ApiError::new(ErrorKind::Internal))?;
        let reply = OwnerTokenReply {
            status: true,
            room_id: key.id,
            owner_token,
        };
        return Ok(Reply::json(201, &reply));
    }
    if !key.visibility.needs_token() {
        return Ok(Reply::json(200, &json!({"status": true})));
    }
    let claims =
        require_token(state, request, &key)?.expect("a room that needs a token was given one");
    token_reply(state, &key, &claims.username)
}

/// The answer to a token request, in the Go version's field order.
#[derive(Serialize)]
struct TokenReply<'a> {
    status: bool,
    name: &'a str,
    room_id: u64,
    token: String,
}

/// The answer to renewing an owner token, in SPEC's field order.
#[derive(Serialize)]
struct OwnerTokenReply {
    status: bool,
    room_id: u64,
    owner_token: String,
}

fn token_reply(state: &State, key: &RoomKey, name: &str) -> Result<Reply, ApiError> {
    let token = token::issue(&state.secret, key, name, state.config.token_ttl)
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidToken))?;
    Ok(Reply::json(
        201,
        &TokenReply {
            status: true,
            name,
            room_id: key.id,
            token,
        },
    ))
}

/// For a private or hidden room, the bearer token's claims (403 without one); `None` for a
/// public room, which needs none.
pub(super) fn require_token(
    state: &State,
    request: &Request,
    key: &RoomKey,
) -> Result<Option<token::Claims>, ApiError> {
    if !key.visibility.needs_token() {
        return Ok(None);
    }
    let token = bearer(request).ok_or_else(|| ApiError::new(ErrorKind::InvalidToken))?;
    token::verify(&state.secret, key, &token).map(Some)
}

/// The token of the `Authorization: Bearer` header: the one place a REST request carries one.
pub(super) fn bearer(request: &Request) -> Option<String> {
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    token::presented(authorization, None, None)
}
