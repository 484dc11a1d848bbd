//! One socket's life on its own thread: the handshake, then join / send / leave,
//! heartbeats, the socket's outgoing events, and the close.
//!
//! # Reading and writing one socket from one thread
//! A tungstenite `WebSocket` is one object for both directions, and a socket must be read
//! (incoming frames), written (its room's events) and pinged at the same time. The session
//! thread owns the `WebSocket` alone and never blocks in `read` or `write`: the socket is
//! non-blocking, and the thread sleeps in `poll(2)` on two descriptors at once, the socket
//! and its outbox's doorbell (an eventfd rung when an event is queued). So:
//! - every byte to the client is written by this thread, whole frames in order: events,
//!   pings, tungstenite's pong replies and the close frame never interleave;
//! - delivery waits on nothing but the doorbell: no timer, no polling interval, no busy
//!   loop (the `poll` timeout only schedules pings and the silence check);
//! - a client that stops reading stalls only its own thread: its unsent bytes stay here,
//!   its queue fills, and the room closes it (1008) without waiting for it;
//! - an idle socket costs one parked thread, an eventfd and a few small buffers.
//!
//! Bad input is answered with an error event to this socket only, and the socket stays
//! open; only an oversized frame (1009), invalid UTF-8 (1007) or a protocol violation
//! (1002) ends it. However it ends, a joined socket's leave is broadcast.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::server::{Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{HandshakeError, Message, WebSocket};

use super::handshake::{self, Admission};
use super::outbox::{Outbox, Outgoing};
use crate::error::{ApiError, ErrorKind};
use crate::event::ClientEvent;
use crate::State;

/// How long a closing socket is given to take its close frame and say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// tungstenite's read buffer, allocated up front for every socket: small, since chat
/// frames are small and idle sockets are many. A larger frame grows it as needed.
const READ_BUFFER_BYTES: usize = 1024;
/// Queued events are encoded into the unsent buffer only while it holds less than this,
/// so a client that does not read leaves its events in the bounded queue, where the room
/// sees them pile up.
const MAX_UNSENT_BYTES: usize = 64 * 1024;
/// An unsent buffer that grew past this is freed once it is empty again, so a burst (a
/// room of 1,000 joining fills each socket's buffer with 1,000 join events) does not leave
/// every idle socket holding a large buffer. One chat event fits.
const KEEP_UNSENT_BYTES: usize = 512;

/// The stream a session's `WebSocket` runs on: reads come from the socket; writes (the
/// handshake response, pong replies, and everything the session sends) are appended to
/// `unsent` whole frames at a time and written out by the session loop.
struct Duplex {
    socket: TcpStream,
    unsent: Vec<u8>,
    /// During the handshake the socket is blocking and writes go straight to it.
    direct: bool,
    /// Set once the close frame is queued: nothing may follow it.
    closed: bool,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.direct {
            return self.socket.write(buf);
        }
        if !self.closed {
            self.unsent.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Duplex {
    /// Appends an unmasked, final text frame (server frames are never masked).
    fn push_text(&mut self, payload: &[u8]) {
        if !self.closed {
            encode_text_frame(payload, &mut self.unsent);
        }
    }

    fn push_control(&mut self, frame: Frame) {
        if !self.closed {
            let _ = frame.format(&mut self.unsent);
        }
    }

    /// Appends the close frame; nothing is sent after it.
    fn push_close(&mut self, code: CloseCode) {
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        };
        self.push_control(Frame::close(Some(close)));
        self.closed = true;
    }

    /// Writes as much of `unsent` as the socket takes without blocking.
    fn send_some(&mut self) -> io::Result<()> {
        while !self.unsent.is_empty() {
            match self.socket.write(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.unsent.capacity() > KEEP_UNSENT_BYTES {
            self.unsent = Vec::new();
        }
        Ok(())
    }
}

/// How the chat loop ended.
#[derive(Debug)]
enum Ending {
    /// The client sent a close frame (its code is echoed).
    ClientClosed(CloseCode),
    /// The server closed it: slow reader (1008), room deleted or shutdown (1001).
    ServerClosed(CloseCode),
    /// A frame over `max_message_bytes`.
    TooBig,
    /// A text frame that is not UTF-8.
    NotUtf8,
    /// A violation of RFC 6455.
    ProtocolViolation,
    /// Nothing heard for `pong_timeout`.
    Silent,
    /// Asked to close, it did not take its pending bytes within `write_timeout`.
    Stalled,
    /// The connection broke, or was closed without a close frame.
    Gone,
}

impl Ending {
    /// The close frame to send, or `None` when nobody is there to read it.
    fn close_code(&self) -> Option<CloseCode> {
        match self {
            Ending::ClientClosed(code) | Ending::ServerClosed(code) => Some(*code),
            Ending::TooBig => Some(CloseCode::Size),
            Ending::NotUtf8 => Some(CloseCode::Invalid),
            Ending::ProtocolViolation => Some(CloseCode::Protocol),
            Ending::Silent => Some(CloseCode::Away),
            Ending::Stalled | Ending::Gone => None,
        }
    }
}

/// One connected socket after its handshake.
pub struct Session {
    state: Arc<State>,
    /// Identifies this socket in its room.
    id: u64,
    admission: Admission,
    outbox: Outbox,
    ws: WebSocket<Duplex>,
}

/// Runs the handshake of a new socket; `Some` if it was accepted and the chat may begin.
/// Runs on a short-lived thread of its own: see the `ws` module doc.
pub fn open(state: Arc<State>, id: u64, socket: TcpStream, outbox: Outbox) -> Option<Session> {
    let duplex = Duplex {
        socket,
        unsent: Vec::new(),
        direct: true,
        closed: false,
    };
    let (ws, admission) = handshake(&state, duplex)?;
    log::info!("socket {id} opened in room {}", admission.room_id);
    Some(Session {
        state,
        id,
        admission,
        outbox,
        ws,
    })
}

/// Runs the handshake on a blocking socket. `None` if it was refused or failed, after
/// answering where there is someone to answer.
fn handshake(state: &State, duplex: Duplex) -> Option<(WebSocket<Duplex>, Admission)> {
    let socket = duplex.socket.try_clone().ok()?;
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
    let refused = match tungstenite::accept_hdr_with_config(duplex, callback, Some(config)) {
        Ok(mut ws) => {
            ws.get_mut().direct = false;
            return Some((ws, admitted?));
        }
        // Refused by `admit`: the answer has been written.
        Err(HandshakeError::Failure(WsError::Http(_))) => true,
        // The client went away or stalled past `read_timeout`.
        Err(HandshakeError::Failure(WsError::Io(_)) | HandshakeError::Interrupted(_)) => false,
        // Not a WebSocket upgrade at all.
        Err(HandshakeError::Failure(e)) => {
            log::info!("not a WebSocket handshake: {e}");
            let _ = (&socket).write_all(&handshake::not_a_websocket_response());
            true
        }
    };
    if refused {
        let _ = socket.shutdown(Shutdown::Write);
        linger(&socket);
    }
    None
}

impl Session {
    /// Runs the socket from its first frame to its close.
    pub fn run(mut self) {
        let ending = match self.attach() {
            Ok(()) => self.chat(),
            Err(error) => {
                self.reply_error(error);
                Ending::ServerClosed(CloseCode::Away)
            }
        };
        // The leave is broadcast before the goodbye, which may take a while.
        self.state.rooms.detach(self.admission.room_id, self.id);
        log::info!("socket {} closed: {ending:?}", self.id);
        self.finish(&ending);
    }

    /// Connects the socket to its room (which may have been deleted since the handshake).
    fn attach(&self) -> Result<(), ApiError> {
        let subscriber = Arc::new(self.outbox.clone());
        self.state
            .rooms
            .attach(self.admission.room_id, self.id, subscriber)
    }

    /// The socket's loop: move queued events out, read what came in, sleep in `poll` until
    /// either side has something, ping when due. Returns how the socket ended.
    fn chat(&mut self) -> Ending {
        let config = &self.state.config;
        let (ping_interval, pong_timeout, write_timeout) = (
            config.ping_interval,
            config.pong_timeout,
            config.write_timeout,
        );
        if self.ws.get_ref().socket.set_nonblocking(true).is_err() {
            return Ending::Gone;
        }
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        let mut close_deadline = None;
        loop {
            if let Some(code) = self.move_queued_events() {
                return Ending::ServerClosed(code);
            }
            if self.ws.get_mut().send_some().is_err() {
                return Ending::Gone;
            }
            let unsent = !self.ws.get_ref().unsent.is_empty();
            // Sleep only with nothing left to move: the doorbell is armed first, so an
            // event queued from now on wakes us.
            if !unsent && !self.outbox.arm() {
                continue;
            }
            if self.outbox.is_closing() && close_deadline.is_none() {
                close_deadline = Some(Instant::now() + write_timeout);
            }
            let mut wake_at = (last_ping + ping_interval).min(last_heard + pong_timeout);
            if let Some(deadline) = close_deadline {
                wake_at = wake_at.min(deadline);
            }
            let readable = match self.sleep_until(wake_at, unsent) {
                Ok(readable) => readable,
                Err(_) => return Ending::Gone,
            };
            if readable {
                match self.read_available() {
                    Ok(true) => last_heard = Instant::now(),
                    Ok(false) => {}
                    Err(ending) => return ending,
                }
            }
            let now = Instant::now();
            if now >= last_heard + pong_timeout {
                return Ending::Silent;
            }
            if close_deadline.is_some_and(|deadline| now >= deadline) {
                return Ending::Stalled;
            }
            if now >= last_ping + ping_interval {
                last_ping = now;
                self.ws.get_mut().push_control(Frame::ping(Vec::new()));
            }
        }
    }

    /// Encodes queued events into the unsent buffer while it is small. Returns the close
    /// code if the queue asks for the socket to be closed.
    fn move_queued_events(&mut self) -> Option<CloseCode> {
        while self.ws.get_ref().unsent.len() < MAX_UNSENT_BYTES {
            match self.outbox.take()? {
                Outgoing::Event(text) => self.ws.get_mut().push_text(text.as_bytes()),
                Outgoing::Close(code) => return Some(code),
            }
        }
        None
    }

    /// Sleeps until the socket is readable (or writable, when `unsent`), the doorbell
    /// rings, or `wake_at`. Returns whether the socket has something to read.
    fn sleep_until(&self, wake_at: Instant, unsent: bool) -> io::Result<bool> {
        let wait = wake_at.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let socket_events = if unsent {
            PollFlags::IN | PollFlags::OUT
        } else {
            PollFlags::IN
        };
        let doorbell = self.outbox.doorbell();
        let mut fds = [
            PollFd::new(&self.ws.get_ref().socket, socket_events),
            PollFd::new(&doorbell, PollFlags::IN),
        ];
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let readable = fds[0]
            .revents()
            .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);
        if fds[1].revents().contains(PollFlags::IN) {
            self.outbox.silence();
        }
        Ok(readable)
    }

    /// Reads and handles every whole frame the socket has. `Ok(true)` if anything came.
    fn read_available(&mut self) -> Result<bool, Ending> {
        let mut heard = false;
        loop {
            let message = match self.ws.read() {
                Ok(message) => message,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return Ok(heard),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ending_for(e)),
            };
            heard = true;
            // A socket that talks a lot keeps its own output moving too: its sends can keep
            // this thread busy (waking the room) while its own queue fills.
            if let Some(code) = self.move_queued_events() {
                return Err(Ending::ServerClosed(code));
            }
            if self.ws.get_mut().send_some().is_err() {
                return Err(Ending::Gone);
            }
            match message {
                // Once a close is queued, the client's last words are ignored.
                _ if self.outbox.is_closing() && !message.is_close() => {}
                Message::Text(text) => self.answer(text.as_str()),
                Message::Binary(_) => self.reply_error(ApiError::new(ErrorKind::InvalidJson)),
                Message::Close(frame) => {
                    return Err(Ending::ClientClosed(
                        frame.map_or(CloseCode::Normal, |f| f.code),
                    ));
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

    /// Says goodbye: the close frame after whatever is unsent (within [`CLOSE_GRACE`]),
    /// then a half-close and a linger, so the client reads the close instead of a reset.
    fn finish(mut self, ending: &Ending) {
        // Events queued before the close (a room's last words: its 101 on deletion) go
        // out first; `move_queued_events` stops at the close itself.
        self.move_queued_events();
        let duplex = self.ws.get_mut();
        let Some(code) = ending.close_code() else {
            let _ = duplex.socket.shutdown(Shutdown::Both);
            return;
        };
        duplex.push_close(code);
        let socket = &duplex.socket;
        let sent = socket.set_nonblocking(false).is_ok()
            && socket.set_write_timeout(Some(CLOSE_GRACE)).is_ok()
            && (&duplex.socket).write_all(&duplex.unsent).is_ok();
        if sent {
            let _ = duplex.socket.shutdown(Shutdown::Write);
            linger(&duplex.socket);
        }
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

/// Appends an unmasked, final text frame to `out`.
fn encode_text_frame(payload: &[u8], out: &mut Vec<u8>) {
    const FIN_TEXT: u8 = 0x81;
    out.push(FIN_TEXT);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_use_the_shortest_length_form() {
        let mut out = Vec::new();
        encode_text_frame(b"hi", &mut out);
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        encode_text_frame(&[b'x'; 300], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        out.clear();
        encode_text_frame(&vec![b'x'; 70_000], &mut out);
        assert_eq!(&out[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn nothing_follows_the_close_frame() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        let mut duplex = Duplex {
            socket: client,
            unsent: Vec::new(),
            direct: false,
            closed: false,
        };
        duplex.push_text(b"a");
        duplex.push_close(CloseCode::Away);
        let closed_len = duplex.unsent.len();
        duplex.push_text(b"b");
        let _ = duplex.write(b"pong");
        assert_eq!(duplex.unsent.len(), closed_len);
    }
}
