//! Who may do what to a room, decided in one place for both listeners (SPEC, "Who may
//! change a room" and "Rooms"):
//! - [`may_change`]: a `PUT` or `DELETE` needs the room's owner token or the operator's
//!   `admin_key`; room 1 has no owner. A room token (from the password) is refused with
//!   104: it lets its holder read and chat, not change the room.
//! - [`find`]: a hidden room asked for by id, without a valid token for it, answers exactly
//!   as a room that does not exist (404, 101), so ids cannot be walked to find hidden
//!   rooms. A missing room does the same work as a hidden one (a token presented is checked
//!   against a decoy key), so neither the answer nor its time tells them apart; no path
//!   runs bcrypt before this has answered.
//! - [`join_as`]: a socket's access is checked again at each `join`, against the room as it
//!   is now: a token that expired is refused (403), and a socket whose token no longer
//!   opens the room (its password or visibility changed after the handshake) is closed.
//!
//! Signing and verifying are `token`'s; this file only says which token opens what.

use std::fmt;

use crate::error::{ApiError, ErrorKind};
use crate::path::RoomRef;
use crate::rooms::{RoomKey, Visibility};
use crate::token;
use crate::State;

/// Room 1, "Public Chat": made by the server, so nobody holds an owner token for it; only
/// `admin_key` changes or deletes it.
pub const DEFAULT_ROOM_ID: u64 = 1;

/// A bcrypt hash for the decoy key a missing room's token is checked against: never the
/// hash of any room, it only makes the work the same.
const DECOY_HASH: &str = "$2b$04$decoydecoydecoydecoyde.decoydecoydecoydecoydecoydecoyd";

/// Who a room change comes from, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changer {
    /// The holder of the room's owner token: whoever created it.
    Owner,
    /// The operator, with `admin_key`.
    Admin,
}

impl fmt::Display for Changer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Changer::Owner => "owner",
            Changer::Admin => "admin",
        })
    }
}

/// Whether `token` is the operator's `admin_key`. Compared byte by byte without stopping
/// at the first difference, so the time taken does not tell a guesser how much was right.
pub fn is_admin(state: &State, token: &str) -> bool {
    let Some(key) = state.config.admin_key.as_deref() else {
        return false;
    };
    let (a, b) = (key.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Whether `token` may change or delete `key`'s room, and as whom. No token: 403. The
/// room's own room token: 104 (401). Anything else that is not its owner token (another
/// room's, forged, expired): the token error (401, 402, 403).
pub fn may_change(state: &State, key: &RoomKey, token: Option<&str>) -> Result<Changer, ApiError> {
    let token = token.ok_or_else(|| ApiError::new(ErrorKind::InvalidToken))?;
    if is_admin(state, token) {
        return Ok(Changer::Admin);
    }
    let owner = token::verify_owner(&state.secret, key, token);
    match owner {
        Ok(_) if key.id != DEFAULT_ROOM_ID => Ok(Changer::Owner),
        Ok(_) => Err(ApiError::new(ErrorKind::InvalidSignature)),
        Err(error) => match token::verify(&state.secret, key, token) {
            Ok(_) => Err(ApiError::new(ErrorKind::RoomUnauthorized)),
            Err(_) => Err(error),
        },
    }
}

/// Whether `token` opens `key`'s room in any way: a room token, its owner token, or the
/// admin key.
fn opens(state: &State, key: &RoomKey, token: &str) -> bool {
    // Each check runs, whatever the one before said: the same work for every token.
    let admin = is_admin(state, token);
    let member = token::verify(&state.secret, key, token).is_ok();
    let owner = token::verify_owner(&state.secret, key, token).is_ok();
    admin | member | owner
}

/// The room `room_ref` names, as a caller presenting `token` may know of it: a hidden room
/// asked for by id without a valid token answers 101, as a missing one does (see the
/// module docs). By title, every room is found: its title is what a hidden room's people
/// share.
pub fn find(state: &State, room_ref: &RoomRef, token: Option<&str>) -> Result<RoomKey, ApiError> {
    let RoomRef::Id(id) = room_ref else {
        return state.rooms.key(room_ref);
    };
    let found = state.rooms.key(room_ref);
    let (key, real) = match &found {
        Ok(key) => (key.clone(), true),
        Err(error) if error.kind == ErrorKind::RoomNotFound => (decoy(*id), false),
        Err(_) => return found,
    };
    if key.visibility != Visibility::Hidden {
        return found;
    }
    let opened = token.is_some_and(|token| opens(state, &key, token));
    match (real, opened) {
        (true, true) => found,
        _ => Err(ApiError::new(ErrorKind::RoomNotFound)),
    }
}

/// A hidden room that is not there, for a missing room's token to be checked against.
fn decoy(id: u64) -> RoomKey {
    RoomKey {
        id,
        visibility: Visibility::Hidden,
        password_hash: Some(DECOY_HASH.into()),
        created_at: String::new(),
    }
}

/// The name a socket admitted with `pass` (its token, checked at the handshake) must join
/// room `room_id` with now: `None` for a public room (any name), the token's name for a
/// private or hidden one. Checked against the room as it is at this join, not at the
/// handshake: 403 if the token expired meanwhile; 104 if it no longer opens the room (a
/// new password, or the room made private after a socket without a token connected), for
/// the socket to be closed.
pub fn join_as(
    state: &State,
    room_id: u64,
    pass: Option<&token::Pass>,
) -> Result<Option<String>, ApiError> {
    let key = state.rooms.key(&RoomRef::Id(room_id))?;
    if !key.visibility.needs_token() {
        return Ok(None);
    }
    let changed = || ApiError::new(ErrorKind::RoomUnauthorized);
    let pass = pass.ok_or_else(changed)?;
    match pass.still_opens(&key) {
        Ok(name) => Ok(Some(name.to_owned())),
        // It opened the room at the handshake: 403 now means it expired.
        Err(error) if error.kind == ErrorKind::InvalidToken => Err(error),
        Err(_) => Err(changed()),
    }
}
