//! The room endpoints: `GET /chats` (paged), `POST /chats`, `GET`, `PUT` and `DELETE
//! /chats/<room>`, and `GET /chats/<room>/messages`. Each parses, asks `access` who may do
//! what, calls `rooms`, and returns a `Reply`; `http/mod.rs` routes to them and turns an
//! error into its response.

use std::net::IpAddr;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use tiny_http::Request;

use crate::access;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Limit;
use crate::path::{query_param, RoomRef};
use crate::rooms::{Page, RoomInput, RoomKey, RoomView};
use crate::token;
use crate::State;

use super::tokens::{bearer, require_token};
use super::{bcrypt_slot, read_json, Reply};

/// The most rooms one page of `GET /chats?limit=` may hold.
const MAX_PAGE: usize = 1000;

/// `GET /chats`, every listed room, or one page of them: `?limit=L&after=ID`.
pub(super) fn list_rooms(state: &State, query: Option<&str>) -> Result<Reply, ApiError> {
    let page = Page {
        after: query_number(query, "after")?.unwrap_or(0),
        limit: query_limit(query, MAX_PAGE)?,
    };
    Ok(Reply::json(200, &state.rooms.list(page)?))
}

/// The query parameter `name` as a whole number, if given; 400 (105, `field` = `name`) if
/// it is not one.
fn query_number(query: Option<&str>, name: &'static str) -> Result<Option<u64>, ApiError> {
    query
        .and_then(|q| query_param(q, name))
        .map(|value| {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::field(ErrorKind::RoomInvalidContent, name))
        })
        .transpose()
}

/// The query parameter `limit`, if given: 1 to `most`, else 400 (105, `field` = `limit`).
fn query_limit(query: Option<&str>, most: usize) -> Result<Option<usize>, ApiError> {
    query_number(query, "limit")?
        .map(|limit| {
            usize::try_from(limit)
                .ok()
                .filter(|l| (1..=most).contains(l))
                .ok_or_else(|| ApiError::field(ErrorKind::RoomInvalidContent, "limit"))
        })
        .transpose()
}

/// A room created counts toward `rooms_per_minute`; a request refused for any reason (a
/// bad title, a full bcrypt queue) does not.
pub(super) fn create_room(
    state: &State,
    request: &mut Request,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let attempt = state.limits.room_creation(client, Instant::now())?;
    let input: RoomInput = read_json(state, request, ErrorKind::RoomInvalidJson)?;
    let _bcrypt = bcrypt_slot(state, client, input.password.is_some())?;
    let room = state.rooms.create(input).inspect_err(|e| {
        if e.kind == ErrorKind::TooManyRooms {
            state.metrics.refused(Limit::MaxRooms);
        }
    })?;
    attempt.keep();
    log::info!(
        "room {} created ({:?}) from {client}",
        room.id,
        room.visibility
    );
    let location = format!("/chats/{}", room.id);
    let key = RoomKey {
        id: room.id,
        visibility: room.visibility,
        password_hash: None,
        created_at: room.created_at.clone(),
    };
    let owner_token = token::issue_owner(&state.secret, &key, state.config.owner_token_ttl)
        .ok_or_else(|| ApiError::new(ErrorKind::Internal))?;
    let created = Created {
        room: &room,
        owner_token,
    };
    Ok(Reply::json(201, &created).with_header("Location", location))
}

/// The answer to `POST /chats`: the room, and the token that lets its creator change and
/// delete it (SPEC, Who may change a room).
#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    room: &'a RoomView,
    owner_token: String,
}

/// Users of a private room are shown only to a valid token holder (a room token, its
/// owner token or the admin key); a token that is presented must be valid, even where none
/// is needed. A hidden room asked for by id needs one to be found at all (`access::find`).
pub(super) fn get_room(
    state: &State,
    request: &Request,
    room: &RoomRef,
) -> Result<Reply, ApiError> {
    let token = bearer(request);
    let key = access::find(state, room, token.as_deref())?;
    let with_users = match token {
        Some(token) if key.visibility.needs_token() => {
            let opens = access::is_admin(state, &token)
                || token::verify_owner(&state.secret, &key, &token).is_ok();
            opens || token::verify(&state.secret, &key, &token).map(|_| true)?
        }
        _ => !key.visibility.needs_token(),
    };
    Ok(Reply::json(200, &state.rooms.view(key.id, with_users)?))
}

/// Needs the room's owner token or the admin key (`access::may_change`), checked before
/// the body is read; the change is logged with what changed, never a password's value.
pub(super) fn update_room(
    state: &State,
    request: &mut Request,
    room: &RoomRef,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let (key, changer) = changer_of(state, request, room)?;
    let input: RoomInput = read_json(state, request, ErrorKind::RoomInvalidJson)?;
    let changed = input.changed_fields();
    let _bcrypt = bcrypt_slot(state, client, input.password.is_some())?;
    let room = state.rooms.update(key.id, input)?;
    log::info!(
        "room {} changed by {changer} from {client}: {changed}",
        room.id
    );
    Ok(Reply::json(200, &room))
}

/// Needs the room's owner token or the admin key, as for PUT; logged.
pub(super) fn delete_room(
    state: &State,
    request: &Request,
    room: &RoomRef,
    client: IpAddr,
) -> Result<Reply, ApiError> {
    let (key, changer) = changer_of(state, request, room)?;
    state.rooms.delete(key.id)?;
    log::info!("room {} deleted by {changer} from {client}", key.id);
    Ok(Reply::json(200, &json!({"status": true})))
}

/// The room `request` names and who may change it: its owner or the operator, by the
/// request's bearer token (`access::may_change`); a hidden room is found only with a token
/// that opens it (`access::find`).
fn changer_of(
    state: &State,
    request: &Request,
    room: &RoomRef,
) -> Result<(RoomKey, access::Changer), ApiError> {
    let token = bearer(request);
    let key = access::find(state, room, token.as_deref())?;
    let changer = access::may_change(state, &key, token.as_deref())?;
    Ok((key, changer))
}

/// `GET /chats/<room>/messages[?since=N][&limit=L]`: the kept messages, oldest first; a
/// private or hidden room needs its token, as for PUT.
pub(super) fn messages(
    state: &State,
    request: &Request,
    room: &RoomRef,
    query: Option<&str>,
) -> Result<Reply, ApiError> {
    let key = access::find(state, room, bearer(request).as_deref())?;
    require_token(state, request, &key)?;
    let kept = state.config.history_len;
    let since = query_number(query, "since")?.unwrap_or(0);
    let limit = query_limit(query, kept)?.unwrap_or(kept);
    let events = state.rooms.messages(key.id, since, limit)?;
    let mut body = String::from("[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(event);
    }
    body.push_str("]\n");
    Ok(Reply::json_text(200, body))
}
