//! The waker thread: wakes the members a chat message was handed to, after the room's
//! lock is released, so that the speaker's thread goes back to its own socket at once.
//! Waking a sleeping member first lets its courier write its events to its socket
//! (`Bell::wake`, `ws::frame::Courier`): one write on this thread, the member's thread left
//! asleep. Joins and leaves are woken by the thread that made them: they come in storms,
//! and waking the room paces the storm.
//!
//! Why a third thread on a message's path: rung by the speaker's thread itself, 500
//! members at 200 messages/s waited 219 ms at p50 and 1,165 ms at p99 (against 7 and
//! 24 ms with this thread; `make bench`, fan-out 500 x 200, one run, see ARCHITECTURE.md).
//! Each bell the speaker rings wakes a member that preempts it, so the speaker's next
//! frame waits for the whole room, and members woken at once drain their channels and
//! sleep again before the next message, so every message wakes every member. Handed to
//! this thread, rings coalesce: while it rings for one message, the members it woke take
//! the messages that came meanwhile, are not asleep when the next batch comes, and are not
//! rung again.
//!
//! It cannot stop waking people without a sign: a panic while ringing is caught and
//! logged and the thread goes on, and if it were gone all the same, [`Waker::wake`] logs an
//! error and rings the bells itself.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::bell::Bell;

/// The waker thread's stack: it only rings bells.
const STACK_BYTES: usize = 64 * 1024;

/// Members to wake, one batch per message.
type Batch = Vec<Arc<Bell>>;

/// The most the thread's frame buffer keeps between batches. Each wake puts a sleeping
/// member's frames together in this one buffer before writing them (see `Bell::wake`).
/// Put together in the member's own buffer, which was allocated and freed at each wake
/// since an idle socket keeps none, a wake ran 1,369 instructions in user space; with
/// this buffer 471 (callgrind, a 50 x 20 fan-out). After a burst it shrinks back to this.
const SCRATCH_KEPT_BYTES: usize = 64 * 1024;

/// A handle to the waker thread. Cloning shares it.
#[derive(Clone)]
pub struct Waker {
    queue: Sender<Batch>,
}

impl Waker {
    /// Starts the waker thread.
    pub fn start() -> io::Result<Waker> {
        let (queue, batches) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("room-waker".into())
            .stack_size(STACK_BYTES)
            .spawn(move || run(&batches))?;
        Ok(Waker { queue })
    }

    /// Has `batch` woken by the waker thread (or here, if it is gone).
    pub fn wake(&self, batch: Batch) {
        if let Err(unsent) = self.queue.send(batch) {
            log::error!("the room waker thread is gone; waking members from this thread");
            ring(&unsent.into_inner(), &mut Vec::new());
        }
    }
}

fn ring(batch: &Batch, scratch: &mut Vec<u8>) {
    for bell in batch {
        bell.wake(scratch);
    }
}

/// The thread: rings each batch, surviving a panic in any one of them.
fn run(batches: &Receiver<Batch>) {
    let mut scratch = Vec::new();
    for batch in batches {
        if catch_unwind(AssertUnwindSafe(|| ring(&batch, &mut scratch))).is_err() {
            log::error!("the room waker caught a panic while ringing; it goes on");
        }
        scratch.clear();
        scratch.shrink_to(SCRATCH_KEPT_BYTES);
    }
}
