//! A socket's doorbell: how its room (and the listener, at shutdown) wakes and closes the
//! socket's session thread, and how the room sees whether the socket sleeps or stalls.
//!
//! The session thread waits with `poll(2)` on its socket and on this doorbell's `eventfd`
//! at once, which std alone cannot do (see `session`). The doorbell is rung only when the
//! thread has *armed* it (said it is about to sleep), so a busy socket costs no system call
//! per event, and whoever rings does so after releasing the room's lock
//! ([`Subscriber::wake`]). A socket has no queue of its own: it reads its room's feed, and
//! its cursor there is kept here, where the room can see it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};

use crate::rooms::{CloseReason, Subscriber};

/// Why a socket is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Its client stopped reading while its room's feed was full (1008).
    SlowReader,
    /// Its room was deleted (a 101 error event, then 1001).
    RoomDeleted,
    /// The server is stopping (1001).
    Shutdown,
    /// Several nodes: Redis is unreachable (1012, "service restart": reconnect, resume
    /// with `since`).
    BackendLost,
}

/// A socket's doorbell and flags, shared by its session thread, its room and the
/// listener's registry. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Doorbell(Arc<Inner>);

struct Inner {
    /// The next event of its room's feed the socket reads (see `rooms::Subscriber`).
    cursor: AtomicU64,
    /// Set by the session thread just before it sleeps; whoever has news next rings.
    armed: AtomicBool,
    /// Set while bytes wait for a full kernel send buffer: the client is not reading.
    stalled: AtomicBool,
    /// Why the server closes the socket (a [`Closing`] as `1 + index`), or 0. The first
    /// reason wins.
    closing: AtomicU8,
    /// An eventfd the session thread polls beside its socket.
    fd: OwnedFd,
}

const CLOSINGS: [Closing; 4] = [
    Closing::SlowReader,
    Closing::RoomDeleted,
    Closing::Shutdown,
    Closing::BackendLost,
];

impl Doorbell {
    /// A new doorbell: one eventfd.
    pub fn new() -> io::Result<Doorbell> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Doorbell(Arc::new(Inner {
            cursor: AtomicU64::new(0),
            armed: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            closing: AtomicU8::new(0),
            fd,
        })))
    }

    /// Asks the session to close with `reason` and wakes it even if it is busy. Later calls
    /// do nothing: the first reason wins.
    pub fn close(&self, reason: Closing) {
        let code = CLOSINGS
            .iter()
            .position(|c| *c == reason)
            .map_or(0, |i| i as u8 + 1);
        if self
            .0
            .closing
            .compare_exchange(0, code, SeqCst, SeqCst)
            .is_ok()
        {
            self.ring();
        }
    }

    /// Why the server is closing the socket, if it is.
    pub fn closing(&self) -> Option<Closing> {
        let code = usize::from(self.0.closing.load(SeqCst));
        code.checked_sub(1).and_then(|i| CLOSINGS.get(i).copied())
    }

    /// Arms the doorbell before the session thread sleeps. The caller then checks for news
    /// once more: anything that arrives after this rings.
    pub fn arm(&self) {
        self.0.armed.store(true, SeqCst);
    }

    /// Disarms it: the session thread did not sleep after all.
    pub fn disarm(&self) {
        self.0.armed.store(false, SeqCst);
    }

    /// Records whether the client is reading; returns whether it just stopped.
    pub fn set_stalled(&self, stalled: bool) -> bool {
        !self.0.stalled.swap(stalled, SeqCst) && stalled
    }

    /// Resets the doorbell after it woke the session thread.
    pub fn silence(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0.fd, &mut count);
    }

    /// The eventfd, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    fn ring(&self) {
        let _ = rustix::io::write(&self.0.fd, &1u64.to_ne_bytes());
    }
}

impl Subscriber for Doorbell {
    fn cursor(&self) -> u64 {
        self.0.cursor.load(SeqCst)
    }

    fn set_cursor(&self, seq: u64) {
        self.0.cursor.store(seq, SeqCst);
    }

    fn is_asleep(&self) -> bool {
        self.0.armed.load(SeqCst)
    }

    fn is_stalled(&self) -> bool {
        self.0.stalled.load(SeqCst)
    }

    fn wake(&self) {
        if self.0.armed.swap(false, SeqCst) {
            self.ring();
        }
    }

    fn retry(&self) {
        self.ring();
    }

    fn close(&self, reason: CloseReason) {
        Doorbell::close(
            self,
            match reason {
                CloseReason::SlowReader => Closing::SlowReader,
                CloseReason::RoomDeleted => Closing::RoomDeleted,
                CloseReason::BackendLost => Closing::BackendLost,
            },
        );
    }
}
