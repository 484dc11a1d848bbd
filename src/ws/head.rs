//! A WebSocket handshake's request head, read within its caps and deadline (SPEC, Limits):
//! [`HeadCheck`] sees every read of the head (`frame::Duplex` calls it while the handshake
//! runs) and refuses, with a [`HeadRefusal`], a request line over 8 KiB, a head over 32 KiB
//! or 100 header lines, or a head not whole within `head_timeout_s`. Nothing past a cap is
//! read. `handshake` turns a refusal into its 414, 431 or 408 answer.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::error::ErrorKind;
use crate::limits::{MAX_HEADER_LINES, MAX_HEAD_BYTES, MAX_REQUEST_LINE_BYTES};
use crate::metrics::Limit;

/// Why a handshake's head was refused by its [`HeadCheck`]; carried inside the `io::Error`
/// of the read that found it, through tungstenite, back to `handshake::accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// The request line is over `MAX_REQUEST_LINE_BYTES` (414).
    RequestLine,
    /// The head is over `MAX_HEAD_BYTES` or `MAX_HEADER_LINES` (431).
    Head,
    /// Part of the head arrived, not all of it within `head_timeout_s` (408).
    Timeout,
}

impl HeadRefusal {
    /// The refusal a read error carries, if it carries one.
    pub fn of(error: &io::Error) -> Option<HeadRefusal> {
        error.get_ref()?.downcast_ref::<HeadRefusal>().copied()
    }

    pub fn kind(self) -> ErrorKind {
        match self {
            HeadRefusal::RequestLine => ErrorKind::RequestLineTooLong,
            HeadRefusal::Head => ErrorKind::HeadTooLarge,
            HeadRefusal::Timeout => ErrorKind::RequestTimeout,
        }
    }

    pub fn limit(self) -> Limit {
        match self {
            HeadRefusal::RequestLine => Limit::RequestLine,
            HeadRefusal::Head => Limit::RequestHead,
            HeadRefusal::Timeout => Limit::HeadTimeout,
        }
    }
}

impl fmt::Display for HeadRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadRefusal::RequestLine => "request line over 8 KiB",
            HeadRefusal::Head => "request head over 32 KiB or 100 header lines",
            HeadRefusal::Timeout => "request head not whole within head_timeout_s",
        })
    }
}

impl std::error::Error for HeadRefusal {}

impl From<HeadRefusal> for io::Error {
    fn from(refusal: HeadRefusal) -> io::Error {
        io::Error::other(refusal)
    }
}

/// Keeps the reads of a handshake to the head's caps and deadline (see the module docs):
/// it counts the head's bytes, its lines and the current line's length as they are read,
/// lends the socket no more than one byte past what is left of the head, and waits no
/// longer than the deadline. Once the head has ended (an empty line), reads pass through.
#[derive(Debug)]
pub struct HeadCheck {
    /// When the whole head must have arrived; `None`: each read waits `read_timeout`.
    deadline: Option<Instant>,
    read_timeout: Duration,
    /// Bytes of the head read so far.
    total: usize,
    /// Bytes of the current line so far, its CR included.
    line: usize,
    /// Lines ended so far, the request line included.
    lines: usize,
    /// Whether the last byte was a CR.
    after_cr: bool,
    /// Whether the empty line that ends the head has been read.
    ended: bool,
}

impl HeadCheck {
    /// A check for a head that must arrive within `head_timeout` from now.
    pub fn new(head_timeout: Option<Duration>, read_timeout: Duration) -> HeadCheck {
        HeadCheck {
            deadline: head_timeout.map(|timeout| Instant::now() + timeout),
            read_timeout,
            total: 0,
            line: 0,
            lines: 0,
            after_cr: false,
            ended: false,
        }
    }

    /// One read of the head from `socket` into `buf`.
    pub fn read(&mut self, mut socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return socket.read(buf);
        }
        // What is left of the head, and one byte more to see it overflow.
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(self.total).max(1);
        let len = buf.len().min(room);
        let buf = buf.get_mut(..len).unwrap_or_default();
        let Some(deadline) = self.deadline else {
            let n = socket.read(buf)?;
            self.scan(buf.get(..n).unwrap_or_default())?;
            return Ok(n);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            socket.set_read_timeout(Some(self.read_timeout.min(left)))?;
            match socket.read(buf) {
                Ok(n) => {
                    self.scan(buf.get(..n).unwrap_or_default())?;
                    return Ok(n);
                }
                Err(e) if Instant::now() < deadline => return Err(e),
                Err(_) => {}
            }
        }
        // A connection that sent nothing is closed without a word, as on the REST side.
        match self.total {
            0 => Err(io::ErrorKind::TimedOut.into()),
            _ => Err(HeadRefusal::Timeout.into()),
        }
    }

    /// Counts `bytes`, just read, against the caps.
    fn scan(&mut self, bytes: &[u8]) -> Result<(), HeadRefusal> {
        for &byte in bytes {
            if self.ended {
                break;
            }
            self.total += 1;
            if byte == b'\n' && self.after_cr {
                // The line is over; an empty one (its CR alone) ends the head.
                self.ended = self.line == 1;
                self.lines += 1;
                self.line = 0;
                if !self.ended && self.lines > MAX_HEADER_LINES + 1 {
                    return Err(HeadRefusal::Head);
                }
            } else {
                self.line += 1;
                // The line's bytes and its CR.
                if self.lines == 0 && self.line > MAX_REQUEST_LINE_BYTES + 1 {
                    return Err(HeadRefusal::RequestLine);
                }
            }
            self.after_cr = byte == b'\r';
            if self.total > MAX_HEAD_BYTES {
                return Err(HeadRefusal::Head);
            }
        }
        Ok(())
    }
}
