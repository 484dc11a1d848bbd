//! The write side of one WebSocket: its bounded queue, the one place bytes reach the
//! socket, and the writer thread that exists only while there is something to write.
//!
//! # Why this shape
//! A tungstenite `WebSocket` is one object for both directions, and std has no way to wait
//! for "the socket is readable *or* the queue has something" in one thread. So the two
//! directions get a thread each, but the writer is *elastic*: the session thread blocks in
//! `read` for the socket's whole life, while a writer thread is started when the queue gets
//! an event and exits after [`WRITER_LINGER`] without one. An idle member costs one parked
//! thread, not two (the memory per idle socket decides how many people a small host can
//! serve); a busy one has a writer that drains its queue in batches, one `write` per batch.
//!
//! Every byte sent to the client goes through [`Outbox::write_raw`] under one mutex, whole
//! frames at a time: queued events (from the writer), pings (from the session thread) and
//! tungstenite's own pong replies (through the session's stream adaptor). Frames therefore
//! never interleave, and nothing is written after the close frame.
//!
//! Delivery never waits on a timer: `deliver` puts the event on the queue and, if no writer
//! is running, hands the outbox to the launcher thread, which starts one. Spawning is done
//! there rather than in `deliver` because `deliver` runs under the room lock.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{Frame, Utf8Bytes};
use tungstenite::protocol::CloseFrame;

use crate::error::{ApiError, ErrorKind};
use crate::rooms::{CloseReason, Subscriber};

/// How long an idle writer thread waits for more before it exits.
pub const WRITER_LINGER: Duration = Duration::from_secs(5);
/// Events are gathered into one `write` up to about this many bytes.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// The writer thread's stack: it only encodes frames and writes them.
pub const WRITER_STACK_BYTES: usize = 64 * 1024;

/// One item on a socket's queue.
enum Outgoing {
    /// A serialised event, shared by every member it was delivered to.
    Event(Arc<str>),
    /// Send the close frame with this code after what is queued before it, then stop.
    Close(CloseCode),
}

/// A socket's outgoing side, shared by its session thread, its writer thread and the room
/// it has joined. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Outbox(Arc<Inner>);

struct Inner {
    /// The write half of the TCP stream; `closed` once the close frame has gone out.
    wire: Mutex<Wire>,
    queue: Sender<Outgoing>,
    pending: Receiver<Outgoing>,
    /// Events that may wait before the socket counts as a slow reader (`send_queue_len`).
    capacity: usize,
    /// Set once a close has been queued; later events are dropped.
    closing: AtomicBool,
    /// Whether a writer thread is running (or has been asked for) for this outbox.
    writer_running: AtomicBool,
    /// Where an outbox that needs a writer thread is sent (see [`run_launcher`]).
    launcher: Sender<Outbox>,
}

struct Wire {
    stream: TcpStream,
    closed: bool,
}

impl Outbox {
    /// An outbox writing to `stream` (a clone of the socket's stream).
    pub fn new(stream: TcpStream, capacity: usize, launcher: Sender<Outbox>) -> Outbox {
        // A list channel allocates as it fills, so an idle socket's queue costs nothing;
        // the bound is enforced by `deliver` instead.
        let (queue, pending) = crossbeam_channel::unbounded();
        Outbox(Arc::new(Inner {
            wire: Mutex::new(Wire {
                stream,
                closed: false,
            }),
            queue,
            pending,
            capacity,
            closing: AtomicBool::new(false),
            writer_running: AtomicBool::new(false),
            launcher,
        }))
    }

    /// Queues an event meant for this socket only (an error event). It is not counted
    /// against the bound: it answers the socket's own frame.
    pub fn send_private(&self, text: String) {
        if !self.0.closing.load(SeqCst) {
            self.enqueue(Outgoing::Event(text.into()));
        }
    }

    /// Queues the close frame `code` after everything already queued; later calls do
    /// nothing, so the first reason to close wins.
    pub fn close(&self, code: CloseCode) {
        if !self.0.closing.swap(true, SeqCst) {
            self.enqueue(Outgoing::Close(code));
        }
    }

    /// Whether a close has been queued or sent.
    pub fn is_closing(&self) -> bool {
        self.0.closing.load(SeqCst)
    }

    /// Writes whole frames straight to the socket, between whole frames of the writer.
    /// Bytes written after the close frame are dropped, as the protocol requires.
    pub fn write_raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut wire = self.wire();
        if wire.closed {
            return Ok(());
        }
        wire.stream.write_all(bytes)
    }

    /// Writes the close frame now, unless one went out already, and half-closes the TCP
    /// stream so the client sees the end right after it (a graceful close, not a reset).
    fn write_close(&self, code: CloseCode) {
        let mut wire = self.wire();
        if wire.closed {
            return;
        }
        wire.closed = true;
        let mut frame = Vec::new();
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(""),
        };
        if Frame::close(Some(close)).format(&mut frame).is_ok() {
            let _ = wire.stream.write_all(&frame);
        }
        let _ = wire.stream.shutdown(Shutdown::Write);
    }

    /// Gives the socket up without a close frame: it cannot be written to any more.
    fn abandon(&self) {
        let mut wire = self.wire();
        wire.closed = true;
        let _ = wire.stream.shutdown(Shutdown::Both);
    }

    fn wire(&self) -> MutexGuard<'_, Wire> {
        // A panic while writing leaves at worst a half-written frame, after which the
        // socket is closed anyway; the guard itself is still usable.
        self.0
            .wire
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enqueue(&self, item: Outgoing) {
        // The receiving end lives in `self`, so the queue cannot be disconnected.
        let _ = self.0.queue.send(item);
        if !self.0.writer_running.swap(true, SeqCst) {
            let _ = self.0.launcher.send(self.clone());
        }
    }

    /// The writer thread's body: drain the queue in batches until it has been empty for
    /// [`WRITER_LINGER`], or until the close frame has been written.
    pub fn drain(self) {
        let mut batch = Vec::new();
        loop {
            match self.0.pending.recv_timeout(WRITER_LINGER) {
                Ok(first) => {
                    let close = self.fill_batch(first, &mut batch);
                    if !batch.is_empty() && self.write_raw(&batch).is_err() {
                        // The client is gone, or stalled past the write timeout. Shutting
                        // both directions wakes the session thread out of its `read`, so
                        // it cleans up (leave broadcast) at once.
                        self.abandon();
                        return;
                    }
                    batch.clear();
                    if let Some(code) = close {
                        // `writer_running` stays set: no writer is needed ever again.
                        self.write_close(code);
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    // Hand the job back; if an event slipped in meanwhile, whoever
                    // queued it either started a new writer or we carry on ourselves.
                    self.0.writer_running.store(false, SeqCst);
                    if self.0.pending.is_empty() || self.0.writer_running.swap(true, SeqCst) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Encodes `first` and whatever else is already queued (up to [`MAX_BATCH_BYTES`])
    /// into `batch`; returns the close code if a close was reached.
    fn fill_batch(&self, first: Outgoing, batch: &mut Vec<u8>) -> Option<CloseCode> {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Outgoing::Event(text) => encode_text_frame(text.as_bytes(), batch),
                Outgoing::Close(code) => return Some(code),
            }
            next = (batch.len() < MAX_BATCH_BYTES)
                .then(|| self.0.pending.try_recv().ok())
                .flatten();
        }
        None
    }
}

impl Subscriber for Outbox {
    /// Never blocks: a full queue is reported, not waited on.
    fn deliver(&self, text: &Arc<str>) -> bool {
        if self.0.closing.load(SeqCst) {
            return true;
        }
        if self.0.pending.len() >= self.0.capacity {
            return false;
        }
        self.enqueue(Outgoing::Event(Arc::clone(text)));
        true
    }

    fn close(&self, reason: CloseReason) {
        match reason {
            CloseReason::SlowReader => Outbox::close(self, CloseCode::Policy),
            CloseReason::RoomDeleted => {
                self.send_private(ApiError::new(ErrorKind::RoomNotFound).to_event());
                Outbox::close(self, CloseCode::Away);
            }
        }
    }
}

/// Appends an unmasked, final text frame (server frames are never masked, so one encoding
/// would serve every member; the header is a few bytes and is rebuilt per socket).
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

/// The launcher thread: starts a writer thread for each outbox it is handed, so that
/// spawning (tens of microseconds) never happens under the room lock.
pub fn run_launcher(outboxes: Receiver<Outbox>) {
    for outbox in outboxes {
        let spawned = std::thread::Builder::new()
            .name("ws-writer".into())
            .stack_size(WRITER_STACK_BYTES)
            .spawn({
                let outbox = outbox.clone();
                move || outbox.drain()
            });
        if let Err(e) = spawned {
            log::error!("cannot start a writer thread: {e}; closing that socket");
            outbox.abandon();
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
}
