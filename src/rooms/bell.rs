//! A socket's bell: how its room (and the listener, at shutdown) wakes and closes the
//! thread that owns the socket, and how the room sees whether that thread sleeps and
//! whether its client still reads.
//!
//! A socket's thread waits in `poll(2)` on its socket and on this bell's `eventfd` at
//! once, which std cannot do with a channel (see `ws::session`). The events themselves
//! travel in the socket's crossbeam channel (`room`); the bell only says "look". It is
//! rung only while the thread has said it is about to sleep ([`Bell::arm`]), so a busy
//! socket costs its room no system call per event, and the room rings after releasing
//! its lock (`room::After`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::OnceLock;

use rustix::event::{eventfd, EventfdFlags};

use crate::metrics::CloseReason;

/// One socket's bell and flags, shared (in an `Arc`) by its thread, its room and the
/// listener's registry of live sockets.
pub struct Bell {
    /// Set by the socket's thread just before it sleeps, cleared as soon as it wakes:
    /// whoever hands it an event meanwhile rings.
    asleep: AtomicBool,
    /// Set while bytes wait for a full kernel send buffer: the client is not reading.
    stalled: AtomicBool,
    /// Why the server closes the socket (index + 1 into `CloseReason::ALL`), or 0. The
    /// first reason wins.
    closing: AtomicU8,
    /// The eventfd the socket's thread polls beside its socket.
    fd: OwnedFd,
    /// Writes the socket's events in its sleeping thread's stead (see [`Drain`]).
    drain: OnceLock<Box<dyn Drain>>,
}

/// Whoever can move a socket's waiting events to the socket itself, while its thread
/// sleeps: `ws::frame::Courier`. A wake then costs one write instead of waking the thread.
pub trait Drain: Send + Sync {
    /// Moves what waits in the socket's channel to the socket without blocking, putting
    /// the frames together in `scratch` (the caller's, reused from wake to wake); `false`
    /// if it could not move all of it (the thread writes, or the socket is full), and the
    /// thread must be woken.
    fn drain(&self, scratch: &mut Vec<u8>) -> bool;
}

impl Bell {
    /// A new bell: one non-blocking eventfd.
    pub fn new() -> io::Result<Bell> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Bell {
            asleep: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            closing: AtomicU8::new(0),
            fd,
            drain: OnceLock::new(),
        })
    }

    /// Said by the socket's thread before it sleeps. It then looks at its channel once
    /// more: an event sent before this is seen there, one sent after it rings. The fence
    /// pairs with the one in [`Bell::is_asleep`], so one of the two sides sees the other.
    pub fn arm(&self) {
        self.asleep.store(true, SeqCst);
        fence(SeqCst);
    }

    /// Said by the socket's thread as soon as it is awake (or decided not to sleep), so
    /// the room does not ring a thread that is already running (a speaker, say).
    pub fn disarm(&self) {
        self.asleep.store(false, SeqCst);
    }

    /// Whether the socket's thread sleeps (or is about to): asked by the room, under its
    /// lock, after it queued an event for the socket.
    pub fn is_asleep(&self) -> bool {
        fence(SeqCst);
        self.asleep.load(SeqCst)
    }

    /// Lets `drain` write the socket's events while its thread sleeps. Once per bell.
    pub fn set_drain(&self, drain: Box<dyn Drain>) {
        let _ = self.drain.set(drain);
    }

    /// Wakes the thread if it sleeps: its events are written for it if they can be (no
    /// wake-up at all; `scratch` is lent for their frames, see [`Drain`]), else one eventfd
    /// write. Never under a room's lock.
    pub fn wake(&self, scratch: &mut Vec<u8>) {
        if !self.asleep.load(SeqCst) {
            return;
        }
        if self.drain.get().is_some_and(|drain| drain.drain(scratch)) {
            return;
        }
        if self.asleep.swap(false, SeqCst) {
            self.ring();
        }
    }

    /// Wakes the thread, asleep or not: a frame it holds may go now. The eventfd keeps the
    /// ring until the thread reads it, so it is not lost if the thread is about to sleep.
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the eventfd after it woke the thread.
    pub fn silence(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut count);
    }

    /// The eventfd, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Asks the thread to close its socket for `reason`, and wakes it even if it is busy.
    /// Later calls change nothing: the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let code = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| u8::try_from(i + 1).ok())
            .unwrap_or(0);
        if self
            .closing
            .compare_exchange(0, code, SeqCst, SeqCst)
            .is_ok()
        {
            self.ring();
        }
    }

    /// Why the server is closing the socket, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        let code = usize::from(self.closing.load(SeqCst));
        code.checked_sub(1)
            .and_then(|i| CloseReason::ALL.get(i).copied())
    }

    /// Records whether the client is reading; returns whether it just stopped.
    pub fn set_stalled(&self, stalled: bool) -> bool {
        !self.stalled.swap(stalled, SeqCst) && stalled
    }

    /// Whether the client has stopped reading (its writes would block).
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{poll, PollFd, PollFlags, Timespec};

    fn rung(bell: &Bell) -> bool {
        let mut fds = [PollFd::new(&bell.fd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    /// A thread that is awake is not rung: a speaker never rings its own bell.
    #[test]
    fn only_an_armed_bell_is_rung_by_wake_and_only_once() {
        let bell = Bell::new().unwrap();
        bell.wake(&mut Vec::new());
        assert!(!rung(&bell));
        bell.arm();
        bell.wake(&mut Vec::new());
        assert!(rung(&bell));
        bell.silence();
        bell.wake(&mut Vec::new());
        assert!(!rung(&bell), "a second wake before the thread sleeps again");
    }

    #[test]
    fn the_first_close_reason_wins_and_rings() {
        let bell = Bell::new().unwrap();
        assert_eq!(bell.closing(), None);
        bell.close(CloseReason::Slow);
        bell.close(CloseReason::Shutdown);
        assert_eq!(bell.closing(), Some(CloseReason::Slow));
        assert!(rung(&bell));
    }

    #[test]
    fn stalled_reports_only_the_change_to_stalled() {
        let bell = Bell::new().unwrap();
        assert!(bell.set_stalled(true));
        assert!(!bell.set_stalled(true));
        assert!(bell.is_stalled());
        assert!(!bell.set_stalled(false));
    }
}
