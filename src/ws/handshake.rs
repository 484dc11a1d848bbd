//! The whole WebSocket handshake: which room, which token, the subprotocol echo, and the
//! refusals.
//!
//! [`accept`] runs tungstenite's server handshake on the blocking socket; the room and the
//! token are checked inside its `accept_hdr` callback ([`admit`]), before the upgrade, so a
//! refused client gets a plain HTTP answer (404, 401, 403) with the same JSON error body
//! the REST API uses. Where the token may be is `token::presented`'s business; the value
//! of `Sec-WebSocket-Protocol`, when offered, is echoed back, which browsers require.
//!
//! # The head's caps and deadline (SPEC, Limits)
//! While tungstenite reads the request, every read goes through a [`HeadCheck`]: the
//! request line may be 8 KiB, the head 32 KiB or 100 header lines, and the whole head must
//! arrive within `head_timeout_s` of the accept. Past a cap the answer is 414 or 431, past
//! the deadline 408, each with the JSON error body (code 105; 408 for the deadline), the
//! same as the REST listener's; nothing past a cap is read.
//!
//! # Connections past the limits (601)
//! A connection past `max_connections`, or past `max_connections_per_ip` from a client
//! that is its own peer, is refused by the accept loop itself, before any thread is
//! started for it, through the same `tiny_http::Refuser` as the REST listener's connection
//! limit (one thread for both, started in `start`): it writes the whole 503 answer at once,
//! half-closes, and drains what the client still sends until it closes (at most 1 s, at
//! most 64 sockets at once, a few reads each per pass), so that the client reads the
//! answer instead of a reset. Behind a trusted proxy the client's address is known only
//! from the request's `X-Forwarded-For`, so there the per-address count is taken in
//! [`admit`], by the handshake thread, and refused like any other handshake.

use std::io::Write;
use std::net::{Shutdown, TcpStream};

use tungstenite::error::Error as WsError;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{header, HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, WebSocket};

use super::frame::{linger, Duplex};
use super::head::{HeadCheck, HeadRefusal};
use crate::access;
use crate::error::{ApiError, ErrorKind};
use crate::limits::ConnectionGuard;
use crate::metrics::Limit;
use crate::origin;
use crate::path;
use crate::token;
use crate::State;

/// tungstenite's read buffer, allocated up front for every socket, and the most it reads
/// in one call: small, since chat frames are small (a join or a line of chat is 60 to 200
/// bytes) and idle sockets are many. A larger frame grows it as needed. At 1,024 it was
/// the largest allocation of an idle socket (massif, 100 joined sockets: 1,024 of about
/// 5,000 bytes each).
const READ_BUFFER_BYTES: usize = 256;
/// Who a socket is, once its handshake has been accepted.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The room the socket chats in.
    pub room_id: u64,
    /// The token the handshake presented, if it opened the room then: each `join` checks
    /// it again against the room as it is then (`access::join_as`), and takes the name from
    /// it. Boxed: a socket keeps its admission for life, and most have no token.
    pub pass: Option<Box<token::Pass>>,
}

/// Runs the handshake on a new, blocking connection, counted by `connection`; `Some` if it
/// was accepted, after which the socket's writes go through its `Duplex` buffer. A refused
/// or failed handshake is answered where there is someone to answer, and closed without a
/// reset.
pub fn accept(
    state: &State,
    socket: TcpStream,
    connection: &mut ConnectionGuard,
) -> Option<(WebSocket<Duplex>, Admission)> {
    let raw = socket.try_clone().ok()?;
    let read_timeout = state.config.read_timeout;
    let _ = raw.set_read_timeout(Some(read_timeout));
    let peer = raw.peer_addr().ok()?.ip();
    let mut duplex = Duplex::new(socket);
    duplex.head = Some(Box::new(HeadCheck::new(
        state.config.head_timeout,
        read_timeout,
    )));
    let mut admitted = None;
    // tungstenite's callback signature fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let callback =
        |request: &Request, response: Response| match admit(state, request, peer, connection) {
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
    let answered = match tungstenite::accept_hdr_with_config(duplex, callback, Some(config)) {
        Ok(mut ws) => {
            let duplex = ws.get_mut();
            duplex.direct = false;
            duplex.head = None;
            let _ = raw.set_read_timeout(Some(read_timeout));
            return Some((ws, admitted?));
        }
        // Refused by `admit`: the answer has been written.
        Err(HandshakeError::Failure(WsError::Http(_))) => true,
        Err(HandshakeError::Failure(WsError::Io(e))) => match HeadRefusal::of(&e) {
            // A head past its caps or its deadline.
            Some(refusal) => {
                log::info!("handshake refused: {refusal}");
                state.metrics.refused(refusal.limit());
                let error = ApiError::new(refusal.kind());
                let _ = (&raw).write_all(&error.to_raw_http());
                true
            }
            // The client went away or stalled past `read_timeout`.
            None => false,
        },
        Err(HandshakeError::Interrupted(_)) => false,
        // Not a WebSocket upgrade at all (a browser or `curl` on the WebSocket port).
        Err(HandshakeError::Failure(e)) => {
            log::info!("not a WebSocket handshake: {e}");
            let error = ApiError::new(ErrorKind::UnsupportedClient);
            let _ = (&raw).write_all(&error.to_raw_http());
            true
        }
    };
    if answered {
        let _ = raw.shutdown(Shutdown::Write);
        linger(&raw);
    }
    None
}

/// Decides whether `request` from `peer` may open a socket: its client address has a
/// connection to spare (if the accept loop could not tell, the peer being a trusted
/// proxy), it comes from no other site's page (`Origin`), its room exists (a hidden one
/// asked for by id only with a valid token) and, for a private or hidden room, it
/// presents a valid token for it. Also returns the subprotocol to echo.
fn admit(
    state: &State,
    request: &Request,
    peer: std::net::IpAddr,
    connection: &mut ConnectionGuard,
) -> Result<(Admission, Option<HeaderValue>), ApiError> {
    if !connection.address_counted() {
        let forwarded_for = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        connection.count_address(state.limits.client_addr(peer, forwarded_for))?;
    }
    let header_text = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // SPEC, Limits: a page of another site opens no socket (607), before any other work.
    let origin = header_text(header::ORIGIN);
    if !origin::is_allowed(
        origin,
        header_text(header::HOST),
        &state.config.allowed_origins,
    ) {
        state.metrics.refused(Limit::AllowedOrigins);
        return Err(ApiError::new(ErrorKind::OriginNotAllowed));
    }
    let room = path::ws_room(&request.uri().to_string())
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound))?;
    let offered = header_text(header::SEC_WEBSOCKET_PROTOCOL);
    let presented = token::presented(
        header_text(header::AUTHORIZATION),
        offered,
        request.uri().query(),
    );
    // A hidden room asked for by id without a valid token is not there (`access::find`).
    let key = access::find(state, &room, presented.as_deref())?;
    let pass = presented
        .as_deref()
        .map(|token| token::Pass::check(&state.secret, &key, token));
    // A public room lets anyone in: a token that does not open it is only not kept.
    let pass = match pass {
        Some(Ok(pass)) => Some(Box::new(pass)),
        Some(Err(error)) if key.visibility.needs_token() => return Err(error),
        None if key.visibility.needs_token() => return Err(ApiError::new(ErrorKind::InvalidToken)),
        _ => None,
    };
    let protocol = offered
        .and_then(token::first_protocol)
        .and_then(|p| HeaderValue::from_str(p).ok());
    Ok((
        Admission {
            room_id: key.id,
            pass,
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

/// Adds the echoed subprotocol to an accepting response.
fn echo_protocol(mut response: Response, protocol: Option<HeaderValue>) -> Response {
    if let Some(protocol) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}
