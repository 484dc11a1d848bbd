//! bcrypt on low-priority threads, so that hashing passwords never slows cheap requests.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10) and uses a whole core while
//! it runs. Run on the HTTP workers, a burst of token requests filled both cores of a
//! small host and a `GET /chats/1` waited its turn behind them. Here it runs on its own
//! threads, one per core, at nice 10: the kernel then gives a waiting request almost all
//! of a core at once, while hashing still uses every idle cycle. Callers block until
//! their answer is ready; they hold no lock while they wait.

use std::io;

use crossbeam_channel::{bounded, Receiver, Sender};

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
}

impl Hasher {
    /// Starts one low-priority hashing thread per available core; new hashes use `cost`.
    pub fn start(cost: u32) -> io::Result<Hasher> {
        let (jobs, queue) = crossbeam_channel::unbounded();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        for _ in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("bcrypt".into())
                .stack_size(STACK_BYTES)
                .spawn(move || run(&queue))?;
        }
        Ok(Hasher { jobs, cost })
    }

    /// The bcrypt hash of `password`; `None` if bcrypt refuses it.
    pub fn hash(&self, password: &str) -> Option<String> {
        let (answer, reply) = bounded(1);
        let job = Job::Hash {
            password: password.to_owned(),
            cost: self.cost,
            answer,
        };
        self.jobs.send(job).ok()?;
        reply.recv().ok().flatten()
    }

    /// Whether `password` matches `hash`.
    pub fn verify(&self, password: &str, hash: &str) -> bool {
        let (answer, reply) = bounded(1);
        let job = Job::Verify {
            password: password.to_owned(),
            hash: hash.to_owned(),
            answer,
        };
        self.jobs.send(job).is_ok() && reply.recv().unwrap_or(false)
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
        let hasher = Hasher::start(4).unwrap();
        let hash = hasher.hash("correct horse").unwrap();
        assert!(hasher.verify("correct horse", &hash));
        assert!(!hasher.verify("wrong horse", &hash));
        assert!(!hasher.verify("correct horse", "not a hash"));
    }
}
