//! The HTTP workers: the threads that take REST requests from tiny_http and answer them
//! (`http::answer`), as many as are busy plus a few spare, never more than a ceiling.
//!
//! # Why the pool grows and shrinks
//! A token request's worker waits, with no lock held, while a `hasher` thread runs bcrypt
//! (tens of milliseconds). With a fixed pool sized for the worst case (16, plus one per
//! bcrypt job that may wait, plus one per hashing thread: 82 on two cores) a flood of wrong
//! passwords never leaves a `GET` waiting behind them (the `guess` bench scenario: with 16
//! workers, every one waited on bcrypt and a `GET /chats/1` waited seconds), but a server at
//! rest kept 82 parked threads, about 17 KiB of RSS each (1.4 MiB) plus their scheduler
//! and descriptor bookkeeping, for a flood that may never come.
//!
//! So the pool keeps [`SPARE`] workers waiting at rest, and the worker that takes the last
//! waiting one's place doubles the pool before it handles its request, so a request that
//! arrives finds a worker soon, up to [`Workers::start`]'s `max` (the old fixed size). A
//! worker beyond the spares that has waited [`IDLE_EXIT`] without a request ends. The
//! bound on workers waiting on bcrypt is unchanged: `bcrypt_queue_len` plus the hashing
//! threads, and `bcrypt_per_ip` (2 per address) keeps one address from taking them all.
//!
//! # Shutdown
//! [`Workers::shutdown`] marks the pool as stopping and unblocks tiny_http's queue once per
//! live worker until none is left; a worker busy with a request ends after answering it.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::sync::lock;
use crate::State;

/// Workers kept waiting for a request while the server is at rest: enough that a few
/// requests at once never wait for a thread to start, few enough to cost little.
pub const SPARE: usize = 2;
/// How long a worker beyond the spares waits for a request before it ends (tiny_http's own
/// pool lets its threads go after 5 s too).
pub const IDLE_EXIT: Duration = Duration::from_secs(5);
/// How often shutdown unblocks tiny_http's queue again while workers are still busy.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// A worker's stack: JSON bodies are capped, and bcrypt runs elsewhere.
const STACK_BYTES: usize = 256 * 1024;

/// The pool of HTTP workers.
pub struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    server: Arc<tiny_http::Server>,
    state: Arc<State>,
    /// The most workers alive at once.
    max: usize,
    /// Set once by `shutdown`: no worker starts or waits after it.
    stopping: AtomicBool,
    /// How many workers are alive, and how many of them wait for a request. Held for the
    /// arithmetic only; a thread is started outside it.
    counts: Mutex<Counts>,
    /// Signalled whenever a worker ends.
    ended: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    alive: usize,
    waiting: usize,
}

impl Workers {
    /// Starts [`SPARE`] workers (at least one, at most `max`) serving `server`.
    pub fn start(
        server: Arc<tiny_http::Server>,
        state: Arc<State>,
        max: usize,
    ) -> std::io::Result<Workers> {
        let shared = Arc::new(Shared {
            server,
            state,
            max: max.max(1),
            stopping: AtomicBool::new(false),
            counts: Mutex::new(Counts::default()),
            ended: Condvar::new(),
        });
        for _ in 0..SPARE.clamp(1, shared.max) {
            let mut counts = lock(&shared.counts);
            counts.alive += 1;
            counts.waiting += 1;
            drop(counts);
            if let Err(e) = spawn(&shared) {
                shared.gone(true);
                return Err(e);
            }
        }
        Ok(Workers { shared })
    }

    /// Stops every worker: those waiting at once, those busy once they have answered.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        shared.stopping.store(true, SeqCst);
        let mut counts = lock(&shared.counts);
        while counts.alive > 0 {
            for _ in 0..counts.waiting.max(1) {
                shared.server.unblock();
            }
            counts = match shared.ended.wait_timeout(counts, SHUTDOWN_POLL) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Shared {
    /// Books more workers if the one that just stopped waiting was the last waiting: as
    /// many as are alive (the pool doubles), within `max`. Returns how many the caller must
    /// start. Doubling, not one more: a burst of 100 token requests queued in tiny_http
    /// ahead of a `GET` is reached in 6 rounds of thread starts, not 100 (one at a time,
    /// the `guess` scenario's GETs waited for the whole chain).
    fn took_request(&self) -> usize {
        let mut counts = lock(&self.counts);
        counts.waiting -= 1;
        if counts.waiting > 0 || self.stopping.load(SeqCst) {
            return 0;
        }
        let more = counts.alive.min(self.max - counts.alive);
        counts.alive += more;
        counts.waiting += more;
        more
    }

    fn answered(&self) {
        lock(&self.counts).waiting += 1;
    }

    /// Whether a worker that waited [`IDLE_EXIT`] for nothing should end; if so it is no
    /// longer counted.
    fn may_retire(&self) -> bool {
        let mut counts = lock(&self.counts);
        let retire = self.stopping.load(SeqCst) || counts.alive > SPARE;
        if retire {
            counts.alive -= 1;
            counts.waiting -= 1;
        }
        retire
    }

    /// A worker (booked as waiting if `waiting`) is gone without retiring: it failed to
    /// start, or the pool is stopping.
    fn gone(&self, waiting: bool) {
        let mut counts = lock(&self.counts);
        counts.alive -= 1;
        if waiting {
            counts.waiting -= 1;
        }
        drop(counts);
        self.ended.notify_all();
    }
}

/// Starts one worker, already counted alive and waiting.
fn spawn(shared: &Arc<Shared>) -> std::io::Result<()> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("http-worker".into())
        .stack_size(STACK_BYTES)
        .spawn(move || work(&shared))
        .map(drop)
}

/// One worker's life: take a request, make sure someone else waits, answer it; end when
/// idle too long beyond the spares, or when the pool stops.
fn work(shared: &Arc<Shared>) {
    loop {
        if shared.stopping.load(SeqCst) {
            return shared.gone(true);
        }
        let request = match shared.server.recv_timeout(IDLE_EXIT) {
            Ok(Some(request)) => request,
            // Timed out, or unblocked by shutdown.
            Ok(None) => {
                if shared.may_retire() {
                    shared.ended.notify_all();
                    return;
                }
                continue;
            }
            // tiny_http's queue gives errors only for a failed accept, which its accept
            // thread logs and survives (vendor/tiny_http, patch 5).
            Err(_) => continue,
        };
        for _ in 0..shared.took_request() {
            if let Err(e) = spawn(shared) {
                log::error!("cannot start an HTTP worker: {e}");
                shared.gone(true);
            }
        }
        crate::http::answer(&shared.server, &shared.state, request);
        shared.answered();
    }
}
