//! The token endpoints (`POST /chats/<room>/token`, `GET /chats/<room>/token/renew`) and the
//! check every endpoint makes of a presented token ([`require_token`], the
//! `Authorization: Bearer` header). Signing and verifying are `crate::token`; wrong
//! secrets are counted by `limits` before bcrypt runs.

use std::net::IpAddr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tiny_http::Request;

use crate::error::{ApiError, ErrorKind};
use crate::path::RoomRef;
use crate::rooms::RoomKey;
use crate::token;
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
    let key = state.rooms.key(room)?;
    if !key.visibility.needs_token() {
        return Ok(Reply::json(200, &json!({"status": true})));
    }
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| ApiError::field(ErrorKind::InvalidJson, "name"))?;
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

pub(super) fn renew_token(
    state: &State,
    request: &Request,
    room: &RoomRef,
) -> Result<Reply, ApiError> {
    let key = state.rooms.key(room)?;
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
