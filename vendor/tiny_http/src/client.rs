use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::io::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Method};
use crate::util::RefinedTcpStream;
use crate::util::RequestLimits;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Counters, Request};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // ChitChat patch: what a request may cost, and where refusals are counted
    limits: Arc<RequestLimits>,
    counters: Arc<Counters>,

    // ChitChat patch: whether the request being read asks `HEAD`, so that a refusal of it
    // sends no body (RFC 9110, 9.3.2)
    asked_head: bool,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// ChitChat patch: the request line is longer than `max_request_line` (414)
    RequestLineTooLong,
    /// ChitChat patch: the head is over `max_head_bytes` or `max_header_lines` (431)
    HeadTooLarge,
    /// ChitChat patch: part of a head arrived, not all of it by its deadline (408)
    HeadTimedOut,
    /// ChitChat patch: a small body, read before the request is handed over, missed its
    /// deadline (408)
    BodyTimedOut,
    /// ChitChat patch: the previous request's body missed its deadline; the application
    /// has answered it
    Expired,
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    ///
    /// ChitChat patch: with the `limits` its requests must keep to, the `counters` its
    /// refusals are counted in, and the socket's `read_timeout`, which a deadline may
    /// shorten.
    pub(crate) fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<RequestLimits>,
        counters: Arc<Counters>,
        read_timeout: Option<Duration>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        read_socket.keep_read_timeout(read_timeout);

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            counters,
            asked_head: false,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// ChitChat patch: a line longer than `max_len` bytes (CRLF aside) is
    /// `RequestLineTooLong`, and every byte read, CRLF included, is taken from `head_left`:
    /// once it is spent, `HeadTooLarge`. Nothing past either cap is read.
    fn read_next_line(
        &mut self,
        max_len: usize,
        head_left: &mut usize,
    ) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(ReadError::ReadIoError)?,
                None => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };
            *head_left = head_left.checked_sub(1).ok_or(ReadError::HeadTooLarge)?;

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                return AsciiString::from_ascii(buf).map_err(|_| {
                    ReadError::ReadIoError(IoError::new(
                        ErrorKind::InvalidInput,
                        "Header is not in ASCII",
                    ))
                });
            }

            // room for `max_len` bytes and the CR of the CRLF
            if buf.len() > max_len {
                // Only the request line has a cap, and its method is at its start (the
                // line is trimmed before it is parsed).
                self.asked_head = buf.trim_ascii_start().starts_with(b"HEAD ");
                return Err(ReadError::RequestLineTooLong);
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let limits = Arc::clone(&self.limits);
        // ChitChat patch: the head's deadline starts once the previous request is done
        // with the socket (its body read), so a slow handler does not eat into it.
        let stream = self.next_header_source.turn().get_mut();
        if stream.expired() {
            return Err(ReadError::Expired);
        }
        stream.set_deadline(limits.head_timeout.map(|timeout| Instant::now() + timeout));
        self.asked_head = false;
        let mut head_left = limits.max_head_bytes;
        let read = self.read_head(&limits, &mut head_left);
        // Only a head of which some part arrived is answered 408; an idle connection is
        // closed without a word, as upstream.
        let started = head_left < limits.max_head_bytes;
        match read {
            Err(ReadError::ReadIoError(e)) if e.kind() == ErrorKind::TimedOut && started => {
                Err(ReadError::HeadTimedOut)
            }
            other => other,
        }
    }

    /// ChitChat patch: upstream's `read`, the head read within `head_left` bytes.
    fn read_head(
        &mut self,
        limits: &RequestLimits,
        head_left: &mut usize,
    ) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self.read_next_line(limits.max_request_line, head_left)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };
            self.asked_head = method == Method::Head;

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    // A header line may be as long as what is left of the head.
                    let line = self.read_next_line(usize::MAX, head_left)?;

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() == limits.max_header_lines {
                        return Err(ReadError::HeadTooLarge);
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);
        // ChitChat patch: the body's deadline starts at the end of its head.
        let deadline = limits.body_timeout.map(|timeout| Instant::now() + timeout);
        data_source.turn().get_mut().set_deadline(deadline);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e)
                    if e.kind() == ErrorKind::TimedOut =>
                {
                    ReadError::BodyTimedOut
                }
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                // ChitChat patch: the application's refusals, counted, then a graceful close.
                // Upstream answered a timed-out read 408 whether or not a request had begun.
                Err(ReadError::RequestLineTooLong) => return self.refuse(Refusal::RequestLine),
                Err(ReadError::HeadTooLarge) => return self.refuse(Refusal::Head),
                Err(ReadError::HeadTimedOut) => return self.refuse(Refusal::HeadTimeout),
                Err(ReadError::BodyTimedOut) => return self.refuse(Refusal::BodyTimeout),
                Err(ReadError::Expired) => {
                    self.next_header_source.turn().get_mut().linger();
                    return None;
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // Answered through the request's own writer: the next writer waits for
                // this one to be dropped, and the request holding it lives on this thread.
                let writer = rq.into_writer();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                return None; // where the next request would start is unknown
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            return Some(rq);
        }
    }
}

/// ChitChat patch: why a request is refused by `RequestLimits`.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    RequestLine,
    Head,
    HeadTimeout,
    BodyTimeout,
}

impl ClientConnection {
    /// ChitChat patch: answers with the application's response for `why`, counts it, and
    /// closes the connection gracefully (see `RefinedTcpStream::linger`).
    fn refuse(&mut self, why: Refusal) -> Option<Request> {
        let (response, counter): (&[u8], &AtomicU64) = match why {
            Refusal::RequestLine => (
                &self.limits.uri_too_long,
                &self.counters.request_line_refusals,
            ),
            Refusal::Head => (&self.limits.head_too_large, &self.counters.head_refusals),
            Refusal::HeadTimeout => (&self.limits.timed_out, &self.counters.head_timeouts),
            Refusal::BodyTimeout => (&self.limits.timed_out, &self.counters.body_timeouts),
        };
        counter.fetch_add(1, Relaxed);
        // A `HEAD` is answered with the head alone: its `Content-Length` says what a `GET`
        // would have carried.
        let response = match response.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) if self.asked_head => &response[..end + 4],
            _ => response,
        };
        let mut writer = self.sink.next().unwrap();
        let written = writer.write_all(response).and_then(|()| writer.flush());
        // Written once every earlier response is: this writer waited for its turn.
        drop(writer);
        if written.is_ok() {
            self.next_header_source.turn().get_mut().linger();
        }
        None
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
