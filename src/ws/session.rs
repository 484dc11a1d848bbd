//! One socket's life: the handshake, then join / send / leave, heartbeats, and the close.
//!
//! The session thread owns the tungstenite `WebSocket` and spends its life blocked in
//! `read`. It never writes events itself: those go through the socket's [`Outbox`] (see its
//! module doc for why reading and writing are split this way). Its read timeout doubles as
//! the heartbeat clock: it wakes to send a ping every `ping_interval` and gives the socket
//! up after `pong_timeout` without hearing anything from it. Delivery does not depend on
//! that timeout at all.
//!
//! Bad input is answered with an error event to this socket only, and the socket stays
//! open; only an oversized frame (1009), invalid UTF-8 (1007) or a protocol violation
//! (1002) ends it. Whatever ends it, a joined socket's leave is broadcast.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::handshake::{self, Admission};
use super::outbox::Outbox;
use crate::error::{ApiError, ErrorKind};
use crate::event::ClientEvent;
use crate::State;

/// How long a closing socket is given to say goodbye before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// tungstenite's read buffer, allocated up front for every socket: small, since chat
/// frames are small and idle sockets are many. A larger frame grows it as needed.
const READ_BUFFER_BYTES: usize = 1024;

/// The stream a session's `WebSocket` runs on: reads come straight from the socket, and
/// writes (the handshake response, pong replies) go through the outbox, between whole
/// frames of the writer thread.
struct Duplex {
    read: TcpStream,
    outbox: Outbox,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read.read(buf)
    }
}

impl Write for Duplex {
    /// tungstenite hands over whole frames; the outbox writes them whole.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.write_raw(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the chat loop ended.
#[derive(Debug)]
enum Ending {
    /// The client sent a close frame (its code is echoed).
    ClientClosed(CloseCode),
    /// A frame over `max_message_bytes`.
    TooBig,
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// A violation of RFC 6455.
    ProtocolViolation,
    /// Nothing heard for `pong_timeout`.
    Silent,
    /// The connection broke, or was closed without a close frame.
    Gone,
}

/// One connected socket after its handshake.
struct Session {
    state: Arc<State>,
    /// Identifies this socket in its room's member list.
    id: u64,
    admission: Admission,
    outbox: Outbox,
}

/// Runs one socket from handshake to close. `read` is the socket; `outbox` writes to a
/// clone of it.
pub fn run(state: Arc<State>, id: u64, read: TcpStream, outbox: Outbox) {
    let socket = match read.try_clone() {
        Ok(socket) => socket,
        Err(e) => return log::warn!("socket {id}: cannot clone the stream: {e}"),
    };
    let Some((mut ws, admission)) = handshake(
        &state,
        &socket,
        Duplex {
            read,
            outbox: outbox.clone(),
        },
    ) else {
        return linger(&socket);
    };
    log::info!("socket {id} opened in room {}", admission.room_id);
    let session = Session {
        state,
        id,
        admission,
        outbox,
    };
    let ending = match session.attach() {
        Ok(()) => session.chat(&mut ws, &socket),
        Err(error) => {
            session.reply_error(error);
            Ending::Gone
        }
    };
    let code = match ending {
        Ending::ClientClosed(code) => code,
        Ending::TooBig => CloseCode::Size,
        Ending::NotUtf8 => CloseCode::Invalid,
        Ending::ProtocolViolation => CloseCode::Protocol,
        Ending::Silent | Ending::Gone => CloseCode::Away,
    };
    session.outbox.close(code);
    session.state.rooms.detach(session.admission.room_id, id);
    log::info!("socket {id} closed ({ending:?}, code {})", u16::from(code));
    linger(&socket);
}

/// Runs the handshake; `None` if it was refused or failed (after answering, where there
/// is someone to answer).
fn handshake(
    state: &State,
    socket: &TcpStream,
    duplex: Duplex,
) -> Option<(WebSocket<Duplex>, Admission)> {
    let outbox = duplex.outbox.clone();
    let _ = socket.set_read_timeout(Some(state.config.read_timeout));
    let mut admitted = None;
    // tungstenite's callback signature fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| match handshake::admit(state, request) {
        Ok((admission, protocol)) => {
            admitted = Some(admission);
            Ok(handshake::accept(response, protocol))
        }
        Err(error) => {
            log::info!("handshake for {} refused: {error}", request.uri().path());
            Err(handshake::refusal(&error))
        }
    };
    let max = state.config.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    match tungstenite::accept_hdr_with_config(duplex, callback, Some(config)) {
        Ok(ws) => Some((ws, admitted?)),
        // Refused by `admit`: the answer has been written.
        Err(HandshakeError::Failure(WsError::Http(_))) => None,
        // The client went away or stalled past `read_timeout`.
        Err(HandshakeError::Failure(WsError::Io(_)) | HandshakeError::Interrupted(_)) => None,
        // Not a WebSocket upgrade at all.
        Err(HandshakeError::Failure(e)) => {
            log::info!("not a WebSocket handshake: {e}");
            let _ = outbox.write_raw(&handshake::not_a_websocket_response());
            let _ = socket.shutdown(std::net::Shutdown::Write);
            None
        }
    }
}

impl Session {
    /// Connects the socket to its room (which may have been deleted since the handshake).
    fn attach(&self) -> Result<(), ApiError> {
        let subscriber = Arc::new(self.outbox.clone());
        self.state
            .rooms
            .attach(self.admission.room_id, self.id, subscriber)
    }

    /// Reads frames until the socket ends, answering pings on time and pinging in turn.
    fn chat(&self, ws: &mut WebSocket<Duplex>, socket: &TcpStream) -> Ending {
        let (ping_interval, pong_timeout) = (
            self.state.config.ping_interval,
            self.state.config.pong_timeout,
        );
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            let wake_at = (last_ping + ping_interval).min(last_heard + pong_timeout);
            let wait = wake_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = socket.set_read_timeout(Some(wait));
            let message = match ws.read() {
                Ok(message) => message,
                Err(WsError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    // Only a read that found nothing proves the client silent: a thread
                    // that was slow to run must not drop a client whose pong is waiting.
                    let now = Instant::now();
                    if now >= last_heard + pong_timeout {
                        return Ending::Silent;
                    }
                    if now >= last_ping + ping_interval {
                        last_ping = now;
                        if self.outbox.write_raw(&ping_frame()).is_err() {
                            return Ending::Gone;
                        }
                    }
                    continue;
                }
                Err(e) => return ending_for(e),
            };
            last_heard = Instant::now();
            match message {
                // After a close has been queued, the client's last words are ignored.
                _ if self.outbox.is_closing() && !message.is_close() => {}
                Message::Text(text) => self.answer(text.as_str()),
                Message::Binary(_) => self.reply_error(ApiError::new(ErrorKind::InvalidJson)),
                Message::Close(frame) => {
                    return Ending::ClientClosed(frame.map_or(CloseCode::Normal, |f| f.code));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Handles one text frame; a mistake is reported to this socket only.
    fn answer(&self, text: &str) {
        if let Err(error) = self.handle(text) {
            log::info!("socket {}: {error}", self.id);
            self.reply_error(error);
        }
    }

    fn reply_error(&self, error: ApiError) {
        self.outbox.send_private(error.to_event());
    }

    fn handle(&self, text: &str) -> Result<(), ApiError> {
        let room_id = self.admission.room_id;
        let rooms = &self.state.rooms;
        match ClientEvent::parse(text)? {
            ClientEvent::Join { name, color } => {
                // In a private room the name is the token's: nobody joins as someone else.
                if self
                    .admission
                    .token_user
                    .as_ref()
                    .is_some_and(|user| *user != name)
                {
                    return Err(ApiError::field(ErrorKind::ClientUnauthorized, "name"));
                }
                rooms.join(room_id, self.id, &name, &color)?;
                log::info!("socket {} joined room {room_id} as {name}", self.id);
            }
            // The room uses the name this socket joined with, never one from the frame.
            ClientEvent::Send { msg } => rooms.send(room_id, self.id, &msg)?,
            ClientEvent::Leave => {
                rooms.leave(room_id, self.id)?;
                log::info!("socket {} left room {room_id}", self.id);
            }
        }
        Ok(())
    }
}

/// Which close an error from `read` calls for.
fn ending_for(error: WsError) -> Ending {
    match error {
        WsError::Capacity(_) => Ending::TooBig,
        WsError::Utf8(_) => Ending::NotUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
        WsError::Protocol(_) => Ending::ProtocolViolation,
        _ => Ending::Gone,
    }
}

fn ping_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    let _ = Frame::ping(Vec::new()).format(&mut frame);
    frame
}

/// Reads and discards whatever the client still sends, until it closes or [`CLOSE_GRACE`]
/// runs out. Dropping a socket with unread input makes the kernel send a reset, which can
/// destroy the close frame or error response the client has not read yet.
fn linger(socket: &TcpStream) {
    let deadline = Instant::now() + CLOSE_GRACE;
    let mut scratch = [0u8; 512];
    let mut socket = socket;
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        let _ = socket.set_read_timeout(Some(left));
        match socket.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
