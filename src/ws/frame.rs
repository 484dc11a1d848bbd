//! Bytes to the client: the buffered, non-blocking writer every byte of a socket goes
//! through, the encoding of server frames, and closing without a reset.
//!
//! A tungstenite `WebSocket` runs on a [`Duplex`]: reads come straight from the socket;
//! writes (the handshake response, tungstenite's pong replies, and everything the session
//! sends) are appended to `unsent` whole frames at a time, and the session loop writes
//! `unsent` out with [`Duplex::send_some`] as the socket takes it. So frames never
//! interleave, and a client that does not read stalls only its own buffer.
//!
//! Every frame is encoded by tungstenite: a text frame's header by `FrameHeader::format`,
//! its payload appended after it, straight from the room's shared `Arc<str>` (a `Frame`
//! would own a copy of it); control frames by `Frame::format`. A hand-written header
//! encoder stood here before, with no measurement behind it. Measured with the ignored
//! test `tungstenite_encodes_text_frames_as_fast` (a 120-byte event a million times,
//! release build): 3 ns a frame by hand, 6.5 ns through tungstenite. The 3.5 ns is paid
//! once per member per message, beside the `write(2)` of that member's socket, which
//! costs microseconds: the hand-written encoder did not pay for itself, so none is kept.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{Frame, FrameHeader, Utf8Bytes};
use tungstenite::protocol::CloseFrame;

use super::head::HeadCheck;

/// How long a closing socket is given to take its close frame and say goodbye.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// An unsent buffer that grew past this is freed when its socket goes idle, so a burst (a
/// room of 1,000 joining sends each socket 1,000 join events) does not leave every idle
/// socket holding a large buffer. One chat event fits.
const KEEP_UNSENT_BYTES: usize = 512;

/// The stream a session's `WebSocket` runs on. See the module docs.
pub struct Duplex {
    /// The client's socket.
    pub socket: TcpStream,
    /// Whole frames not yet taken by the socket.
    pub unsent: Vec<u8>,
    /// During the handshake the socket is blocking and writes go straight to it.
    pub direct: bool,
    /// During the handshake, reads keep to the head's caps and deadline (see
    /// `head::HeadCheck`).
    pub head: Option<HeadCheck>,
    /// Set once the close frame is queued: nothing may follow it.
    closed: bool,
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
            None => self.socket.read(buf),
        }
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
    /// A duplex for a new connection, writing straight through until the handshake is done.
    pub fn new(socket: TcpStream) -> Duplex {
        Duplex {
            socket,
            unsent: Vec::new(),
            direct: true,
            head: None,
            closed: false,
        }
    }

    /// Appends an unmasked, final text frame (server frames are never masked).
    pub fn push_text(&mut self, payload: &[u8]) {
        if !self.closed {
            encode_text_frame(payload, &mut self.unsent);
        }
    }

    /// Appends a control frame (a ping).
    pub fn push_control(&mut self, frame: Frame) {
        if !self.closed {
            let _ = frame.format(&mut self.unsent);
        }
    }

    /// Appends the close frame; nothing is sent after it.
    pub fn push_close(&mut self, code: CloseCode) {
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        };
        self.push_control(Frame::close(Some(close)));
        self.closed = true;
    }

    /// Writes as much of `unsent` as the socket takes without blocking.
    pub fn send_some(&mut self) -> io::Result<Sent> {
        while !self.unsent.is_empty() {
            match self.socket.write(&self.unsent) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Sent::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Sent::All)
    }

    /// Frees a large, empty buffer: called when the socket goes idle, not after every
    /// write, so a busy socket does not allocate a buffer per burst.
    pub fn shrink_when_idle(&mut self) {
        if self.unsent.is_empty() && self.unsent.capacity() > KEEP_UNSENT_BYTES {
            self.unsent = Vec::new();
        }
    }

    /// Writes what is unsent on the now blocking socket, within [`CLOSE_GRACE`], then
    /// half-closes and lingers (see [`linger`]). Used once, for the goodbye.
    pub fn send_rest_and_close(&mut self) {
        let socket = &self.socket;
        let sent = socket.set_nonblocking(false).is_ok()
            && socket.set_write_timeout(Some(CLOSE_GRACE)).is_ok()
            && (&self.socket).write_all(&self.unsent).is_ok();
        if sent {
            let _ = self.socket.shutdown(std::net::Shutdown::Write);
            linger(&self.socket);
        }
    }
}

/// Appends an unmasked, final text frame to `out`: tungstenite's header, then the payload.
fn encode_text_frame(payload: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    // Writing to a Vec cannot fail; a usize always fits in a u64.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
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
        let closed_len = duplex.unsent.len();
        duplex.push_text(b"b");
        let _ = duplex.write(b"pong");
        assert_eq!(duplex.unsent.len(), closed_len);
    }
}
