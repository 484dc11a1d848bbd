//! ChitChat patch: bounds on what one request may cost before the application sees it.
//!
//! Upstream read a request line and its header lines byte by byte into a `Vec` with no cap
//! and no count of lines, and a connection's read timeout applied to each read, so a client
//! that kept sending was never cut off: three connections sending 256 MiB request lines
//! took a server from 67 to 802 MiB, and a client sending one body byte every few seconds
//! held the application thread reading that body for as long as it liked.
//!
//! With [`RequestLimits`], the request line and the head are capped (nothing past a cap is
//! read into memory), and the head and the body each have a deadline for the whole of it,
//! however slowly it trickles. A request past a limit is answered with the application's
//! refusal, then the connection is closed (where the next request would start is unknown).

use std::time::Duration;

/// What a request may cost; see the module docs. `Default` is upstream's behaviour: no caps,
/// no deadlines.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// The longest request line, in bytes, its CRLF not counted; past it `uri_too_long`.
    pub max_request_line: usize,
    /// The largest head (request line, header lines and every CRLF), in bytes; past it
    /// `head_too_large`.
    pub max_head_bytes: usize,
    /// The most header lines; past it `head_too_large`.
    pub max_header_lines: usize,
    /// The whole head must arrive within this from when the connection is ready to read
    /// it (accepted, or done with its previous request); `None`: no deadline. A connection
    /// that sent no byte of a new request by then is closed without an answer.
    pub head_timeout: Option<Duration>,
    /// The whole body must arrive within this from the end of its head; `None`: no
    /// deadline. A read past it fails with `ErrorKind::TimedOut`, and the connection is
    /// closed once the request is answered.
    pub body_timeout: Option<Duration>,
    /// The whole response (status line, headers, body) to a request line past its cap: it
    /// should be a 414 and say `Connection: close`.
    pub uri_too_long: Vec<u8>,
    /// The whole response to a head past its caps: a 431, `Connection: close`.
    pub head_too_large: Vec<u8>,
    /// The whole response to a head, or a small body read before the request is handed
    /// over, that missed its deadline: a 408, `Connection: close`.
    pub timed_out: Vec<u8>,
}

impl Default for RequestLimits {
    fn default() -> Self {
        let empty = |status: &str| {
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        };
        RequestLimits {
            max_request_line: usize::MAX,
            max_head_bytes: usize::MAX,
            max_header_lines: usize::MAX,
            head_timeout: None,
            body_timeout: None,
            uri_too_long: empty("414 URI Too Long"),
            head_too_large: empty("431 Request Header Fields Too Large"),
            timed_out: empty("408 Request Timeout"),
        }
    }
}

/// How many requests were refused for each of [`RequestLimits`]' reasons since the server
/// started (`Server::request_refusals`). Bodies read by the application that miss their
/// deadline are the application's to count: it sees the `TimedOut` error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestRefusals {
    /// Answered `uri_too_long`.
    pub request_line: u64,
    /// Answered `head_too_large`.
    pub head: u64,
    /// Heads answered `timed_out`.
    pub head_timeout: u64,
    /// Small bodies (read before the request is handed over) answered `timed_out`.
    pub body_timeout: u64,
}
