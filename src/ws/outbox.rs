//! A socket's outbox: the bounded queue of events waiting to be written to it, and the
//! doorbell that wakes its session thread when something arrives.
//!
//! The room delivers to the outbox under the room lock, so delivering must never block:
//! it is a push onto a crossbeam list channel (which allocates only as it fills, so an idle
//! socket's queue costs nothing) with the bound checked by hand, plus, when the session
//! thread is asleep, one write to an `eventfd`. The session thread waits with `poll(2)` on
//! its socket and on that eventfd at once, which is what std alone cannot do: see
//! `session` for the loop.
//!
//! The doorbell is rung only when the session thread has *armed* it (said it is about to
//! sleep with an empty queue), so a busy socket costs one system call per wake-up, not one
//! per event; and the room rings it after releasing its lock ([`Subscriber::wake`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rustix::event::{eventfd, EventfdFlags};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::error::{ApiError, ErrorKind};
use crate::rooms::{CloseReason, Subscriber};

/// One item on a socket's queue.
pub enum Outgoing {
    /// A serialised event, shared by every member it was delivered to.
    Event(Arc<str>),
    /// Send the close frame with this code after what is queued before it.
    Close(CloseCode),
}

/// A socket's queue and doorbell, shared by its session thread, its room and the
/// listener's registry. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Outbox(Arc<Inner>);

struct Inner {
    queue: Sender<Outgoing>,
    pending: Receiver<Outgoing>,
    /// Events that may wait before the socket counts as a slow reader (`send_queue_len`).
    capacity: usize,
    /// Set once a close has been queued; later events are dropped.
    closing: AtomicBool,
    /// Set by the session thread just before it sleeps; whoever queues next rings.
    armed: AtomicBool,
    /// An eventfd the session thread polls beside its socket.
    doorbell: OwnedFd,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` events from the room.
    pub fn new(capacity: usize) -> io::Result<Outbox> {
        let doorbell = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let (queue, pending) = crossbeam_channel::unbounded();
        Ok(Outbox(Arc::new(Inner {
            queue,
            pending,
            capacity,
            closing: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            doorbell,
        })))
    }

    /// Queues an event meant for this socket only (an error event). It is not counted
    /// against the bound: it answers the socket's own frame.
    pub fn send_private(&self, text: String) {
        if !self.is_closing() {
            self.enqueue(Outgoing::Event(text.into()));
        }
    }

    /// Queues the close frame `code` after everything already queued, and wakes the
    /// session thread even if it is busy. Later calls do nothing: the first reason wins.
    pub fn close(&self, code: CloseCode) {
        if !self.0.closing.swap(true, SeqCst) {
            self.enqueue(Outgoing::Close(code));
            self.ring();
        }
    }

    /// Whether a close has been queued.
    pub fn is_closing(&self) -> bool {
        self.0.closing.load(SeqCst)
    }

    /// The next queued item, if any. Called by the session thread only.
    pub fn take(&self) -> Option<Outgoing> {
        self.0.pending.try_recv().ok()
    }

    /// Arms the doorbell before the session thread sleeps. Returns `false` if the queue is
    /// not empty after all (an event slipped in), in which case it must not sleep.
    pub fn arm(&self) -> bool {
        self.0.armed.store(true, SeqCst);
        self.0.pending.is_empty()
    }

    /// Resets the doorbell after it woke the session thread.
    pub fn silence(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0.doorbell, &mut count);
    }

    /// The doorbell, for `poll`.
    pub fn doorbell(&self) -> BorrowedFd<'_> {
        self.0.doorbell.as_fd()
    }

    /// Queues `item` and wakes the session thread if it sleeps.
    fn enqueue(&self, item: Outgoing) {
        self.push(item);
        self.wake_if_armed();
    }

    /// Queues `item` without waking anyone: no system call.
    fn push(&self, item: Outgoing) {
        // The receiving end lives in `self`, so the queue cannot be disconnected.
        let _ = self.0.queue.send(item);
    }

    fn wake_if_armed(&self) {
        if self.0.armed.swap(false, SeqCst) {
            self.ring();
        }
    }

    fn ring(&self) {
        let _ = rustix::io::write(&self.0.doorbell, &1u64.to_ne_bytes());
    }
}

impl Subscriber for Outbox {
    /// Never blocks: a full queue is reported, not waited on. A full queue counts against
    /// the client only while its thread is awake: a thread still asleep (armed) has not
    /// been woken yet, because the room's waker is behind, which is not the client's fault.
    /// A client that stops reading keeps its thread awake with unsent bytes, never armed.
    fn deliver(&self, text: &Arc<str>) -> bool {
        if self.is_closing() {
            return true;
        }
        if self.0.pending.len() >= self.0.capacity && !self.0.armed.load(SeqCst) {
            return false;
        }
        self.push(Outgoing::Event(Arc::clone(text)));
        true
    }

    fn wake(&self) {
        self.wake_if_armed();
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
