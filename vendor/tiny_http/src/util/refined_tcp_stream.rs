use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;
use crate::util::connection_limit::LINGER;
use crate::util::OpenConnection;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// ChitChat patch: upstream's `Clone` unwrapped `try_clone`, which needs a second file
    /// descriptor: a server out of descriptors panicked its accept thread here.
    fn try_clone(&self) -> IoResult<Self> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.try_clone().map(Stream::Http),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Ok(Stream::Https(ssl_stream.clone())),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }

    /// ChitChat patch: deadlines apply to plain connections only.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(timeout),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }
}

/// ChitChat patch: the most a refused connection's input is drained (see `linger`): a
/// client that keeps sending at full speed must not keep a thread busy discarding it.
const LINGER_BYTES: usize = 256 * 1024;
/// ChitChat patch: a read at or past its deadline still waits this long, so it takes what
/// has already arrived instead of failing without looking.
const LAST_LOOK: Duration = Duration::from_millis(1);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    // ChitChat patch: counts the connection as open until both halves are dropped
    _open: Arc<OpenConnection>,
    // ChitChat patch: see `set_deadline`
    read_timeout: Option<Duration>,
    deadline: Option<Instant>,
    expired: bool,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(
        stream: S,
        open: Arc<OpenConnection>,
    ) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            _open: Arc::clone(&open),
            read_timeout: None,
            deadline: None,
            expired: false,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            _open: open,
            read_timeout: None,
            deadline: None,
            expired: false,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// ChitChat patch: the connection's timeout for each read (`ServerOptions::read_timeout`),
    /// which a deadline may shorten but never lengthen.
    pub(crate) fn keep_read_timeout(&mut self, read_timeout: Option<Duration>) {
        self.read_timeout = read_timeout;
    }

    /// ChitChat patch: what is read from now on must have arrived by `deadline` (`None`: no
    /// deadline, each read waits at most the read timeout, as upstream). Each read waits
    /// only until the deadline, so a client trickling a byte now and then cannot stretch
    /// it; once a read finds it passed, this read half fails every read with `TimedOut`
    /// for good: where the request ends is unknown, so the connection must close.
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
        if deadline.is_none() {
            let _ = self.stream.set_read_timeout(self.read_timeout);
        }
    }

    /// ChitChat patch: whether a deadline has passed (see `set_deadline`).
    pub(crate) fn expired(&self) -> bool {
        self.expired
    }

    /// ChitChat patch: closes the connection gracefully after a refusal: shuts the write
    /// side (the client sees the end of the response), then reads and discards what the
    /// client still sends until it closes, for at most [`LINGER`] and [`LINGER_BYTES`].
    /// Closing with unread input would send a reset, which can destroy the response before
    /// the client reads it; a client that keeps sending gets the reset after all.
    pub(crate) fn linger(&mut self) {
        let until = Instant::now() + LINGER;
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut scratch = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let deadline = match self.deadline {
            None => return self.stream.read(buf),
            Some(_) if self.expired => return Err(deadline_passed()),
            Some(deadline) => deadline,
        };
        // ChitChat patch: this read waits until the deadline at most.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(LAST_LOOK);
        let wait = self.read_timeout.map_or(left, |timeout| timeout.min(left));
        self.stream.set_read_timeout(Some(wait))?;
        match self.stream.read(buf) {
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && Instant::now() >= deadline =>
            {
                self.expired = true;
                Err(deadline_passed())
            }
            other => other,
        }
    }
}

/// ChitChat patch: the error of a read past its deadline.
fn deadline_passed() -> IoError {
    IoError::new(ErrorKind::TimedOut, "the request's deadline has passed")
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
