//! The numbers `GET /metrics` shows, and their rendering in Prometheus' text format
//! (version 0.0.4).
//!
//! Two kinds of number:
//! - **counters** (`..._total`), kept here as atomics and only ever incremented, by whoever
//!   sees the event happen: a socket's thread, an HTTP worker, the bcrypt queue, a limit.
//!   An increment is one relaxed atomic add: no lock, no system call, no log line, so it may
//!   happen anywhere, even under a room's lock (none does: see `ws::session`);
//! - **gauges** (how many rooms, sockets, members now), not kept at all: they are read from
//!   where the truth lives, at scrape time ([`Readings`], filled in by `http`), so they can
//!   never drift from it. So are the counters tiny_http keeps for the REST listener (its
//!   failed accepts, the connections it refused past `max_http_connections`, the heads it
//!   refused past their caps or deadline), since its threads, not ours, see those happen.
//!
//! The exposition is written by hand rather than with a client crate: a dozen series, three
//! lines each, label values that are fixed words or numbers, no histograms. The format is
//! `# HELP`, `# TYPE`, then `name{label="value"} number` lines; every label value of a
//! counter with a fixed set of values is written from the start (at 0), so a dashboard sees
//! the series before the first event.
//!
//! This module is a leaf: it knows no socket, lock or request. [`Limit`] and [`CloseReason`]
//! name what the other modules count.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The `Content-Type` of the exposition (SPEC, Metrics and health).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// HTTP statuses are counted in an array indexed by status: 100 to 599.
const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// A limit that refused something: the `limit` label of `chitchat_limit_refusals_total`,
/// named after its config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A WebSocket connection past `max_connections` (601).
    MaxConnections,
    /// A WebSocket connection past `max_connections_per_ip` (601).
    MaxConnectionsPerIp,
    /// A token request past `token_attempts_per_minute` failures (602).
    TokenAttempts,
    /// A room creation past `rooms_per_minute` (602).
    Rooms,
    /// A chat frame past `msgs_per_second` / `msgs_burst` (603).
    Messages,
    /// A token or password request with bcrypt's queue full, `bcrypt_queue_len` (604).
    BcryptQueue,
    /// A REST connection past `max_http_connections` (601), refused by tiny_http's accept
    /// thread, which counts it: read at scrape time, never through [`Metrics::refused`].
    MaxHttpConnections,
    /// A REST connection past `max_http_connections_per_ip` (601).
    MaxHttpConnectionsPerIp,
    /// A token or password request past `bcrypt_per_ip` jobs in flight (602).
    BcryptPerIp,
    /// A room creation past `max_rooms` rooms (606).
    MaxRooms,
    /// A request line over 8 KiB (414), on either listener. A fixed limit: no config key.
    RequestLine,
    /// A request head over 32 KiB or 100 header lines (431), on either listener. Fixed.
    RequestHead,
    /// A head not whole within `head_timeout_s` (408), on either listener.
    HeadTimeout,
    /// A body not whole within `body_timeout_s` (408).
    BodyTimeout,
    /// A cross-site `POST`, `PUT`, `DELETE` or WebSocket handshake (607), on either
    /// listener.
    AllowedOrigins,
}

impl Limit {
    /// Every limit, in the order they are rendered.
    pub const ALL: [Limit; 15] = [
        Limit::MaxConnections,
        Limit::MaxConnectionsPerIp,
        Limit::MaxHttpConnections,
        Limit::MaxHttpConnectionsPerIp,
        Limit::TokenAttempts,
        Limit::Rooms,
        Limit::Messages,
        Limit::BcryptQueue,
        Limit::BcryptPerIp,
        Limit::MaxRooms,
        Limit::RequestLine,
        Limit::RequestHead,
        Limit::HeadTimeout,
        Limit::BodyTimeout,
        Limit::AllowedOrigins,
    ];

    /// The label value: the limit's config key.
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerIp => "max_connections_per_ip",
            Limit::TokenAttempts => "token_attempts_per_minute",
            Limit::Rooms => "rooms_per_minute",
            Limit::Messages => "msgs_per_second",
            Limit::BcryptQueue => "bcrypt_queue_len",
            Limit::MaxHttpConnections => "max_http_connections",
            Limit::MaxHttpConnectionsPerIp => "max_http_connections_per_ip",
            Limit::BcryptPerIp => "bcrypt_per_ip",
            Limit::MaxRooms => "max_rooms",
            Limit::RequestLine => "request_line",
            Limit::RequestHead => "request_head",
            Limit::HeadTimeout => "head_timeout_s",
            Limit::BodyTimeout => "body_timeout_s",
            Limit::AllowedOrigins => "allowed_origins",
        }
    }
}

/// Why a chat socket ended: the one close-reason type. The room and the listener close
/// sockets for some of these (through `rooms::Bell`), `ws` maps each to its close code,
/// and it is the `reason` label of `chitchat_sockets_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it, went away, or broke the protocol.
    Client,
    /// Its client stopped reading while its channel was full (1008).
    Slow,
    /// It sent `flood_close_after` refused frames within a minute (1008).
    Flood,
    /// It sent a frame over `max_message_bytes` (1009).
    TooBig,
    /// It was silent for `pong_timeout_s`.
    PingTimeout,
    /// Its room was deleted (1001).
    RoomDeleted,
    /// The server stopped (1001).
    Shutdown,
    /// The backend (Redis) was lost (1012). SQLite never closes sockets.
    Backend,
    /// Its room's password or visibility changed, or its token no longer opens the room
    /// (1008, after an error event with code 104): it must present what the room asks for
    /// now (SPEC, Who may change a room).
    AccessChanged,
}

impl CloseReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::Slow,
        CloseReason::Flood,
        CloseReason::TooBig,
        CloseReason::PingTimeout,
        CloseReason::RoomDeleted,
        CloseReason::Shutdown,
        CloseReason::Backend,
        CloseReason::AccessChanged,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Slow => "slow",
            CloseReason::Flood => "flood",
            CloseReason::TooBig => "too_big",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::RoomDeleted => "room_deleted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Backend => "backend",
            CloseReason::AccessChanged => "access_changed",
        }
    }
}

/// The counters, shared by everything that counts (one `Arc` in `State`).
pub struct Metrics {
    /// Data frames read from clients (text or binary), refused ones included.
    events_received: AtomicU64,
    /// Room events handed to sockets to write (from their channels, and replayed history),
    /// one per event per socket.
    events_delivered: AtomicU64,
    /// Chat sockets ended, by [`CloseReason`] (indexed like `CloseReason::ALL`).
    sockets_closed: [AtomicU64; CloseReason::ALL.len()],
    /// REST responses sent, by status (index `status - 100`).
    http_responses: Vec<AtomicU64>,
    /// Refusals, by [`Limit`] (indexed like `Limit::ALL`).
    refusals: [AtomicU64; Limit::ALL.len()],
    /// bcrypt hashes and checks queued (each runs once).
    bcrypt_jobs: AtomicU64,
    /// Failed accepts on the WebSocket listener (the REST one's are tiny_http's).
    ws_accept_errors: AtomicU64,
}

/// What is read at scrape time from where each number lives: the gauges, and tiny_http's
/// counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    /// Rooms that exist.
    pub rooms: usize,
    /// WebSocket connections open, handshaking or chatting (what `max_connections` counts).
    pub sockets_open: usize,
    /// Names joined, in all rooms.
    pub users_joined: usize,
    /// Messages waiting for the history writer.
    pub history_queue: usize,
    /// bcrypt jobs waiting for a hashing thread.
    pub bcrypt_queue: usize,
    /// Whether the backend takes writes.
    pub backend_up: bool,
    /// Keys in each per-address table of the limits.
    pub tracked: Vec<(Limit, usize)>,
    /// Refusals tiny_http counted on the REST listener, by limit: added to ours.
    pub http_refusals: Vec<(Limit, u64)>,
    /// Failed accepts on the REST listener, counted by tiny_http.
    pub http_accept_errors: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_received: AtomicU64::new(0),
            events_delivered: AtomicU64::new(0),
            sockets_closed: Default::default(),
            http_responses: STATUSES.map(|_| AtomicU64::new(0)).collect(),
            refusals: Default::default(),
            bcrypt_jobs: AtomicU64::new(0),
            ws_accept_errors: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A data frame came in from a client.
    pub fn event_received(&self) {
        self.events_received.fetch_add(1, Relaxed);
    }

    /// `count` room events were handed to one socket.
    pub fn events_delivered(&self, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.events_delivered.fetch_add(count, Relaxed);
    }

    /// A chat socket ended, for `reason`.
    pub fn socket_closed(&self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.sockets_closed[i].fetch_add(1, Relaxed);
        }
    }

    /// A REST response with `status` was written. Statuses outside 100-599 are not counted
    /// (the server writes none).
    pub fn http_response(&self, status: u16) {
        let index = status.checked_sub(*STATUSES.start()).map(usize::from);
        if let Some(counter) = index.and_then(|i| self.http_responses.get(i)) {
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Accepting a WebSocket connection failed (and the listener backs off).
    pub fn ws_accept_failed(&self) {
        self.ws_accept_errors.fetch_add(1, Relaxed);
    }

    /// A bcrypt hash or check was queued.
    pub fn bcrypt_job(&self) {
        self.bcrypt_jobs.fetch_add(1, Relaxed);
    }

    /// `limit` refused something.
    pub fn refused(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            self.refusals[i].fetch_add(1, Relaxed);
        }
    }

    /// The exposition: every counter, and what `readings` holds, in Prometheus' text format.
    pub fn render(&self, readings: &Readings) -> String {
        let mut out = String::with_capacity(2048);
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        gauge(
            &mut out,
            "chitchat_rooms",
            "Rooms that exist.",
            count(readings.rooms),
        );
        gauge(
            &mut out,
            "chitchat_sockets_open",
            "WebSocket connections open, handshaking or chatting.",
            count(readings.sockets_open),
        );
        gauge(
            &mut out,
            "chitchat_users_joined",
            "Names joined in all rooms.",
            count(readings.users_joined),
        );
        counter(
            &mut out,
            "chitchat_events_received_total",
            "Data frames read from WebSocket clients.",
            &[("", self.events_received.load(Relaxed))],
        );
        counter(
            &mut out,
            "chitchat_events_delivered_total",
            "Room events handed to sockets, one per event per socket.",
            &[("", self.events_delivered.load(Relaxed))],
        );
        let closed: Vec<(String, u64)> = CloseReason::ALL
            .iter()
            .zip(&self.sockets_closed)
            .map(|(reason, n)| (label("reason", reason.label()), n.load(Relaxed)))
            .collect();
        counter(
            &mut out,
            "chitchat_sockets_closed_total",
            "Chat sockets ended, by reason.",
            &borrowed(&closed),
        );
        let responses: Vec<(String, u64)> = STATUSES
            .zip(&self.http_responses)
            .map(|(status, n)| (status, n.load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .map(|(status, n)| (label("status", &status.to_string()), n))
            .collect();
        counter(
            &mut out,
            "chitchat_http_responses_total",
            "REST responses sent, by HTTP status.",
            &borrowed(&responses),
        );
        let refusals: Vec<(String, u64)> = Limit::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(limit, n)| {
                let theirs: u64 = readings
                    .http_refusals
                    .iter()
                    .filter(|(l, _)| l == limit)
                    .map(|(_, n)| n)
                    .sum();
                (label("limit", limit.label()), n.load(Relaxed) + theirs)
            })
            .collect();
        counter(
            &mut out,
            "chitchat_limit_refusals_total",
            "Requests, connections and frames refused, by the limit (config key) that refused them.",
            &borrowed(&refusals),
        );
        counter(
            &mut out,
            "chitchat_accept_errors_total",
            "Failed accepts (out of descriptors, say), each followed by a back-off, by listener.",
            &[
                ("{listener=\"http\"}", readings.http_accept_errors),
                ("{listener=\"ws\"}", self.ws_accept_errors.load(Relaxed)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP chitchat_limit_tracked_addresses Client addresses a limit keeps state for.\n# TYPE chitchat_limit_tracked_addresses gauge"
        );
        for (limit, n) in &readings.tracked {
            let labels = label("limit", limit.label());
            let _ = writeln!(out, "chitchat_limit_tracked_addresses{labels} {n}");
        }
        gauge(
            &mut out,
            "chitchat_history_queue",
            "Messages waiting to be written to the history.",
            count(readings.history_queue),
        );
        counter(
            &mut out,
            "chitchat_bcrypt_jobs_total",
            "Password hashes and checks queued for bcrypt.",
            &[("", self.bcrypt_jobs.load(Relaxed))],
        );
        gauge(
            &mut out,
            "chitchat_bcrypt_queue",
            "Password hashes and checks waiting for a bcrypt thread.",
            count(readings.bcrypt_queue),
        );
        gauge(
            &mut out,
            "chitchat_backend_up",
            "1 while the backend (the database) takes writes, else 0.",
            u64::from(readings.backend_up),
        );
        out.push_str("# HELP chitchat_build_info The running version.\n");
        out.push_str("# TYPE chitchat_build_info gauge\n");
        let version = label("version", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "chitchat_build_info{version} 1");
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

/// A counter's lines, one per `(labels, value)`; `labels` is `""` or `{k="v"}`.
fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in series {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn borrowed(series: &[(String, u64)]) -> Vec<(&str, u64)> {
    series.iter().map(|(l, v)| (l.as_str(), *v)).collect()
}

/// `{name="value"}`, the value escaped as the format requires (backslash, quote, newline).
fn label(name: &str, value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    format!("{{{name}=\"{escaped}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_rendered_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.http_response(200);
        metrics.http_response(200);
        metrics.http_response(429);
        metrics.http_response(42);
        metrics.refused(Limit::Rooms);
        metrics.refused(Limit::BodyTimeout);
        metrics.socket_closed(CloseReason::Flood);
        metrics.events_delivered(3);
        metrics.ws_accept_failed();
        let text = metrics.render(&Readings {
            rooms: 2,
            backend_up: true,
            http_refusals: vec![(Limit::MaxHttpConnections, 5), (Limit::BodyTimeout, 2)],
            http_accept_errors: 7,
            ..Readings::default()
        });
        for line in [
            "# TYPE chitchat_rooms gauge",
            "chitchat_rooms 2",
            "chitchat_backend_up 1",
            "# TYPE chitchat_http_responses_total counter",
            "chitchat_http_responses_total{status=\"200\"} 2",
            "chitchat_http_responses_total{status=\"429\"} 1",
            "chitchat_limit_refusals_total{limit=\"rooms_per_minute\"} 1",
            "chitchat_limit_refusals_total{limit=\"msgs_per_second\"} 0",
            "chitchat_limit_refusals_total{limit=\"max_http_connections\"} 5",
            "chitchat_limit_refusals_total{limit=\"body_timeout_s\"} 3",
            "chitchat_limit_refusals_total{limit=\"request_line\"} 0",
            "# TYPE chitchat_accept_errors_total counter",
            "chitchat_accept_errors_total{listener=\"http\"} 7",
            "chitchat_accept_errors_total{listener=\"ws\"} 1",
            "chitchat_sockets_closed_total{reason=\"flood\"} 1",
            "chitchat_sockets_closed_total{reason=\"backend\"} 0",
            "chitchat_events_delivered_total 3",
            &format!(
                "chitchat_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("status=\"42\""), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("v", "a\"b\\c\nd"), r#"{v="a\"b\\c\nd"}"#);
    }
}
