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
//! events handed to the socket (after `Membership::read` has returned), and why the
//! socket closed.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use super::doorbell::{Closing, Doorbell};
use super::ending::{ending_for, Ending};
use super::frame::{Duplex, Sent};
use super::handshake::Admission;
use crate::error::{ApiError, ErrorKind};
use crate::event::ClientEvent;
use crate::limits::{FrameLimit, Verdict};
use crate::metrics::Limit;
use crate::rooms::{Membership, Refusal};
use crate::State;

/// The client's frames are not read while this much waits to be written to it: a client
/// that sends without reading our answers is slowed down by its own TCP window.
const MAX_UNSENT_BYTES: usize = 64 * 1024;
/// Feed events are written out whenever this much is encoded, so a burst (a join storm)
/// never grows a socket's buffer much past it; when the socket takes no more, the rest
/// waits in the feed, where the room sees the socket fall behind.
const FLUSH_BYTES: usize = 8 * 1024;
/// Feed events taken per hold of the feed's read lock.
const FEED_BATCH: usize = 64;
/// How often a frame waiting for room in a full feed is retried even if nobody rang: a
/// safety net only, the room wakes waiting speakers itself.
const PENDING_RETRY: Duration = Duration::from_millis(200);

/// One connected socket after its handshake.
pub struct Session {
    state: Arc<State>,
    /// Identifies this socket in its room.
    id: u64,
    admission: Admission,
    doorbell: Doorbell,
    ws: WebSocket<Duplex>,
}

/// A socket's place in its room's feed.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The next event to read.
    cursor: u64,
    /// Where reading stops: its own leave, after a leave.
    until: Option<u64>,
}

/// The chat loop's state, once the socket is in its room.
struct Chat {
    session: Session,
    membership: Membership,
    /// Where the socket reads its room's feed, while it does: joined, or still taking what
    /// came before its leave.
    reading: Option<Reading>,
    /// A frame the room had no room for yet: retried before anything else is read.
    pending: Option<String>,
    /// Set after a join that went through Redis, until it comes back (the feed is read
    /// from that join on: `Membership::join_arrived`).
    awaiting_join: bool,
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
                let frames = self.state.limits.frame_limit();
                let mut chat = Chat {
                    session: self,
                    membership,
                    reading: None,
                    pending: None,
                    input_held: false,
                    awaiting_join: false,
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
        let reason = ending.counted_as(self.doorbell.closing());
        self.state.metrics.socket_closed(reason);
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
                self.session.ws.get_mut().shrink_when_idle();
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

    /// Moves unread feed events to the client: encodes them as frames into the socket's
    /// buffer (no allocation per event) and writes them out every [`FLUSH_BYTES`]. Stops
    /// when the socket takes no more: the rest waits in the feed.
    fn move_feed_events(&mut self) {
        if self.awaiting_join {
            let Some(cursor) = self.membership.join_arrived() else {
                return;
            };
            self.awaiting_join = false;
            self.reading = Some(Reading {
                cursor,
                until: None,
            });
        }
        while let Some(reading) = self.reading {
            if self.unsent_bytes() >= FLUSH_BYTES {
                match self.session.ws.get_mut().send_some() {
                    Ok(Sent::All) => {}
                    // Blocked, or broken: the caller's own write finds out which.
                    Ok(Sent::Blocked) | Err(_) => return,
                }
            }
            let until = reading.until.unwrap_or(u64::MAX);
            let duplex = self.session.ws.get_mut();
            let cursor = self
                .membership
                .read(reading.cursor, until, FEED_BATCH, |text| {
                    duplex.push_text(text.as_bytes())
                });
            let delivered = usize::try_from(cursor - reading.cursor).unwrap_or(usize::MAX);
            self.session.state.metrics.events_delivered(delivered);
            self.reading = (cursor < until).then_some(Reading { cursor, ..reading });
            if !self.has_news() {
                return;
            }
        }
    }

    /// Whether the room has events this socket has not read yet.
    fn has_news(&self) -> bool {
        self.reading
            .is_some_and(|r| self.membership.has_news(r.cursor))
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
            if matches!(message, Message::Text(_) | Message::Binary(_)) {
                self.session.state.metrics.event_received();
            }
            match message {
                // Once a close is under way, the client's last words are ignored.
                _ if self.session.doorbell.closing().is_some() && !message.is_close() => {}
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
            self.move_feed_events();
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
                // In a private room the name is the token's: nobody joins as someone else.
                let token_user = self.session.admission.token_user.as_ref();
                if token_user.is_some_and(|user| *user != name) {
                    return Err(ApiError::field(ErrorKind::ClientUnauthorized, "name").into());
                }
                let joined = self.membership.join(&name, &color, since)?;
                self.session
                    .state
                    .metrics
                    .events_delivered(joined.replay.len());
                // What was said before comes first, then the feed from this join on.
                let duplex = self.session.ws.get_mut();
                for text in &joined.replay {
                    duplex.push_text(text.as_bytes());
                }
                // With several nodes the join comes back through Redis: reading starts there.
                self.awaiting_join = joined.cursor.is_none();
                self.reading = joined.cursor.map(|cursor| Reading {
                    cursor,
                    until: None,
                });
                log::info!("socket {id} joined room {room_id} as {name}");
            }
            // The room uses the name this socket joined with, never one from the frame.
            ClientEvent::Send { msg } => {
                self.membership.send(&msg)?;
            }
            ClientEvent::Leave => {
                let until = self.membership.leave()?;
                self.reading = self.reading.map(|r| Reading {
                    until: Some(until),
                    ..r
                });
                log::info!("socket {id} left room {room_id}");
            }
        }
        Ok(())
    }
}
