//! Room tokens: issue and verify JWTs (HS256 only), and find the token a request presents.
//!
//! A token's signing key is derived from the server secret, the room's bcrypt hash and the
//! room's id, so a token opens exactly one room, and dies when that room is deleted or its
//! password changes (SPEC, Tokens). The algorithm is read from the token's header and checked
//! before anything else: only HS256 is accepted, so `alg: none` or a switch to another
//! algorithm is refused with 402 rather than trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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

/// The per-room HMAC key. Public rooms have no hash and so no tokens.
fn room_secret(secret: &str, room: &RoomKey) -> Option<Vec<u8>> {
    let hash = room.password_hash.as_deref()?;
    Some(format!("{secret}\n{hash}\n{}", room.id).into_bytes())
}

/// Signs a token for `username` in `room`, valid for `ttl`. `None` for a public room.
pub fn issue(secret: &str, room: &RoomKey, username: &str, ttl: Duration) -> Option<String> {
    let key = room_secret(secret, room)?;
    let exp = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or(SystemTime::now());
    let claims = Claims {
        username: username.to_owned(),
        room_id: room.id,
        exp: exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
    };
    crate::hs256::install();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key),
    )
    .ok()
}

/// Checks `token` for `room`: 402 for any algorithm but HS256, 401 for a bad signature
/// (including another room's token), 403 for an expired or malformed one.
pub fn verify(secret: &str, room: &RoomKey, token: &str) -> Result<Claims, ApiError> {
    let invalid = || ApiError::new(ErrorKind::InvalidToken);
    if header_algorithm(token).ok_or_else(invalid)? != "HS256" {
        return Err(ApiError::new(ErrorKind::UnauthorizedSigningMethod));
    }
    let key = room_secret(secret, room).ok_or_else(invalid)?;
    crate::hs256::install();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key), &validation)
        .map_err(|e| match e.kind() {
            JwtErrorKind::InvalidSignature => ApiError::new(ErrorKind::InvalidSignature),
            JwtErrorKind::InvalidAlgorithm => ApiError::new(ErrorKind::UnauthorizedSigningMethod),
            _ => invalid(),
        })?;
    if data.claims.room_id != room.id {
        return Err(ApiError::new(ErrorKind::InvalidSignature));
    }
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
        }
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
