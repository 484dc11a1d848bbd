//! ChitChat patch: what an accept loop does while `accept` keeps failing.
//!
//! Upstream's accept thread ended at the first failed `accept`: once a server ran out of
//! file descriptors (`EMFILE`), its listener was gone for good while the process lived on.
//! An accept loop that owns an `AcceptBackoff` never ends on an error; it waits and tries
//! again, as Go's net/http does, and logs one line per burst of failures instead of one per
//! failure (a loop retrying a few hundred times a second would flood the log).
//!
//! It is public so that an application's other accept loops (ChitChat's WebSocket
//! listener) follow the same policy with the same code.

use std::io;
use std::time::Duration;

/// The back-off of one accept loop: after a failed `accept`, wait [`Self::FIRST_DELAY`],
/// doubling on each further failure up to [`Self::MAX_DELAY`]; a successful `accept` ends
/// the burst and the next failure starts again from the first delay.
///
/// The first failure of a burst is logged at `warn`, the end of a burst at `info` (with
/// how many accepts failed), nothing in between.
///
/// ```no_run
/// # use std::net::TcpListener;
/// # let listener = TcpListener::bind("127.0.0.1:0").unwrap();
/// let mut backoff = tiny_http::AcceptBackoff::new("example listener", "example");
/// for stream in listener.incoming() {
///     match stream {
///         Ok(_stream) => backoff.succeeded(), // ... then hand the stream over
///         Err(e) => {
///             if let Some(pause) = backoff.failed(&e) {
///                 std::thread::sleep(pause);
///             }
///         }
///     }
/// }
/// ```
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Names the listener in log lines.
    listener: &'static str,
    /// The `log` target of those lines, so an application that keeps only its own
    /// targets still sees them.
    log_target: &'static str,
    /// Failed accepts in the current burst; 0 when the last accept succeeded.
    failures: u64,
    /// The wait after the next failure.
    next_delay: Duration,
}

impl AcceptBackoff {
    /// The wait after the first failure of a burst (Go's net/http: 5 ms).
    pub const FIRST_DELAY: Duration = Duration::from_millis(5);
    /// The longest wait between two attempts (Go's net/http: 1 s).
    pub const MAX_DELAY: Duration = Duration::from_secs(1);

    /// A back-off for the listener named `listener` in log lines, logged under
    /// `log_target`.
    pub fn new(listener: &'static str, log_target: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            listener,
            log_target,
            failures: 0,
            next_delay: Self::FIRST_DELAY,
        }
    }

    /// Records a failed `accept` and returns how long to wait before the next one.
    ///
    /// `None` means the error concerned only the one connection, not the listener
    /// (`ECONNABORTED`: the client gave up before it was accepted; `EINTR`): try again at
    /// once. Such errors are not part of a burst and are not logged; callers that count
    /// accept errors count only the `Some` ones.
    pub fn failed(&mut self, error: &io::Error) -> Option<Duration> {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
        ) {
            return None;
        }
        if self.failures == 0 {
            log::warn!(
                target: self.log_target,
                "{}: accepting a connection failed: {}; retrying with back-off (up to {:?}), \
                 logged again only after an accept succeeds",
                self.listener,
                error,
                Self::MAX_DELAY
            );
        }
        self.failures += 1;
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(Self::MAX_DELAY);
        Some(delay)
    }

    /// Records a successful `accept`: ends the current burst, if any.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            log::info!(
                target: self.log_target,
                "{}: accepting connections again ({} accepts had failed in a row)",
                self.listener,
                self.failures
            );
        }
        self.failures = 0;
        self.next_delay = Self::FIRST_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::AcceptBackoff;
    use std::io;
    use std::time::Duration;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[test]
    fn delay_doubles_from_5_ms_up_to_1_s() {
        let mut backoff = AcceptBackoff::new("test", "test");
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.failed(&emfile()).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn a_success_starts_the_next_burst_from_5_ms() {
        let mut backoff = AcceptBackoff::new("test", "test");
        for _ in 0..5 {
            backoff.failed(&emfile());
        }
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile()), Some(Duration::from_millis(5)));
    }

    #[test]
    fn an_aborted_connection_is_retried_at_once_and_not_a_failure() {
        let mut backoff = AcceptBackoff::new("test", "test");
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted), None);
        assert_eq!(backoff.failed(&emfile()), Some(Duration::from_millis(5)));
    }
}
