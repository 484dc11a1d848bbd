//! Bytes to the client: the buffered, non-blocking writer every byte of a socket goes
//! through, the encoding of server frames, and closing without a reset.
//!
//! A tungstenite `WebSocket` runs on a [`Duplex`]: reads come straight from the socket;
//! writes (the handshake response, tungstenite's pong replies, and everything the session
//! sends) are appended to the socket's [`Outgoing`] buffer whole frames at a time, and
//! written out as the socket takes them. So frames never interleave, and a client that
//! does not read stalls only its own buffer.
//!
//! # Written through while the socket's thread sleeps
//! The buffer sits behind a mutex of its own, so that one other thread may write it:
//! the [`Courier`], which the room's waker calls instead of ringing a sleeping socket's
//! bell (`rooms::Drain`). It takes what waits in the socket's channel and writes it, under
//! that mutex, in the channel's order, when the buffer is empty (the socket is not behind)
//! and the thread is asleep. It puts the frames together in a buffer the waker lends, so
//! that a wake allocates nothing; what the socket does not take goes into the socket's
//! own buffer and the bell is rung, so the thread waits for the socket to drain and sees
//! it stall. A delivery to a sleeping member is then one `write(2)` on the waker's thread
//! instead of waking the member's thread for each message (issue 22: half of a delivery's
//! CPU went to those wake-ups and switches).
//!
//! Every frame is encoded by tungstenite: a text frame's header by `FrameHeader::format`,
//! its payload appended after it, straight from the room's shared `Arc<String>` (a `Frame`
//! would own a copy of it); control frames by `Frame::format`. A hand-written header
//! encoder stood here before, with no measurement behind it. Measured with the ignored
//! test `tungstenite_encodes_text_frames_as_fast` (a 120-byte event a million times,
//! release build): 3 ns a frame by hand, 6.5 ns through tungstenite. The 3.5 ns is paid
//! once per member per message, beside the `write(2)` of that member's socket, which
//! costs microseconds: the hand-written encoder did not pay for itself, so none is kept.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader, Utf8Bytes};
use tungstenite::protocol::CloseFrame;

use super::head::HeadCheck;
use crate::metrics::Metrics;
use crate::rooms;

/// How long a closing socket is given to take its close frame and say goodbye.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The stream a session's `WebSocket` runs on. See the module docs.
pub struct Duplex {
    /// The client's socket, shared with its [`Courier`].
    pub socket: Arc<TcpStream>,
    /// What is written to the socket, shared with its [`Courier`].
    out: Arc<Mutex<Outgoing>>,
    /// During the handshake the socket is blocking and writes go straight to it.
    pub direct: bool,
    /// During the handshake, reads keep to the head's caps and deadline (see
    /// `head::HeadCheck`). Boxed: a socket keeps its `Duplex` for life, and 64 bytes of it
    /// would serve only the handshake.
    pub head: Option<Box<HeadCheck>>,
}

/// Whole frames not yet taken by the socket, and whether its goodbye has begun.
#[derive(Default)]
pub struct Outgoing {
    unsent: Vec<u8>,
    /// Set once the close frame is queued or the socket is being shut: nothing may
    /// follow, and the courier keeps away.
    closed: bool,
}

impl Outgoing {
    /// Appends an unmasked, final text frame (server frames are never masked).
    pub fn push_text(&mut self, payload: &[u8]) {
        if !self.closed {
            encode_text_frame(payload, &mut self.unsent);
        }
    }

    /// Frees the buffer once it is empty: called when the socket's thread goes to sleep, so
    /// an idle socket holds none (the courier puts frames together in the waker's buffer,
    /// and leaves here only what the socket did not take). Kept up to 512 bytes instead,
    /// idle sockets held 286 bytes each on average after their room's joins (gdb,
    /// `mallinfo2`, 200 joined sockets), for the allocations saved per burst of the
    /// socket's own thread: a few hundred instructions (callgrind counted about 900 in a
    /// courier's wake before it had the waker's buffer) beside a `write(2)` of microseconds.
    fn shrink_when_idle(&mut self) {
        if self.unsent.is_empty() && self.unsent.capacity() > 0 {
            self.unsent = Vec::new();
        }
    }

    /// Writes as much as `socket` takes without blocking.
    fn send_some(&mut self, socket: &TcpStream) -> io::Result<Sent> {
        let (written, sent) = write_some(socket, &self.unsent);
        self.unsent.drain(..written);
        sent
    }
}

/// Writes as much of `bytes` as `socket` takes without blocking; returns how many bytes it
/// took, and whether that was all of them.
fn write_some(mut socket: &TcpStream, bytes: &[u8]) -> (usize, io::Result<Sent>) {
    let mut written = 0;
    while written < bytes.len() {
        match socket.write(&bytes[written..]) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (written, Ok(Sent::Blocked)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(Sent::All))
}

/// What [`Duplex::send_some`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Everything is written.
    All,
    /// The kernel's send buffer is full: the rest waits for the client to read.
    Blocked,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.head {
            Some(head) => head.read(&self.socket, buf),
            None => (&*self.socket).read(buf),
        }
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.direct {
            return (&*self.socket).write(buf);
        }
        let mut out = self.out();
        if !out.closed {
            out.unsent.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Duplex {
    /// A duplex for a new connection, writing straight through until the handshake is done.
    pub fn new(socket: TcpStream) -> Duplex {
        Duplex {
            socket: Arc::new(socket),
            out: Arc::default(),
            direct: true,
            head: None,
        }
    }

    /// The outgoing buffer, locked: held only for memory work and non-blocking writes.
    pub fn out(&self) -> MutexGuard<'_, Outgoing> {
        crate::sync::lock(&self.out)
    }

    /// Appends an unmasked, final text frame (server frames are never masked).
    pub fn push_text(&mut self, payload: &[u8]) {
        self.out().push_text(payload);
    }

    /// Appends a control frame (a ping).
    pub fn push_control(&mut self, frame: Frame) {
        let mut out = self.out();
        if !out.closed {
            let _ = frame.format(&mut out.unsent);
        }
    }

    /// Appends the close frame; nothing is sent after it.
    pub fn push_close(&mut self, code: CloseCode) {
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        };
        self.push_control(Frame::close(Some(close)));
        self.out().closed = true;
    }

    /// Writes as much of the buffer as the socket takes without blocking.
    pub fn send_some(&mut self) -> io::Result<Sent> {
        let socket = Arc::clone(&self.socket);
        self.out().send_some(&socket)
    }

    /// Bytes not yet taken by the socket.
    pub fn unsent_len(&self) -> usize {
        self.out().unsent.len()
    }

    /// Frees the empty buffer (see [`Outgoing::shrink_when_idle`]).
    pub fn shrink_when_idle(&mut self) {
        self.out().shrink_when_idle();
    }

    /// The writer a room's waker may use while this socket's thread sleeps (see the
    /// module docs), taking from `inbox`.
    pub fn courier(&self, inbox: Arc<rooms::Inbox>, metrics: Arc<Metrics>) -> Courier {
        Courier {
            socket: Arc::clone(&self.socket),
            out: Arc::clone(&self.out),
            inbox,
            metrics,
        }
    }

    /// Writes what is unsent on the now blocking socket, within [`CLOSE_GRACE`], then
    /// half-closes and lingers (see [`linger`]). Used once, for the goodbye; the courier
    /// keeps away from here on.
    pub fn send_rest_and_close(&mut self) {
        let mut out = self.out();
        out.closed = true;
        let socket = &*self.socket;
        let sent = socket.set_nonblocking(false).is_ok()
            && socket.set_write_timeout(Some(CLOSE_GRACE)).is_ok()
            && (&*self.socket).write_all(&out.unsent).is_ok();
        drop(out);
        if sent {
            let _ = self.socket.shutdown(std::net::Shutdown::Write);
            linger(&self.socket);
        }
    }

    /// Shuts the socket at once (nobody is there to read a close frame); the courier keeps
    /// away.
    pub fn shut(&mut self) {
        self.out().closed = true;
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

/// Writes a sleeping socket's events for the room's waker (see the module docs).
pub struct Courier {
    socket: Arc<TcpStream>,
    out: Arc<Mutex<Outgoing>>,
    inbox: Arc<rooms::Inbox>,
    metrics: Arc<Metrics>,
}

impl rooms::Drain for Courier {
    fn drain(&self, scratch: &mut Vec<u8>) -> bool {
        // The socket's own thread holds it: it is awake and will see the channel itself.
        let Ok(mut out) = self.out.try_lock() else {
            return false;
        };
        // Closing, or behind (its thread waits for the socket): the thread decides.
        if out.closed || !out.unsent.is_empty() {
            return false;
        }
        // The frames are put together in the waker's buffer, not the socket's: the socket's
        // would be allocated and freed again for each wake, since an idle socket holds none.
        scratch.clear();
        let taken = self.inbox.take(usize::MAX, |text| {
            encode_text_frame(text.as_bytes(), scratch)
        });
        self.metrics.events_delivered(taken);
        let (written, sent) = write_some(&self.socket, scratch);
        // What the socket did not take waits in its own buffer, for its thread to write.
        out.unsent.extend_from_slice(&scratch[written..]);
        matches!(sent, Ok(Sent::All))
    }
}

/// Appends an unmasked, final text frame to `out`: tungstenite's header, then the payload.
fn encode_text_frame(payload: &[u8], out: &mut Vec<u8>) {
    // The longest header is 10 bytes: one allocation for the frame, not one for each part.
    out.reserve(10 + payload.len());
    // Writing to a Vec cannot fail; a usize always fits in a u64.
    let _ = text_header().format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// The header of an unmasked, final text frame.
fn text_header() -> FrameHeader {
    FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    }
}

/// Reads and discards whatever the client still sends, until it closes or [`CLOSE_GRACE`]
/// runs out. Dropping a socket with unread input makes the kernel send a reset, which can
/// destroy the close frame or error response the client has not read yet.
pub fn linger(socket: &TcpStream) {
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

    /// Not a pass/fail check of speed (the machine's load decides that), but the figure
    /// the module doc cites: `cargo test --release --lib frame -- --ignored --nocapture`
    /// prints tungstenite's encoder against the hand-written one it replaced.
    #[test]
    #[ignore]
    fn tungstenite_encodes_text_frames_as_fast() {
        fn by_hand(payload: &[u8], out: &mut Vec<u8>) {
            out.push(0x81);
            match u16::try_from(payload.len()) {
                Ok(len @ 0..=125) => out.push(len as u8),
                Ok(len) => {
                    out.push(126);
                    out.extend_from_slice(&len.to_be_bytes());
                }
                Err(_) => {
                    out.push(127);
                    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
                }
            }
            out.extend_from_slice(payload);
        }
        let payload = [b'x'; 120];
        let mut out = Vec::with_capacity(256);
        let mut time = |encode: fn(&[u8], &mut Vec<u8>)| {
            let started = Instant::now();
            for _ in 0..1_000_000 {
                out.clear();
                encode(std::hint::black_box(&payload), &mut out);
                std::hint::black_box(&out);
            }
            started.elapsed()
        };
        for _ in 0..3 {
            let (ours, theirs) = (time(by_hand), time(encode_text_frame));
            println!("1e6 frames: by hand {ours:?}, tungstenite {theirs:?}");
        }
    }

    #[test]
    fn nothing_follows_the_close_frame() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        let mut duplex = Duplex::new(client);
        duplex.direct = false;
        duplex.push_text(b"a");
        duplex.push_close(CloseCode::Away);
        let closed_len = duplex.unsent_len();
        duplex.push_text(b"b");
        let _ = duplex.write(b"pong");
        assert_eq!(duplex.unsent_len(), closed_len);
    }
}
