//! The WebSocket handshake: which room, which token, and the refusals.
//!
//! Runs inside tungstenite's `accept_hdr` callback, before the upgrade, so a refused client
//! gets a plain HTTP answer (404, 401, 403) with the same JSON error body the REST API uses.
//! A token may come as the `Sec-WebSocket-Protocol` value (what browsers can send; the value
//! is echoed back, which browsers require), as `Authorization: Bearer`, or as `?token=`.

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{header, HeaderValue, StatusCode};

use crate::error::{ApiError, ErrorKind};
use crate::rooms::{percent_decode, RoomRef};
use crate::token;
use crate::State;

/// Who a socket is, once its handshake has been accepted.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The room the socket chats in.
    pub room_id: u64,
    /// For a private or hidden room, the token's username: the only name it may join with.
    pub token_user: Option<String>,
}

/// Decides whether `request` may open a socket. On success also returns the subprotocol
/// to echo, if the client offered one.
pub fn admit(
    state: &State,
    request: &Request,
) -> Result<(Admission, Option<HeaderValue>), ApiError> {
    let room = room_in_path(request.uri().path())?;
    let key = state.rooms.key(&room)?;
    let protocol = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(first_protocol);
    let token_user = if key.visibility.needs_token() {
        let token = protocol
            .as_ref()
            .and_then(|p| p.to_str().ok().map(str::to_owned))
            .or_else(|| bearer(request))
            .or_else(|| request.uri().query().and_then(token_in_query))
            .ok_or_else(|| ApiError::new(ErrorKind::InvalidToken))?;
        Some(token::verify(&state.secret, &key, &token)?.username)
    } else {
        None
    };
    Ok((
        Admission {
            room_id: key.id,
            token_user,
        },
        protocol,
    ))
}

/// The room in `/chats/<id-or-title>/ws`; anything else is 404.
fn room_in_path(path: &str) -> Result<RoomRef, ApiError> {
    let not_found = || ApiError::new(ErrorKind::NotFound);
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["", "chats", room, "ws"] => RoomRef::from_segment(room).ok_or_else(not_found),
        _ => Err(not_found()),
    }
}

/// The first of the offered subprotocols (`a, b` lists are allowed by RFC 6455).
fn first_protocol(offered: &HeaderValue) -> Option<HeaderValue> {
    let first = offered.to_str().ok()?.split(',').next()?.trim();
    HeaderValue::from_str(first)
        .ok()
        .filter(|_| !first.is_empty())
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    token::from_bearer(value).map(str::to_owned)
}

fn token_in_query(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .and_then(percent_decode)
}

/// The HTTP answer refusing a handshake: the error's status and JSON body.
pub fn refusal(error: &ApiError) -> ErrorResponse {
    // A newline ends the body, as on the REST side.
    let body = error.to_json() + "\n";
    let mut response = ErrorResponse::new(Some(body.clone()));
    *response.status_mut() =
        StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A whole HTTP response for a request that is not a WebSocket upgrade at all (a browser
/// or `curl` pointed at the WebSocket port): 400 with code 305.
pub fn not_a_websocket_response() -> Vec<u8> {
    let error = ApiError::new(ErrorKind::UnsupportedClient);
    let body = error.to_json() + "\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Adds the echoed subprotocol to an accepting response.
pub fn accept(mut response: Response, protocol: Option<HeaderValue>) -> Response {
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ws_path_names_a_room() {
        assert_eq!(room_in_path("/chats/3/ws"), Ok(RoomRef::Id(3)));
        assert_eq!(
            room_in_path("/chats/My%20room/ws"),
            Ok(RoomRef::Title("My room".into()))
        );
        assert!(room_in_path("/chats/3").is_err());
        assert!(room_in_path("/chats/3/ws/x").is_err());
    }

    #[test]
    fn token_is_found_in_the_query() {
        assert_eq!(
            token_in_query("a=1&token=abc.def").as_deref(),
            Some("abc.def")
        );
        assert_eq!(token_in_query("a=1"), None);
    }
}
