//! Limits: what keeps one client from taking the server away from everyone else (SPEC,
//! Limits). Every check here is memory work on the caller's thread, done *before* the
//! expensive part it guards (a thread, bcrypt, a broadcast), and every refusal is counted
//! in [`Metrics`].
//!
//! # Who a client is
//! [`Limits::client_addr`], used by both listeners: the peer's address, or, when the peer
//! is one of `trusted_proxies`, the first address of `X-Forwarded-For` that is not, walking
//! from the right (each proxy appends the address it heard from, so only the entries right
//! of the first untrusted one were written by proxies we trust; anything left of it the
//! client may have made up). Limits then key on [`addr_key`]: an IPv4 address, or an IPv6
//! address's /64 network, since one IPv6 host may use any of the 2^64 addresses of its
//! network and would otherwise have 2^64 allowances. An IPv6 /48 (what one site is often
//! given: 65,536 /64s) is counted too, and together holds at most eight times one
//! address's allowance (`net::wide_key`); an IPv4 address stands alone.
//!
//! One exception: `max_http_connections_per_ip` is counted by tiny_http's accept thread,
//! before any request is read, so it knows only the peer address (behind a trusted proxy,
//! the proxy's: set it to 0 there and let the proxy limit its clients).
//!
//! # The rate limits: one instant per key
//! A rate is a token bucket, kept as one [`Instant`] (the generic cell rate algorithm): the
//! time at which the bucket will be full again. Taking a token moves it one `interval`
//! later; a take that would move it more than `burst` intervals ahead of now is refused,
//! and the refusal says how long until it would not be (the `Retry-After`). So `N` per
//! minute means `N` at once, then one more every `60 / N` seconds: a client that waits is
//! served again without having to wait out a whole minute.
//!
//! # Memory: every per-address table is bounded
//! - [`PerAddress`] (failed token requests per address and room, rooms created per
//!   address): an entry whose instant has passed is a full bucket, the same as no entry,
//!   so a sweep drops it. The table is swept when it has doubled since the last sweep, and
//!   it never holds more than [`MAX_TRACKED`](rate::MAX_TRACKED) entries: 16,384 hash
//!   buckets of 41 bytes (rooms) or 49 (token attempts), at most 0.8 MiB. Past that, for
//!   as long as the table stays full of entries younger than a minute, a new address is
//!   served untracked, with one warning, rather than refused: an attacker with 10,000 addresses must not lock
//!   everyone else out. Password guessing stays bounded even then, by bcrypt's queue.
//! - [`AddressCounts`] (WebSocket and HTTP connections, bcrypt jobs per address): one count
//!   per client address (and IPv6 /48) with something in flight, removed with its last
//!   slot: at most as many entries as slots, which `max_connections`,
//!   `max_http_connections` and `bcrypt_queue_len` bound.
//! - [`FrameLimit`]: lives in its socket's session (no lock, no table): one instant, plus
//!   the times of its recent refused frames (at most `flood_close_after`).
//!
//! # Layout
//! - this file: [`Limits`], every limit of the server, built from the configuration;
//! - `crate::net` (a leaf, shared with `config`): who a client is ([`AddrRange`],
//!   `X-Forwarded-For`, [`addr_key`]);
//! - `rate`: token buckets ([`Rate`]), tables of them per address ([`PerAddress`]), a
//!   socket's frame rate ([`FrameLimit`]);
//! - `counts`: what each address has in flight ([`AddressCounts`]);
//! - `connections`: WebSocket connections open, in all and per address ([`Connections`]).

mod connections;
mod counts;
mod rate;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};

use crate::net::{addr_key, any_contains, client_addr, AddrRange};
pub use connections::{ConnectionGuard, Connections};
pub use counts::{AddressCounts, AddressSlot, PeerCounts};
pub use rate::{retry_after_secs, AddressKey, Attempt, FrameLimit, PerAddress, Rate, Verdict};

/// The longest request line, CRLF aside, on either listener: past it 414 (SPEC, Limits).
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// The largest request head (request line, header lines, every CRLF) on either listener:
/// past it 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// The most header lines of a request on either listener: past it 431.
pub const MAX_HEADER_LINES: usize = 100;

/// Every limit of the server, built from the configuration once (one in `State`).
pub struct Limits {
    /// `trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<AddrRange>,
    /// WebSocket connections open.
    pub connections: Arc<Connections>,
    /// Failed token requests per address key and room (`token_attempts_per_minute`).
    token_attempts: Option<PerAddress<(IpAddr, u64)>>,
    /// Rooms created per address key (`rooms_per_minute`).
    room_creations: Option<PerAddress<IpAddr>>,
    /// REST connections open per peer address (`max_http_connections_per_ip`), counted by
    /// tiny_http's accept thread through [`Limits::http_peers`].
    http_connections: Option<Arc<AddressCounts>>,
    /// bcrypt jobs in flight per address (`bcrypt_per_ip`).
    bcrypt_jobs: Option<Arc<AddressCounts>>,
    /// Each socket's frame rate (`msgs_per_second`, `msgs_burst`).
    frame_rate: Option<Rate>,
    /// `flood_close_after`.
    flood_close_after: usize,
    metrics: Arc<Metrics>,
}

impl Limits {
    /// The limits `config` sets, counting refusals in `metrics`.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Limits {
        Limits {
            trusted_proxies: config.trusted_proxies.clone(),
            connections: Arc::new(Connections {
                max_total: config.max_connections,
                open: AtomicUsize::new(0),
                per_address: AddressCounts::new(
                    config.max_connections_per_ip,
                    Limit::MaxConnectionsPerIp,
                    ApiError::new(ErrorKind::TooManyConnections),
                    &metrics,
                ),
                refusing: AtomicBool::new(false),
                metrics: Arc::clone(&metrics),
            }),
            http_connections: AddressCounts::new(
                config.max_http_connections_per_ip,
                Limit::MaxHttpConnectionsPerIp,
                ApiError::new(ErrorKind::TooManyConnections),
                &metrics,
            ),
            bcrypt_jobs: AddressCounts::new(
                config.bcrypt_per_ip,
                Limit::BcryptPerIp,
                ApiError::retry_after(ErrorKind::TooManyAttempts, 1),
                &metrics,
            ),
            token_attempts: Rate::per_minute(config.token_attempts_per_minute)
                .map(|rate| PerAddress::new(rate, "token_attempts_per_minute")),
            room_creations: Rate::per_minute(config.rooms_per_minute)
                .map(|rate| PerAddress::new(rate, "rooms_per_minute")),
            frame_rate: Rate::per_second(config.msgs_per_second, config.msgs_burst),
            flood_close_after: config.flood_close_after,
            metrics,
        }
    }

    /// The client address of a request from `peer`: see the module docs.
    pub fn client_addr<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        client_addr(peer, forwarded_for, &self.trusted_proxies)
    }

    /// Whether `peer` is a trusted proxy, so the client address waits for the headers.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        any_contains(&self.trusted_proxies, peer)
    }

    /// A token request from `client` for room `room_id` that is about to run bcrypt: 429
    /// (602) with `Retry-After` once `token_attempts_per_minute` have failed. The attempt
    /// must be kept if the password was wrong.
    pub fn token_attempt(
        &self,
        client: IpAddr,
        room_id: u64,
        now: Instant,
    ) -> Result<Attempt<'_, (IpAddr, u64)>, ApiError> {
        self.attempt(
            self.token_attempts.as_ref(),
            (addr_key(client), room_id),
            now,
            Limit::TokenAttempts,
        )
    }

    /// A room creation from `client`: 429 (602) with `Retry-After` past `rooms_per_minute`.
    /// The attempt must be kept if the room was created.
    pub fn room_creation(
        &self,
        client: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'_, IpAddr>, ApiError> {
        self.attempt(
            self.room_creations.as_ref(),
            addr_key(client),
            now,
            Limit::Rooms,
        )
    }

    /// A bcrypt job for `client` (`bcrypt_per_ip`): held until the request that may run
    /// bcrypt ends, whatever the outcome; 429 (602, `Retry-After: 1`) when its address has
    /// none to spare. `None` when the limit is off.
    pub fn bcrypt_job(&self, client: IpAddr) -> Result<Option<AddressSlot>, ApiError> {
        self.bcrypt_jobs
            .as_ref()
            .map(|jobs| jobs.take(client))
            .transpose()
    }

    /// The REST listener's per-address connection limit, for tiny_http's accept thread;
    /// `None` when `max_http_connections_per_ip` is 0.
    pub fn http_peers(&self) -> Option<PeerCounts> {
        self.http_connections
            .as_ref()
            .map(|counts| PeerCounts(Arc::clone(counts)))
    }

    fn attempt<'a, K: AddressKey>(
        &self,
        limiter: Option<&'a PerAddress<K>>,
        key: K,
        now: Instant,
        limit: Limit,
    ) -> Result<Attempt<'a, K>, ApiError> {
        let Some(limiter) = limiter else {
            return Ok(Attempt::unlimited());
        };
        limiter.take(key, now).map_err(|wait| {
            self.metrics.refused(limit);
            ApiError::retry_after(ErrorKind::TooManyAttempts, retry_after_secs(wait))
        })
    }

    /// A new socket's frame limit.
    pub fn frame_limit(&self) -> FrameLimit {
        FrameLimit::new(self.frame_rate, self.flood_close_after)
    }

    /// How many keys each per-address table holds now (a `/metrics` gauge, so the bound
    /// can be watched).
    pub fn tracked(&self) -> Vec<(Limit, usize)> {
        vec![
            (Limit::MaxConnectionsPerIp, self.connections.addresses()),
            (
                Limit::MaxHttpConnectionsPerIp,
                self.http_connections
                    .as_ref()
                    .map_or(0, |counts| counts.addresses()),
            ),
            (
                Limit::BcryptPerIp,
                self.bcrypt_jobs
                    .as_ref()
                    .map_or(0, |counts| counts.addresses()),
            ),
            (
                Limit::TokenAttempts,
                self.token_attempts.as_ref().map_or(0, PerAddress::tracked),
            ),
            (
                Limit::Rooms,
                self.room_creations.as_ref().map_or(0, PerAddress::tracked),
            ),
        ]
    }
}
