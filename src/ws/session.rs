//! One socket's chat, on its own thread: join / send / leave, its room's events out,
//! heartbeats, and the close.
//!
//! # Reading and writing one socket from one thread
//! A tungstenite `WebSocket` is one object for both directions, and a socket must be read
//! (incoming frames), written (its room's events) and pinged at the same time. The session
//! thread owns the `WebSocket` alone and never blocks in `read` or `write`: the socket is
//! non-blocking, and the thread sleeps in `poll(2)` on two descriptors at once, the socket
//! and its bell (an eventfd its room rings after putting events in the socket's crossbeam
//! channel: `rooms::Bell`). A crossbeam `Receiver` cannot be polled beside a socket, so
//! the channel carries the events and the eventfd only says "look". So:
//! - every byte to the client is written by this thread, whole frames in order: events,
//!   pings, tungstenite's pong replies and the close frame never interleave (`frame`);
//! - delivery waits on nothing but the bell: no timer, no polling interval, no busy loop
//!   (the `poll` timeout only schedules pings and the silence check);
//! - a client that stops reading stalls only its own buffer and then its channel, and the
//!   room closes it (1008) rather than wait for it;
//! - the bell is armed only while the thread sleeps, so a busy socket (a speaker, or a
//!   member still writing) costs its room no system call per event; and while it sleeps,
//!   the room's waker writes its events for it (`frame::Courier`), waking it only when the
//!   socket is full;
//! - an idle socket costs one parked thread, an eventfd, an empty channel and a few
//!   small buffers.
//!
//! Why not a second thread per socket, one blocked in `read` and one in `recv`: a
//! `WebSocket` is one object for both directions, so the two would share it behind a lock
//! or split it with care, and a second parked thread costs 8 to 12 KiB of RSS per socket
//! where the whole socket costs about 17.
//!
//! When a member that reads is behind and its channel is full, a speaker's frame waits
//! here ([`Chat::pending`]): the socket is not read meanwhile, so the client's own TCP
//! window slows it down, while its output keeps moving. The room rings it when there is
//! room again.
//!
//! Bad input is answered with an error event to this socket only, and the socket stays
//! open; only an oversized frame (1009), invalid UTF-8 (1007), a protocol violation
//! (1002) or a flood (1008) ends it. However it ends (a panic included), a joined socket's
//! leave is broadcast: the [`Membership`] detaches it when dropped.
//!
//! # The frame rate
//! Every data frame passes the socket's own [`FrameLimit`] (`msgs_per_second` in bursts of
//! `msgs_burst`) before anything else is done with it. It lives in this thread's [`Chat`],
//! so checking it takes no lock and costs no other socket anything. A frame past it is
//! dropped, answered with a 603 error event, and never reaches the room; the
//! `flood_close_after`-th refusal within a minute closes the socket with 1008 (its leave is
//! broadcast as for any close). A client that keeps under the rate never notices it.
//!
//! # Counters
//! `metrics` counters are bumped here, never under the room's lock: frames received,
//! events taken from the channel (after `Membership::take` has returned), and why the
//! socket closed.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use super::ending::{ending_for, Ending};
use super::frame::{Duplex, Sent};
use super::handshake::Admission;
use crate::access;
use crate::error::{ApiError, ErrorKind};
use crate::event::ClientEvent;
use crate::limits::{FrameLimit, Verdict};
use crate::metrics::{CloseReason, Limit};
use crate::rooms::{self, Bell, Membership, Refusal};
use crate::State;

/// The client's frames are not read while this much waits to be written to it: a client
/// that sends without reading our answers is slowed down by its own TCP window.
const MAX_UNSENT_BYTES: usize = 64 * 1024;
/// Events are written out whenever this much is encoded, so a burst (a join storm) never
/// grows a socket's buffer much past it; when the socket takes no more, the rest waits in
/// the channel, where the room sees the socket fall behind.
const FLUSH_BYTES: usize = 8 * 1024;
/// Events taken from the channel between two checks of the buffer.
const TAKE_BATCH: usize = 64;
/// How often a frame waiting for room in a full channel is retried even if nobody rang: a
/// safety net only, the room rings waiting speakers itself.
const PENDING_RETRY: Duration = Duration::from_millis(200);

/// One connected socket after its handshake.
pub struct Session {
    state: Arc<State>,
    /// Identifies this socket in its room.
    id: u64,
    admission: Admission,
    bell: Arc<Bell>,
    ws: WebSocket<Duplex>,
}

/// The chat loop's state, once the socket is in its room.
struct Chat {
    session: Box<Session>,
    membership: Membership,
    /// A frame the room had no room for yet: retried before anything else is read.
    pending: Option<String>,
    /// Set when reading stopped for a waiting frame or a full buffer rather than for lack
    /// of input: tungstenite may hold whole frames already, which `poll` cannot see.
    input_held: bool,
    /// This socket's frame rate (see the module docs).
    frames: FrameLimit,
}

impl Session {
    /// A socket whose handshake `admission` accepted.
    pub fn new(
        state: Arc<State>,
        id: u64,
        admission: Admission,
        bell: Arc<Bell>,
        ws: WebSocket<Duplex>,
    ) -> Session {
        log::info!("socket {id} opened in room {}", admission.room_id);
        Session {
            state,
            id,
            admission,
            bell,
            ws,
        }
    }

    /// Runs the socket from its first frame to its close. Boxed, so that the session stays
    /// off the thread's stack (see `ws::SESSION_STACK_BYTES`).
    pub fn run(self: Box<Self>) {
        match rooms::attach(
            &self.state.rooms,
            self.admission.room_id,
            self.id,
            &self.bell,
        ) {
            Ok(membership) => {
                // A password or visibility change between the handshake and this attach
                // found no socket here to close: look at the room once more, now that a
                // change from here on does reach it.
                let pass = self.admission.pass.as_deref();
                let access = access::join_as(&self.state, self.admission.room_id, pass);
                if access.is_err_and(|e| e.kind == ErrorKind::RoomUnauthorized) {
                    self.bell.close(CloseReason::AccessChanged);
                }
                let frames = self.state.limits.frame_limit();
                let mut chat = Chat {
                    session: self,
                    membership,
                    pending: None,
                    input_held: false,
                    frames,
                };
                let ending = chat.run();
                // The leave is broadcast before the goodbye, which may take a while.
                drop(chat.membership);
                chat.session.finish(&ending);
            }
            // The room was deleted between the handshake and now, or Redis went away.
            Err(error) => {
                let closing = match error.kind {
                    ErrorKind::StorageUnavailable => CloseReason::Backend,
                    _ => CloseReason::RoomDeleted,
                };
                let mut session = self;
                session.ws.get_mut().push_text(error.to_event().as_bytes());
                session.finish(&Ending::ServerClosed(closing));
            }
        }
    }

    /// Says goodbye: the close frame after whatever is unsent (within `CLOSE_GRACE`),
    /// then a half-close and a linger, so the client reads the close instead of a reset.
    fn finish(&mut self, ending: &Ending) {
        log::info!("socket {} closed: {ending:?}", self.id);
        let reason = ending.counted_as(self.bell.closing());
        self.state.metrics.socket_closed(reason);
        let duplex = self.ws.get_mut();
        match ending.close_code() {
            Some(code) => {
                duplex.push_close(code);
                duplex.send_rest_and_close();
            }
            None => duplex.shut(),
        }
    }
}

impl Chat {
    /// The loop: move events out, read what came in, sleep in `poll` until either side
    /// has something, ping when due. Returns how the socket ended.
    fn run(&mut self) -> Ending {
        let config = &self.session.state.config;
        let (ping_interval, pong_timeout, write_timeout) = (
            config.ping_interval,
            config.pong_timeout,
            config.write_timeout,
        );
        let duplex = self.session.ws.get_ref();
        if duplex.socket.set_nonblocking(true).is_err() {
            return Ending::Gone;
        }
        // From here on the room's waker may write this socket's events while it sleeps.
        let metrics = Arc::clone(&self.session.state.metrics);
        let courier = duplex.courier(self.membership.inbox(), metrics);
        self.session.bell.set_drain(Box::new(courier));
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        let mut close_deadline = None;
        loop {
            if let Some(closing) = self.session.bell.closing() {
                match closing {
                    CloseReason::RoomDeleted => {
                        self.reply_error(ApiError::new(ErrorKind::RoomNotFound));
                    }
                    CloseReason::AccessChanged => {
                        self.reply_error(ApiError::new(ErrorKind::RoomUnauthorized));
                    }
                    _ => {}
                }
                return Ending::ServerClosed(closing);
            }
            if let Some(frame) = self.pending.take() {
                self.answer(frame);
            }
            self.move_events();
            let sent = match self.session.ws.get_mut().send_some() {
                Ok(sent) => sent,
                Err(_) => return Ending::Gone,
            };
            if self.session.bell.set_stalled(sent == Sent::Blocked) {
                self.membership.stalled();
            }
            let unsent = self.unsent_bytes();
            // Sleep only with nothing left to move: the bell is armed first, so an event
            // from now on rings it.
            if unsent == 0 {
                self.session.ws.get_mut().shrink_when_idle();
                self.session.bell.arm();
                if self.membership.has_news() {
                    self.session.bell.disarm();
                    continue;
                }
            }
            if self.session.bell.closing().is_some() && close_deadline.is_none() {
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

    /// Moves the events waiting in the socket's channel to the client: encodes them as
    /// frames into the socket's buffer and writes them out every [`FLUSH_BYTES`]. Stops
    /// when the socket takes no more: the rest waits in the channel.
    fn move_events(&mut self) {
        loop {
            if self.unsent_bytes() >= FLUSH_BYTES {
                match self.session.ws.get_mut().send_some() {
                    Ok(Sent::All) => {}
                    // Blocked, or broken: the caller's own write finds out which.
                    Ok(Sent::Blocked) | Err(_) => return,
                }
            }
            // Taken and encoded under the buffer's lock: the courier takes from the same
            // channel, so whoever holds it writes the next events.
            let duplex = self.session.ws.get_ref();
            let mut out = duplex.out();
            let taken = self
                .membership
                .take(TAKE_BATCH, |text| out.push_text(text.as_bytes()));
            drop(out);
            self.session.state.metrics.events_delivered(taken);
            if taken < TAKE_BATCH {
                return;
            }
        }
    }

    fn unsent_bytes(&self) -> usize {
        self.session.ws.get_ref().unsent_len()
    }

    /// Sleeps until the socket is readable (when `listen`) or writable (when `unsent`), the
    /// bell rings, or `wake_at`. Returns whether the socket has something to read.
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
        let bell = self.session.bell.fd();
        let mut fds = [
            PollFd::new(&self.session.ws.get_ref().socket, socket_events),
            PollFd::new(&bell, PollFlags::IN),
        ];
        let polled = poll(&mut fds, Some(&timeout));
        // Awake: from here on nobody needs to ring (an event is seen at the next take).
        self.session.bell.disarm();
        match polled {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let readable = fds[0]
            .revents()
            .intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR);
        if fds[1].revents().contains(PollFlags::IN) {
            self.session.bell.silence();
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
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                self.session.state.metrics.event_received();
            }
            match message {
                // Once a close is under way, the client's last words are ignored.
                _ if self.session.bell.closing().is_some() && !message.is_close() => {}
                Message::Text(_) | Message::Binary(_) if !self.within_rate()? => {}
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
            self.move_events();
        }
        Ok(heard)
    }

    /// Checks a data frame against the socket's rate: `Ok(true)` to handle it; `Ok(false)`
    /// if it is dropped (and the client told, 603); `Err` for a flood.
    fn within_rate(&mut self) -> Result<bool, Ending> {
        let metrics = &self.session.state.metrics;
        match self.frames.check(Instant::now()) {
            Verdict::Pass => Ok(true),
            Verdict::Refuse => {
                metrics.refused(Limit::Messages);
                log::debug!("socket {}: frame over the rate dropped", self.session.id);
                self.reply_error(ApiError::new(ErrorKind::TooManyMessages));
                Ok(false)
            }
            Verdict::Close => {
                metrics.refused(Limit::Messages);
                Err(Ending::Flood)
            }
        }
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
                // Access follows the room, not the handshake (SPEC, Who may change a room):
                // an expired token is refused (403); one that no longer opens the room
                // closes the socket (104, then 1008), as a password change would have.
                let state = &self.session.state;
                let pass = self.session.admission.pass.as_deref();
                let token_user = match access::join_as(state, room_id, pass) {
                    Ok(user) => user,
                    Err(e) if e.kind == ErrorKind::RoomUnauthorized => {
                        self.session.bell.close(CloseReason::AccessChanged);
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                };
                // In a private room the name is the token's: nobody joins as someone else.
                if token_user.is_some_and(|user| user != name) {
                    return Err(ApiError::field(ErrorKind::ClientUnauthorized, "name").into());
                }
                let joined = self.membership.join(&name, &color, since)?;
                self.session
                    .state
                    .metrics
                    .events_delivered(joined.replay.len());
                // What was said before comes first, then the channel from this join on.
                let duplex = self.session.ws.get_mut();
                for text in &joined.replay {
                    duplex.push_text(text.as_bytes());
                }
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
