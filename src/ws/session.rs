//! One socket's chat, on its own thread: join / send / leave, its room's events out,
//! heartbeats, and the close.
//!
//! # Reading and writing one socket from one thread
//! A tungstenite `WebSocket` is one object for both directions, and a socket must be read
//! (incoming frames), written (its room's events) and pinged at the same time. The session
//! thread owns the `WebSocket` alone and never blocks in `read` or `write`: the socket is
//! non-blocking, and the thread sleeps in `poll(2)` on two descriptors at once, the socket
//! and its doorbell (an eventfd its room rings when it has news). So:
//! - every byte to the client is written by this thread, whole frames in order: events,
//!   pings, tungstenite's pong replies and the close frame never interleave (`frame`);
//! - delivery waits on nothing but the doorbell: no timer, no polling interval, no busy
//!   loop (the `poll` timeout only schedules pings and the silence check);
//! - a client that stops reading stalls only its own buffer: its room's feed fills, and
//!   the room closes it (1008) rather than wait for it;
//! - an idle socket costs one parked thread, an eventfd and a few small buffers: it has no
//!   queue of its own, it reads its room's shared feed from its own cursor.
//!
//! When the room's feed is full because someone who reads is behind, a speaker's frame
//! waits here ([`Session::pending`]): the socket is not read meanwhile, so the client's
//! own TCP window slows it down, while its output keeps moving. The room wakes it when
//! there is room again.
//!
//! Bad input is answered with an error event to this socket only, and the socket stays
//! open; only an oversized frame (1009), invalid UTF-8 (1007) or a protocol violation
//! (1002) ends it. However it ends (a panic included), a joined socket's leave is
//! broadcast: the [`Membership`] detaches it when dropped.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use super::doorbell::{Closing, Doorbell};
use super::frame::{Duplex, Sent};
use super::handshake::Admission;
use crate::error::{ApiError, ErrorKind};
use crate::event::ClientEvent;
use crate::rooms::{Membership, Progress, Refusal};
use crate::State;

/// Feed events are encoded into the unsent buffer only while it holds less than this, so
/// a client that does not read stops its cursor, and its room sees it fall behind.
const MAX_UNSENT_BYTES: usize = 64 * 1024;
/// Feed events taken per read of the room: one short hold of its lock for a burst.
const FEED_BATCH: usize = 64;
/// How often a frame waiting for room in a full feed is retried even if nobody rang: a
/// safety net only, the room wakes waiting speakers itself.
const PENDING_RETRY: Duration = Duration::from_millis(200);

/// How the chat loop ended.
#[derive(Debug)]
enum Ending {
    /// The client sent a close frame (its code is echoed).
    ClientClosed(CloseCode),
    /// The server closed it: slow reader, room deleted, shutdown.
    ServerClosed(Closing),
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
            Ending::ClientClosed(code) => Some(*code),
            Ending::ServerClosed(Closing::SlowReader) => Some(CloseCode::Policy),
            Ending::ServerClosed(Closing::RoomDeleted | Closing::Shutdown) => Some(CloseCode::Away),
            Ending::ServerClosed(Closing::BackendLost) => Some(CloseCode::Restart),
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
    doorbell: Doorbell,
    ws: WebSocket<Duplex>,
}

/// The chat loop's state, once the socket is in its room.
struct Chat {
    session: Session,
    membership: Membership,
    /// The feed position read up to, while the socket reads the feed (joined, or draining
    /// what came before its leave).
    cursor: Option<u64>,
    /// A frame the room had no room for yet: retried before anything else is read.
    pending: Option<String>,
    /// Reused for every read of the feed, so delivery allocates nothing per event.
    batch: Vec<Arc<str>>,
    /// Set when reading stopped for a waiting frame or a full buffer rather than for lack
    /// of input: tungstenite may hold whole frames already, which `poll` cannot see.
    input_held: bool,
}

impl Session {
    /// A socket whose handshake `admission` accepted.
    pub fn new(
        state: Arc<State>,
        id: u64,
        admission: Admission,
        doorbell: Doorbell,
        ws: WebSocket<Duplex>,
    ) -> Session {
        log::info!("socket {id} opened in room {}", admission.room_id);
        Session {
            state,
            id,
            admission,
            doorbell,
            ws,
        }
    }

    /// Runs the socket from its first frame to its close.
    pub fn run(self) {
        let subscriber = Arc::new(self.doorbell.clone());
        match self
            .state
            .rooms
            .attach(self.admission.room_id, self.id, subscriber)
        {
            Ok(membership) => {
                let mut chat = Chat {
                    session: self,
                    membership,
                    cursor: None,
                    pending: None,
                    batch: Vec::with_capacity(FEED_BATCH),
                    input_held: false,
                };
                let ending = chat.run();
                // The leave is broadcast before the goodbye, which may take a while.
                drop(chat.membership);
                chat.session.finish(&ending);
            }
            // The room was deleted between the handshake and now, or Redis went away.
            Err(error) => {
                let closing = match error.kind {
                    ErrorKind::StorageUnavailable => Closing::BackendLost,
                    _ => Closing::RoomDeleted,
                };
                let mut session = self;
                session.ws.get_mut().push_text(error.to_event().as_bytes());
                session.finish(&Ending::ServerClosed(closing));
            }
        }
    }

    /// Says goodbye: the close frame after whatever is unsent (within `CLOSE_GRACE`),
    /// then a half-close and a linger, so the client reads the close instead of a reset.
    fn finish(mut self, ending: &Ending) {
        log::info!("socket {} closed: {ending:?}", self.id);
        let duplex = self.ws.get_mut();
        match ending.close_code() {
            Some(code) => {
                duplex.push_close(code);
                duplex.send_rest_and_close();
            }
            None => {
                let _ = duplex.socket.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Chat {
    /// The loop: move feed events out, read what came in, sleep in `poll` until either side
    /// has something, ping when due. Returns how the socket ended.
    fn run(&mut self) -> Ending {
        let config = &self.session.state.config;
        let (ping_interval, pong_timeout, write_timeout) = (
            config.ping_interval,
            config.pong_timeout,
            config.write_timeout,
        );
        if self
            .session
            .ws
            .get_ref()
            .socket
            .set_nonblocking(true)
            .is_err()
        {
            return Ending::Gone;
        }
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        let mut close_deadline = None;
        loop {
            if let Some(closing) = self.session.doorbell.closing() {
                if closing == Closing::RoomDeleted {
                    self.reply_error(ApiError::new(ErrorKind::RoomNotFound));
                }
                return Ending::ServerClosed(closing);
            }
            if let Some(frame) = self.pending.take() {
                self.answer(frame);
            }
            self.move_feed_events();
            let sent = match self.session.ws.get_mut().send_some() {
                Ok(sent) => sent,
                Err(_) => return Ending::Gone,
            };
            if self.session.doorbell.set_stalled(sent == Sent::Blocked) {
                self.membership.stalled();
            }
            let unsent = self.unsent_bytes();
            // Sleep only with nothing left to move: the doorbell is armed first, so news
            // from now on rings it.
            if unsent == 0 {
                self.session.doorbell.arm();
                if self.has_news() {
                    self.session.doorbell.disarm();
                    continue;
                }
            }
            if self.session.doorbell.closing().is_some() && close_deadline.is_none() {
                close_deadline = Some(Instant::now() + write_timeout);
            }
            // The client is not read while its frame waits, or while it does not read us.
            let listen = self.pending.is_none() && unsent < MAX_UNSENT_BYTES;
            if !listen {
                // Not reading it is our choice, not its silence.
                last_heard = Instant::now();
            }
            let mut wake_at = (last_ping + ping_interval).min(last_heard + pong_timeout);
            if let Some(deadline) = close_deadline {
                wake_at = wake_at.min(deadline);
            }
            if self.pending.is_some() {
                wake_at = wake_at.min(Instant::now() + PENDING_RETRY);
            }
            let readable = if listen && self.input_held {
                true
            } else {
                match self.sleep_until(wake_at, listen, unsent > 0) {
                    Ok(readable) => readable,
                    Err(_) => return Ending::Gone,
                }
            };
            if readable && listen {
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
                self.session
                    .ws
                    .get_mut()
                    .push_control(Frame::ping(Vec::new()));
            }
        }
    }

    /// Encodes unread feed events into the unsent buffer while it is small.
    fn move_feed_events(&mut self) {
        while self.unsent_bytes() < MAX_UNSENT_BYTES {
            self.batch.clear();
            let progress = self.membership.read(FEED_BATCH, &mut self.batch);
            self.cursor = match progress {
                Progress::At(cursor) => Some(cursor),
                Progress::Idle | Progress::Gone => None,
            };
            let duplex = self.session.ws.get_mut();
            for text in self.batch.drain(..) {
                duplex.push_text(text.as_bytes());
            }
            if !matches!(progress, Progress::At(_)) || !self.has_news() {
                return;
            }
        }
    }

    /// Whether the room has events this socket has not read yet.
    fn has_news(&self) -> bool {
        self.cursor
            .is_some_and(|cursor| self.membership.has_news(cursor))
    }

    fn unsent_bytes(&self) -> usize {
        self.session.ws.get_ref().unsent.len()
    }

    /// Sleeps until the socket is readable (when `listen`) or writable (when `unsent`), the
    /// doorbell rings, or `wake_at`. Returns whether the socket has something to read.
    fn sleep_until(&self, wake_at: Instant, listen: bool, unsent: bool) -> io::Result<bool> {
        let wait = wake_at.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut socket_events = PollFlags::empty();
        if listen {
            socket_events |= PollFlags::IN;
        }
        if unsent {
            socket_events |= PollFlags::OUT;
        }
        let doorbell = self.session.doorbell.fd();
        let mut fds = [
            PollFd::new(&self.session.ws.get_ref().socket, socket_events),
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
            self.session.doorbell.silence();
        }
        Ok(readable)
    }

    /// Reads and handles the whole frames the socket has, until one must wait or the
    /// client stops reading us. `Ok(true)` if anything came.
    fn read_available(&mut self) -> Result<bool, Ending> {
        let mut heard = false;
        loop {
            self.input_held = self.pending.is_some() || self.unsent_bytes() >= MAX_UNSENT_BYTES;
            if self.input_held {
                break;
            }
            let message = match self.session.ws.read() {
                Ok(message) => message,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ending_for(e)),
            };
            heard = true;
            match message {
                // Once a close is under way, the client's last words are ignored.
                _ if self.session.doorbell.closing().is_some() && !message.is_close() => {}
                Message::Text(text) => self.answer(text.as_str().to_owned()),
                Message::Binary(_) => self.reply_error(ApiError::new(ErrorKind::InvalidJson)),
                Message::Close(frame) => {
                    return Err(Ending::ClientClosed(
                        frame.map_or(CloseCode::Normal, |f| f.code),
                    ));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
            // A socket that talks a lot keeps its own output moving too.
            self.move_feed_events();
        }
        Ok(heard)
    }

    /// Handles one text frame; a mistake is reported to this socket only, and a frame the
    /// room has no room for yet waits.
    fn answer(&mut self, frame: String) {
        match self.handle(&frame) {
            Ok(()) => {}
            Err(Refusal::Busy) => self.pending = Some(frame),
            Err(Refusal::Error(error)) => {
                log::info!("socket {}: {error}", self.session.id);
                self.reply_error(error);
            }
        }
    }

    fn reply_error(&mut self, error: ApiError) {
        self.session
            .ws
            .get_mut()
            .push_text(error.to_event().as_bytes());
    }

    fn handle(&mut self, frame: &str) -> Result<(), Refusal> {
        let (id, room_id) = (self.session.id, self.membership.room_id());
        match ClientEvent::parse(frame)? {
            ClientEvent::Join { name, color, since } => {
                // In a private room the name is the token's: nobody joins as someone else.
                let token_user = self.session.admission.token_user.as_ref();
                if token_user.is_some_and(|user| *user != name) {
                    return Err(ApiError::field(ErrorKind::ClientUnauthorized, "name").into());
                }
                let joined = self.membership.join(&name, &color, since)?;
                // What was said before comes first, then the feed from this join on.
                let duplex = self.session.ws.get_mut();
                for text in &joined.replay {
                    duplex.push_text(text.as_bytes());
                }
                self.cursor = None;
                log::info!("socket {id} joined room {room_id} as {name}");
            }
            // The room uses the name this socket joined with, never one from the frame.
            ClientEvent::Send { msg } => {
                self.membership.send(&msg)?;
            }
            ClientEvent::Leave => {
                self.membership.leave()?;
                log::info!("socket {id} left room {room_id}");
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
