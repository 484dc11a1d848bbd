//! The waker thread: rings the doorbells of the members a chat message was appended for,
//! after the room's lock is released, so that the speaker's thread returns to its own
//! socket at once.
//!
//! Why a thread of its own: a speaker that rang 500 doorbells itself after each message
//! spent about a millisecond per message in system calls, and its members, each woken at
//! once, drained the feed and went back to sleep before the next message, so every message
//! rang every doorbell again (measured: 500 subscribers x 1,000 msg/s fell from 497k to
//! 199k deliveries a second). Handed to this thread, rings coalesce: while it rings for one
//! message, members it woke read the messages that came meanwhile, are not asleep when the
//! next batch comes, and are not rung again.
//!
//! It cannot stop waking people without a sign: a panic while ringing is caught and logged
//! and the thread goes on, and if it were gone all the same, [`Waker::wake`] logs an error
//! and rings the doorbells itself. Joins and leaves are rung by the joining thread itself:
//! they come in storms, and waking the room paces the storm.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::room::Subscriber;

/// The waker thread's stack: it only rings doorbells.
const STACK_BYTES: usize = 64 * 1024;

/// Members to wake, in one batch per message.
type Batch = Vec<Arc<dyn Subscriber>>;

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
            log::error!("the room waker thread is gone; waking members from the speaker's thread");
            ring(&unsent.into_inner());
        }
    }
}

fn ring(batch: &Batch) {
    for subscriber in batch {
        subscriber.wake();
    }
}

/// The thread: rings each batch, surviving a panic in any one of them.
fn run(batches: &Receiver<Batch>) {
    for batch in batches {
        if catch_unwind(AssertUnwindSafe(|| ring(&batch))).is_err() {
            log::error!("the room waker caught a panic while ringing; it goes on");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::CloseReason;
    use std::sync::mpsc;

    /// Rings into a channel, or panics when told to.
    struct Bell(Option<mpsc::Sender<()>>);

    impl Subscriber for Bell {
        fn cursor(&self) -> u64 {
            0
        }
        fn set_cursor(&self, _: u64) {}
        fn is_asleep(&self) -> bool {
            true
        }
        fn is_stalled(&self) -> bool {
            false
        }
        fn wake(&self) {
            match &self.0 {
                Some(rung) => rung.send(()).unwrap(),
                None => panic!("a bell that breaks"),
            }
        }
        fn retry(&self) {}
        fn close(&self, _: CloseReason) {}
    }

    /// A panic while ringing one batch does not stop the thread: the next batch is rung.
    #[test]
    fn the_waker_survives_a_panic_and_rings_the_next_batch() {
        let waker = Waker::start().unwrap();
        let (rung, heard) = mpsc::channel();
        waker.wake(vec![Arc::new(Bell(None))]);
        waker.wake(vec![Arc::new(Bell(Some(rung)))]);
        heard
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second batch was rung");
    }
}
