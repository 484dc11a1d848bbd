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
//! network and would otherwise have 2^64 allowances.
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
//! - [`Connections`]: one count per client address with a socket open, removed when its
//!   last socket ends: at most `max_connections` entries.
//! - [`FrameLimit`]: lives in its socket's session (no lock, no table): one instant, plus
//!   the times of its recent refused frames (at most `flood_close_after`).
//!
//! # Layout
//! - this file: [`Limits`], every limit of the server, built from the configuration;
//! - `addr`: who a client is ([`AddrRange`], `X-Forwarded-For`, [`addr_key`]);
//! - `rate`: token buckets ([`Rate`]), tables of them per address ([`PerAddress`]), a
//!   socket's frame rate ([`FrameLimit`]);
//! - `connections`: connections open, in all and per address ([`Connections`]).

mod addr;
mod connections;
mod rate;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};

pub use addr::{addr_key, any_contains, client_addr, AddrRange};
pub use connections::{ConnectionGuard, Connections};
pub use rate::{retry_after_secs, Attempt, FrameLimit, PerAddress, Rate, Verdict};

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
                max_per_address: config.max_connections_per_ip,
                open: AtomicUsize::new(0),
                per_address: Mutex::new(HashMap::new()),
                refusing: AtomicBool::new(false),
                metrics: Arc::clone(&metrics),
            }),
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

    fn attempt<'a, K: Hash + Eq + Copy>(
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
