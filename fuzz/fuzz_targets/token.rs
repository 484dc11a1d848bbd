//! Fuzz target: `token::verify` (and the hand-written header reader in front of it) against
//! one private room's key.
//!
//! The first byte picks how the rest is used: as the whole token, or as the token's header
//! JSON, completed with good claims and a correct HS256 signature, so that inputs reach the
//! algorithm check and the library's own header parsing rather than dying at the signature.
//! Invariants beyond "no panic": verification is deterministic; every refusal is 401, 402
//! or 403 (status 401 or 403); 402 only for a header that names another algorithm than
//! HS256; an accepted token is for this room, unexpired, and its header says HS256; a
//! correctly signed token with the plain `{"alg":"HS256","typ":"JWT"}` header is accepted.

#![no_main]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chitchat::token::{issue, verify};
use chitchat::{RoomKey, Visibility};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &str = "fuzz-secret";
const ROOM_ID: u64 = 2;
const HASH: &str = "$2b$04$abcdefghijklmnopqrstuu0123456789abcdefghijklmnopqrstu";

fn room() -> RoomKey {
    RoomKey {
        id: ROOM_ID,
        visibility: Visibility::Private,
        password_hash: Some(HASH.into()),
        created_at: "2026-11-28T15:19:28.123Z".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let room = room();
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        signed_with_header(&room, rest)
    };
    let verdict = verify(SECRET, &room, &token);
    assert_eq!(
        verdict,
        verify(SECRET, &room, &token),
        "verify is deterministic"
    );
    let alg = header_alg(&token);
    match verdict {
        Ok(claims) => {
            assert_eq!(claims.room_id, ROOM_ID);
            assert!(claims.exp > now(), "an expired token was accepted");
            assert_eq!(alg.as_deref(), Some("HS256"), "accepted {token:?}");
        }
        Err(error) => {
            let code = error.code();
            assert!([401, 402, 403].contains(&code), "code {code} for {token:?}");
            assert_eq!(error.status(), if code == 403 { 403 } else { 401 });
            if code == 402 {
                assert!(
                    alg.as_ref().is_some_and(|a| a != "HS256"),
                    "402 for a header saying {alg:?}: {token:?}"
                );
            }
            if mode % 2 == 1 && rest == br#"{"alg":"HS256","typ":"JWT"}"# {
                panic!("a good token was refused with {code}");
            }
        }
    }
});

/// `header.claims.signature`: `header` is the input, the claims are good for this room for
/// an hour, and the signature is right for the room's key.
fn signed_with_header(room: &RoomKey, header: &[u8]) -> String {
    let good = issue(SECRET, room, "ann", Duration::from_secs(3600)).expect("a private room");
    let claims = good.split('.').nth(1).expect("a JWT has three parts");
    let message = format!("{}.{claims}", URL_SAFE_NO_PAD.encode(header));
    // The key as `token::room_secret` derives it: secret, hash and id.
    let key = format!("{SECRET}\n{HASH}\n{ROOM_ID}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    format!("{message}.{signature}")
}

/// The header's `alg`, read independently: the first part, base64url, a JSON object.
fn header_alg(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let value: Value = serde_json::from_slice(&header).ok()?;
    value.as_object()?;
    value.get("alg")?.as_str().map(str::to_owned)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
