//! bcrypt on low-priority threads, so that hashing passwords never slows cheap requests.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10) and uses a whole core while
//! it runs. Run on the HTTP workers, a burst of token requests filled both cores of a
//! small host and a `GET /chats/1` waited its turn behind them. Here it runs on its own
//! threads, one per core, at nice 10: the kernel then gives a waiting request almost all
//! of a core at once, while hashing still uses every idle cycle. Callers block until
//! their answer is ready; they hold no lock while they wait.
//!
//! So at most one hash runs per core at once (SPEC, Limits). Jobs wait in a bounded queue
//! (`bcrypt_queue_len`, 0 for no bound): when it is full, a new job is refused at once
//! with [`Busy`] (604, `Retry-After: 1`) rather than queued behind seconds of work, so a
//! burst of token requests cannot tie up every HTTP worker waiting for bcrypt.

use std::io;
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};

/// How much lower than normal the hashing threads run (nice 10: about a tenth of the CPU
/// share of a normal thread when both want it).
const NICE: i32 = 10;
/// A hashing thread's stack; bcrypt's state is a few KiB.
const STACK_BYTES: usize = 64 * 1024;

/// Work for a hashing thread, with where to send the answer.
enum Job {
    Hash {
        password: String,
        cost: u32,
        answer: Sender<Option<String>>,
    },
    Verify {
        password: String,
        hash: String,
        answer: Sender<bool>,
    },
}

/// A handle to the hashing threads. Cloning shares them.
#[derive(Clone)]
pub struct Hasher {
    jobs: Sender<Job>,
    /// bcrypt work factor for new hashes (`bcrypt_cost`).
    cost: u32,
    /// Where a refusal is counted.
    metrics: Arc<Metrics>,
}

/// bcrypt's queue is full: the job was not queued. Answered 503, code 604, `Retry-After: 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl From<Busy> for ApiError {
    fn from(_: Busy) -> ApiError {
        ApiError::retry_after(ErrorKind::ServerBusy, 1)
    }
}

impl Hasher {
    /// Starts one low-priority hashing thread per available core; new hashes use `cost`;
    /// at most `queue_len` jobs wait (0: no bound), and refusals are counted in `metrics`.
    pub fn start(cost: u32, queue_len: usize, metrics: Arc<Metrics>) -> io::Result<Hasher> {
        let (jobs, queue) = match queue_len {
            0 => crossbeam_channel::unbounded(),
            len => bounded(len),
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("bcrypt".into())
                .stack_size(STACK_BYTES)
                .spawn(move || run(&queue))?;
        }
        Ok(Hasher {
            jobs,
            cost,
            metrics,
        })
    }

    /// The bcrypt hash of `password`; `Ok(None)` if bcrypt refuses it.
    pub fn hash(&self, password: &str) -> Result<Option<String>, Busy> {
        let (answer, reply) = bounded(1);
        let job = Job::Hash {
            password: password.to_owned(),
            cost: self.cost,
            answer,
        };
        if !self.queue(job)? {
            return Ok(None);
        }
        Ok(reply.recv().ok().flatten())
    }

    /// Whether `password` matches `hash`.
    pub fn verify(&self, password: &str, hash: &str) -> Result<bool, Busy> {
        let (answer, reply) = bounded(1);
        let job = Job::Verify {
            password: password.to_owned(),
            hash: hash.to_owned(),
            answer,
        };
        Ok(self.queue(job)? && reply.recv().unwrap_or(false))
    }

    /// Jobs waiting for a hashing thread now.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// Queues `job` without waiting: `Err(Busy)` if the queue is full, `Ok(false)` if the
    /// threads are gone (they never stop while the server runs).
    fn queue(&self, job: Job) -> Result<bool, Busy> {
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.metrics.bcrypt_job();
                Ok(true)
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.refused(Limit::BcryptQueue);
                Err(Busy)
            }
            Err(TrySendError::Disconnected(_)) => Ok(false),
        }
    }
}

/// A hashing thread: lower its own priority, then answer jobs until the handles are gone.
fn run(queue: &Receiver<Job>) {
    // On Linux a thread id names one thread here. Failing to lower the priority only
    // costs latency, so it is not fatal.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), NICE) {
        log::warn!("cannot lower the bcrypt threads' priority: {e}");
    }
    for job in queue {
        // A caller that gave up waiting is not an error.
        match job {
            Job::Hash {
                password,
                cost,
                answer,
            } => {
                let _ = answer.send(bcrypt::hash(password, cost).ok());
            }
            Job::Verify {
                password,
                hash,
                answer,
            } => {
                let _ = answer.send(bcrypt::verify(password, &hash).unwrap_or(false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_verifies() {
        let hasher = Hasher::start(4, 8, Arc::default()).unwrap();
        let hash = hasher.hash("correct horse").unwrap().unwrap();
        assert_eq!(hasher.verify("correct horse", &hash), Ok(true));
        assert_eq!(hasher.verify("wrong horse", &hash), Ok(false));
        assert_eq!(hasher.verify("correct horse", "not a hash"), Ok(false));
    }

    /// With the queue full (here: no thread takes from it), a job is refused at once,
    /// and the refusal is counted.
    #[test]
    fn a_full_queue_refuses_at_once() {
        let metrics = Arc::new(Metrics::default());
        let (jobs, _queue) = bounded(1);
        let hasher = Hasher {
            jobs,
            cost: 4,
            metrics: Arc::clone(&metrics),
        };
        let (answer, _reply) = bounded(1);
        let job = Job::Verify {
            password: "a".into(),
            hash: "b".into(),
            answer,
        };
        assert_eq!(hasher.queue(job), Ok(true));
        assert_eq!(hasher.queued(), 1);
        assert_eq!(hasher.verify("x", "y"), Err(Busy));
        assert_eq!(hasher.hash("x"), Err(Busy));
        assert!(metrics
            .render(&Default::default())
            .contains("chitchat_limit_refusals_total{limit=\"bcrypt_queue_len\"} 2"));
    }
}
