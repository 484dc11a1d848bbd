//! The whole WebSocket handshake: which room, which token, the subprotocol echo, and the
//! refusals.
//!
//! [`accept`] runs tungstenite's server handshake on the blocking socket; the room and the
//! token are checked inside its `accept_hdr` callback ([`admit`]), before the upgrade, so a
//! refused client gets a plain HTTP answer (404, 401, 403) with the same JSON error body
//! the REST API uses. Where the token may be is `token::presented`'s business; the value
//! of `Sec-WebSocket-Protocol`, when offered, is echoed back, which browsers require.

use std::io::Write;
use std::net::{Shutdown, TcpStream};

use tungstenite::error::Error as WsError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{header, HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, WebSocket};

use super::frame::{linger, Duplex};
use crate::error::{ApiError, ErrorKind};
use crate::path;
use crate::token;
use crate::State;

/// tungstenite's read buffer, allocated up front for every socket: small, since chat
/// frames are small and idle sockets are many. A larger frame grows it as needed.
const READ_BUFFER_BYTES: usize = 1024;

/// Who a socket is, once its handshake has been accepted.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The room the socket chats in.
    pub room_id: u64,
    /// For a private or hidden room, the token's username: the only name it may join with.
    pub token_user: Option<String>,
}

/// Runs the handshake on a new, blocking connection; `Some` if it was accepted, after which
/// the socket's writes go through its `Duplex` buffer. A refused or failed handshake is
/// answered where there is someone to answer, and closed without a reset.
pub fn accept(state: &State, socket: TcpStream) -> Option<(WebSocket<Duplex>, Admission)> {
    let raw = socket.try_clone().ok()?;
    let _ = raw.set_read_timeout(Some(state.config.read_timeout));
    let mut admitted = None;
    // tungstenite's callback signature fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| match admit(state, request) {
        Ok((admission, protocol)) => {
            admitted = Some(admission);
            Ok(echo_protocol(response, protocol))
        }
        Err(error) => {
            log::info!("handshake for {} refused: {error}", request.uri().path());
            Err(refusal(&error))
        }
    };
    let max = state.config.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let answered =
        match tungstenite::accept_hdr_with_config(Duplex::new(socket), callback, Some(config)) {
            Ok(mut ws) => {
                ws.get_mut().direct = false;
                return Some((ws, admitted?));
            }
            // Refused by `admit`: the answer has been written.
            Err(HandshakeError::Failure(WsError::Http(_))) => true,
            // The client went away or stalled past `read_timeout`.
            Err(HandshakeError::Failure(WsError::Io(_)) | HandshakeError::Interrupted(_)) => false,
            // Not a WebSocket upgrade at all (a browser or `curl` on the WebSocket port).
            Err(HandshakeError::Failure(e)) => {
                log::info!("not a WebSocket handshake: {e}");
                let _ = (&raw).write_all(&not_a_websocket_response());
                true
            }
        };
    if answered {
        let _ = raw.shutdown(Shutdown::Write);
        linger(&raw);
    }
    None
}

/// Decides whether `request` may open a socket: its room exists and, for a private or
/// hidden room, it presents a valid token for it. Also returns the subprotocol to echo.
fn admit(state: &State, request: &Request) -> Result<(Admission, Option<HeaderValue>), ApiError> {
    let room = path::ws_room(&request.uri().to_string())
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound))?;
    let key = state.rooms.key(&room)?;
    let header_text = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let offered = header_text(header::SEC_WEBSOCKET_PROTOCOL);
    let token_user = if key.visibility.needs_token() {
        let token = token::presented(
            header_text(header::AUTHORIZATION),
            offered,
            request.uri().query(),
        )
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidToken))?;
        Some(token::verify(&state.secret, &key, &token)?.username)
    } else {
        None
    };
    let protocol = offered
        .and_then(token::first_protocol)
        .and_then(|p| HeaderValue::from_str(p).ok());
    Ok((
        Admission {
            room_id: key.id,
            token_user,
        },
        protocol,
    ))
}

/// The HTTP answer refusing a handshake: the error's status and JSON body.
fn refusal(error: &ApiError) -> ErrorResponse {
    let body = error.to_body();
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

/// A whole HTTP response for a request that is not a WebSocket upgrade: 400, code 305.
fn not_a_websocket_response() -> Vec<u8> {
    let body = ApiError::new(ErrorKind::UnsupportedClient).to_body();
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Adds the echoed subprotocol to an accepting response.
fn echo_protocol(mut response: Response, protocol: Option<HeaderValue>) -> Response {
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}
