//! Room and owner tokens: issue and verify JWTs (HS256 only), and find the token a request
//! presents.
//!
//! Two kinds, each signed with a key of its own so neither can pass for the other:
//! - a *room token* (`username`, `room_id`, `exp`), from the room's password, lets its
//!   holder read and chat. Its key is derived from the server secret, the room's bcrypt
//!   hash and the room's id, so it opens exactly one room, and dies when that room is
//!   deleted or its password changes (SPEC, Tokens);
//! - an *owner token* (`room_id`, `owner: true`, `exp`), handed to whoever created the
//!   room, lets its holder change and delete it (SPEC, Who may change a room). Its key is
//!   derived from the secret, the room's id and the time it was created, *not* the hash: it
//!   survives password changes, and dies with the room. The id alone would do while ids
//!   are never reused; the creation time also keeps an old owner token from opening a new
//!   room that got the same id from a fresh database or an emptied Redis.
//!
//! The algorithm is read from the token's header and checked before anything else: only
//! HS256 is accepted, so `alg: none` or a switch to another algorithm is refused with 402
//! rather than trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ErrorKind};
use crate::path::query_param;
use crate::rooms::RoomKey;

/// What a token says: who, for which room, until when (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub room_id: u64,
    pub exp: u64,
}

/// What an owner token says: which room its holder may change, that it is an owner's
/// (always `true`: a token without it is not an owner token), until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerClaims {
    pub room_id: u64,
    pub owner: bool,
    pub exp: u64,
}

/// The per-room HMAC key of room tokens. Public rooms have no hash and so no room tokens.
fn room_secret(secret: &str, room: &RoomKey) -> Option<Vec<u8>> {
    let hash = room.password_hash.as_deref()?;
    Some(format!("{secret}\n{hash}\n{}", room.id).into_bytes())
}

/// The per-room HMAC key of owner tokens: no hash in it, so it outlives password changes;
/// the creation time in it, so it dies with the room (see the module docs). The `owner`
/// line keeps it apart from every room key (an id has no newline).
fn owner_secret(secret: &str, room: &RoomKey) -> Vec<u8> {
    format!("{secret}\nowner\n{}\n{}", room.id, room.created_at).into_bytes()
}

/// Seconds since the epoch, `ttl` from now.
fn expiry(ttl: Duration) -> u64 {
    let exp = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or(SystemTime::now());
    exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn sign(claims: &impl Serialize, key: &[u8]) -> Option<String> {
    crate::hs256::install();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
    .ok()
}

/// Signs a token for `username` in `room`, valid for `ttl`. `None` for a public room.
pub fn issue(secret: &str, room: &RoomKey, username: &str, ttl: Duration) -> Option<String> {
    let key = room_secret(secret, room)?;
    let claims = Claims {
        username: username.to_owned(),
        room_id: room.id,
        exp: expiry(ttl),
    };
    sign(&claims, &key)
}

/// Signs an owner token for `room`, valid for `ttl` (`owner_token_days`).
pub fn issue_owner(secret: &str, room: &RoomKey, ttl: Duration) -> Option<String> {
    let claims = OwnerClaims {
        room_id: room.id,
        owner: true,
        exp: expiry(ttl),
    };
    sign(&claims, &owner_secret(secret, room))
}

/// Checks a room token for `room`: 402 for any algorithm but HS256, 401 for a bad
/// signature (including another room's token, and an owner token), 403 for an expired or
/// malformed one.
pub fn verify(secret: &str, room: &RoomKey, token: &str) -> Result<Claims, ApiError> {
    let key = room_secret(secret, room);
    let claims: Claims = decode(token, key.as_deref())?;
    if claims.room_id != room.id {
        return Err(ApiError::new(ErrorKind::InvalidSignature));
    }
    Ok(claims)
}

/// A room token checked once, at a socket's handshake: what a socket keeps so that later
/// checks (at attach and at each `join`, `access::join_as`) need no JWT decoding. Decoding
/// is the deepest call a socket's thread would make: it took a socket with a token to five
/// stack pages, where a session now keeps to two (`ws::SESSION_STACK_BYTES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub username: String,
    room_id: u64,
    exp: u64,
    /// The room's bcrypt hash when the token was checked: part of its key, so the token
    /// opens the room exactly as long as the room keeps this hash.
    password_hash: String,
}

impl Pass {
    /// Checks `token` for `room` as [`verify`] does, keeping what later checks need.
    pub fn check(secret: &str, room: &RoomKey, token: &str) -> Result<Pass, ApiError> {
        let claims = verify(secret, room, token)?;
        Ok(Pass {
            username: claims.username,
            room_id: room.id,
            exp: claims.exp,
            password_hash: room.password_hash.clone().unwrap_or_default(),
        })
    }

    /// What [`verify`] would answer now for this token and `room` as it is now: 401 if the
    /// room's key changed (a new password, or another room), then 403 once it expired.
    pub fn still_opens(&self, room: &RoomKey) -> Result<&str, ApiError> {
        if room.id != self.room_id || room.password_hash.as_deref() != Some(&self.password_hash) {
            return Err(ApiError::new(ErrorKind::InvalidSignature));
        }
        // As the JWT library checks `exp`, with no leeway: valid up to and including `exp`.
        if self.exp < expiry(Duration::ZERO) {
            return Err(ApiError::new(ErrorKind::InvalidToken));
        }
        Ok(&self.username)
    }
}

/// Checks an owner token for `room`, with the same answers as [`verify`] (a room token is
/// a bad signature here); one without `owner: true` is malformed (403).
pub fn verify_owner(secret: &str, room: &RoomKey, token: &str) -> Result<OwnerClaims, ApiError> {
    let claims: OwnerClaims = decode(token, Some(&owner_secret(secret, room)))?;
    if claims.room_id != room.id {
        return Err(ApiError::new(ErrorKind::InvalidSignature));
    }
    if !claims.owner {
        return Err(ApiError::new(ErrorKind::InvalidToken));
    }
    Ok(claims)
}

/// Decodes `token` signed with `key` (`None`: the room has no key of this kind, so every
/// token is invalid), after checking the header names HS256.
fn decode<T: DeserializeOwned>(token: &str, key: Option<&[u8]>) -> Result<T, ApiError> {
    let invalid = || ApiError::new(ErrorKind::InvalidToken);
    if header_algorithm(token).ok_or_else(invalid)? != "HS256" {
        return Err(ApiError::new(ErrorKind::UnauthorizedSigningMethod));
    }
    let key = key.ok_or_else(invalid)?;
    crate::hs256::install();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<T>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|e| match e.kind() {
            JwtErrorKind::InvalidSignature => ApiError::new(ErrorKind::InvalidSignature),
            JwtErrorKind::InvalidAlgorithm => ApiError::new(ErrorKind::UnauthorizedSigningMethod),
            _ => invalid(),
        })?;
    Ok(data.claims)
}

/// The `alg` of a token's header, read by hand because the JWT library cannot even parse
/// a header that names an algorithm it does not know (such as `none`). The header must be
/// a JSON object (RFC 7515): read into a struct, serde would also take an array, and
/// `["none"]` would be refused as another algorithm (402) rather than as malformed (403).
fn header_algorithm(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (header, _, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// The token a request presents, wherever it is (SPEC, Tokens): `Authorization: Bearer`
/// for REST and WebSocket requests; on a WebSocket handshake also the first offered
/// `Sec-WebSocket-Protocol` value (what a browser can send) or a `?token=` parameter. The
/// REST side passes `None` for the two WebSocket-only places.
pub fn presented(
    authorization: Option<&str>,
    protocol: Option<&str>,
    query: Option<&str>,
) -> Option<String> {
    protocol
        .and_then(first_protocol)
        .map(str::to_owned)
        .or_else(|| authorization.and_then(from_bearer).map(str::to_owned))
        .or_else(|| query.and_then(|q| query_param(q, "token")))
}

/// The first of the offered subprotocols (`a, b` lists are allowed by RFC 6455): the one a
/// handshake echoes back, and the one read as a token.
pub fn first_protocol(offered: &str) -> Option<&str> {
    Some(offered.split(',').next()?.trim()).filter(|p| !p.is_empty())
}

/// The token in an `Authorization: Bearer <token>` header value, if that is what it is.
fn from_bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(id: u64, hash: &str) -> RoomKey {
        RoomKey {
            id,
            visibility: crate::rooms::Visibility::Private,
            password_hash: Some(hash.into()),
            created_at: "2026-11-28T15:19:28.123Z".into(),
        }
    }

    /// SPEC, Who may change a room: an owner token survives a password change, opens its
    /// own room only, and dies with the room (a room made again with the same id, from a
    /// fresh database, is another room).
    #[test]
    fn an_owner_token_outlives_the_password_and_dies_with_the_room() {
        let hour = Duration::from_secs(3600);
        let token = issue_owner("s", &room(2, "h"), hour).unwrap();
        let claims = verify_owner("s", &room(2, "new hash"), &token).unwrap();
        assert_eq!((claims.room_id, claims.owner), (2, true));
        assert_eq!(
            verify_owner("s", &room(3, "h"), &token).unwrap_err().code(),
            401
        );
        let mut again = room(2, "h");
        again.created_at = "2027-01-01T00:00:00.000Z".into();
        assert_eq!(verify_owner("s", &again, &token).unwrap_err().code(), 401);
    }

    /// Neither kind of token passes for the other: their keys differ.
    #[test]
    fn room_tokens_and_owner_tokens_are_not_interchangeable() {
        let hour = Duration::from_secs(3600);
        let owner = issue_owner("s", &room(2, "h"), hour).unwrap();
        let member = issue("s", &room(2, "h"), "ann", hour).unwrap();
        assert_eq!(verify("s", &room(2, "h"), &owner).unwrap_err().code(), 401);
        assert_eq!(
            verify_owner("s", &room(2, "h"), &member)
                .unwrap_err()
                .code(),
            401
        );
    }

    #[test]
    fn a_token_opens_its_own_room_only() {
        let token = issue("s", &room(2, "h"), "ann", Duration::from_secs(60)).unwrap();
        assert_eq!(verify("s", &room(2, "h"), &token).unwrap().username, "ann");
        assert_eq!(verify("s", &room(3, "h"), &token).unwrap_err().code(), 401);
        assert_eq!(
            verify("s", &room(2, "new hash"), &token)
                .unwrap_err()
                .code(),
            401
        );
        assert_eq!(
            verify("other", &room(2, "h"), &token).unwrap_err().code(),
            401
        );
    }

    /// A pass, checked once, answers later as verifying its token again would: the same
    /// room opens, a new password or another room is 401, an expired token 403.
    #[test]
    fn a_pass_answers_as_verifying_its_token_again_would() {
        let token = issue("s", &room(2, "h"), "ann", Duration::from_secs(60)).unwrap();
        let pass = Pass::check("s", &room(2, "h"), &token).unwrap();
        for now in [room(2, "h"), room(2, "new hash"), room(3, "h")] {
            let again = verify("s", &now, &token).map(|claims| claims.username);
            let kept = pass.still_opens(&now).map(str::to_owned);
            assert_eq!(kept.map_err(|e| e.code()), again.map_err(|e| e.code()));
        }
        let key = room_secret("s", &room(2, "h")).unwrap();
        let expired = Claims {
            username: "ann".into(),
            room_id: 2,
            exp: expiry(Duration::ZERO) - 10,
        };
        let old = sign(&expired, &key).unwrap();
        assert_eq!(verify("s", &room(2, "h"), &old).unwrap_err().code(), 403);
        let pass = Pass {
            exp: expired.exp,
            ..pass
        };
        assert_eq!(pass.still_opens(&room(2, "h")).unwrap_err().code(), 403);
        assert_eq!(
            Pass::check("s", &room(2, "h"), &old).unwrap_err().code(),
            403
        );
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        let token = issue("s", &room(2, "h"), "ann", Duration::from_secs(60)).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{payload}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#)
        );
        assert_eq!(verify("s", &room(2, "h"), &none).unwrap_err().code(), 402);
        assert_eq!(
            verify("s", &room(2, "h"), "garbage").unwrap_err().code(),
            403
        );
    }

    /// Found by the `token` fuzz target (fuzz/fuzz_targets/token.rs): a header that is a
    /// JSON array, `["max_message_bytes"]` (input `\x01["max_message_bytes"\n]\n\n\n\n\n\t`:
    /// that header with good claims and signature), was read as naming an algorithm and
    /// refused with 402; a header that is not an object is malformed: 403. The same for a
    /// header whose other fields are not UTF-8 (`{"alg":"x","t":"\xac"}`), which serde
    /// skipped unchecked.
    #[test]
    fn a_header_that_is_not_a_json_object_is_malformed() {
        let token = issue("s", &room(2, "h"), "ann", Duration::from_secs(60)).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for header in [
            &b"[\"max_message_bytes\"\n]"[..],
            b"[\"none\"]",
            b"[\"HS256\"]",
            b"{\"alg\":\"yyyHS256\",\"t$yp\":\"JW\xac\xdd\xd3\"}",
        ] {
            let forged = format!("{}.{rest}", engine.encode(header));
            assert_eq!(
                verify("s", &room(2, "h"), &forged).unwrap_err().code(),
                403,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        let none = format!("{}.{rest}", engine.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(verify("s", &room(2, "h"), &none).unwrap_err().code(), 402);
    }

    #[test]
    fn public_rooms_have_no_tokens() {
        let public = RoomKey {
            id: 1,
            visibility: crate::rooms::Visibility::Public,
            password_hash: None,
            created_at: String::new(),
        };
        assert_eq!(issue("s", &public, "ann", Duration::from_secs(60)), None);
    }

    #[test]
    fn bearer_header_is_read() {
        assert_eq!(from_bearer("Bearer abc"), Some("abc"));
        assert_eq!(from_bearer("bearer  abc "), Some("abc"));
        assert_eq!(from_bearer("Basic abc"), None);
    }

    #[test]
    fn a_token_is_found_in_protocol_header_or_query_in_that_order() {
        let found = |a, p, q| presented(a, p, q);
        assert_eq!(
            found(Some("Bearer h"), Some("p, x"), Some("token=q")).as_deref(),
            Some("p")
        );
        assert_eq!(
            found(Some("Bearer h"), None, Some("token=q")).as_deref(),
            Some("h")
        );
        assert_eq!(
            found(None, Some(" "), Some("a=1&token=q%2E")).as_deref(),
            Some("q.")
        );
        assert_eq!(found(Some("Basic x"), None, None), None);
    }
}
