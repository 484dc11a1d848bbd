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
//!   it never holds more than [`MAX_TRACKED`] entries: 16,384 hash buckets of 41 bytes
//!   (rooms) or 49 (token attempts), at most 0.8 MiB. Past that, for as long as the table
//!   stays full of entries younger than a minute, a new address is served untracked, with
//!   one warning, rather than refused: an attacker with 10,000 addresses must not lock
//!   everyone else out. Password guessing stays bounded even then, by bcrypt's queue.
//! - [`Connections`]: one count per client address with a socket open, removed when its
//!   last socket ends: at most `max_connections` entries.
//! - [`FrameLimit`]: lives in its socket's session (no lock, no table): one instant, plus
//!   the times of its recent refused frames (at most `flood_close_after`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};
use crate::sync::lock;

/// The most keys a [`PerAddress`] table holds (see the module docs).
pub const MAX_TRACKED: usize = 10_000;
/// A table is not swept before it holds this many keys.
const SWEEP_MIN: usize = 1024;
/// A full table is swept at most this often, so a flood of new addresses does not scan it
/// on every request.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How far back refused frames count toward `flood_close_after` (SPEC: "within a minute").
pub const FLOOD_WINDOW: Duration = Duration::from_secs(60);

/// A range of addresses from the configuration: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    network: IpAddr,
    prefix: u8,
}

impl AddrRange {
    /// Parses `addr/prefix` or a bare address; host bits are ignored (`127.0.0.1/8` is
    /// `127.0.0.0/8`). `None` if it is neither.
    pub fn parse(text: &str) -> Option<AddrRange> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network = canonical(addr.parse().ok()?);
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => bits,
        };
        if prefix > bits {
            return None;
        }
        Some(AddrRange {
            network: masked(network, prefix),
            prefix,
        })
    }

    /// Whether `addr` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.network.is_ipv4() && masked(addr, self.prefix) == self.network
    }
}

/// `addr` with all but its first `prefix` bits cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// Whether any range of `ranges` holds `addr`.
pub fn any_contains(ranges: &[AddrRange], addr: IpAddr) -> bool {
    ranges.iter().any(|range| range.contains(addr))
}

/// `::ffff:10.0.0.1` (how a dual-stack listener sees an IPv4 peer) as `10.0.0.1`.
fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The client address behind `peer`: see the module docs. `forwarded_for` holds the values
/// of every `X-Forwarded-For` header, in order (several headers are one comma list). An
/// entry that is not an address ends the walk at the last one that was.
pub fn client_addr<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_proxies: &[AddrRange],
) -> IpAddr {
    let peer = canonical(peer);
    if !any_contains(trusted_proxies, peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else {
            return client;
        };
        client = addr;
        if !any_contains(trusted_proxies, addr) {
            return addr;
        }
    }
    // Every hop is a trusted proxy: the farthest one is all we know.
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, with or
/// without a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let addr = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
            inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(canonical(addr))
}

/// What limits count a client address as: an IPv4 address, or an IPv6 address's /64.
pub fn addr_key(addr: IpAddr) -> IpAddr {
    match canonical(addr) {
        v6 @ IpAddr::V6(_) => masked(v6, 64),
        v4 => v4,
    }
}

/// A rate as a token bucket: `burst` at once, then one more every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    interval: Duration,
    burst: u32,
}

impl Rate {
    /// `n` per minute, all `n` at once if need be; `None` for 0 (the limit is off).
    pub fn per_minute(n: usize) -> Option<Rate> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        (n > 0).then(|| Rate {
            interval: Duration::from_secs(60) / n,
            burst: n,
        })
    }

    /// `n` per second with bursts of `burst`; `None` if either is 0 (the limit is off).
    pub fn per_second(n: usize, burst: usize) -> Option<Rate> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let burst = u32::try_from(burst).unwrap_or(u32::MAX);
        (n > 0 && burst > 0).then(|| Rate {
            interval: Duration::from_secs(1) / n,
            burst,
        })
    }

    /// How far ahead of now a bucket's instant may run: `burst` intervals.
    fn window(self) -> Duration {
        self.interval.saturating_mul(self.burst)
    }

    /// Takes a token from the bucket whose instant is `due` (`None`: full): the new
    /// instant, or how long until a token could be taken.
    fn take(self, due: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let next = due.map_or(now, |due| due.max(now)) + self.interval;
        let ahead = next - now;
        if ahead <= self.window() {
            Ok(next)
        } else {
            Err(ahead - self.window())
        }
    }

    /// Puts a taken token back.
    fn give_back(self, due: Instant) -> Instant {
        due.checked_sub(self.interval).unwrap_or(due)
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A rate per key (an address, or an address and a room) for the whole server. Its table
/// is one mutex, held for a hash lookup (and, rarely, a sweep): see the module docs.
pub struct PerAddress<K> {
    rate: Rate,
    /// What the table is for, in the warning when it is full.
    what: &'static str,
    table: Mutex<Table<K>>,
}

struct Table<K> {
    /// Each key's bucket instant. A key whose instant has passed may be dropped.
    due: HashMap<K, Instant>,
    /// Sweep when `due` reaches this many keys.
    sweep_at: usize,
    /// When the table was last swept while full.
    swept_full: Option<Instant>,
    /// Set while the table is full, so the warning is logged once per episode.
    full: bool,
}

impl<K: Hash + Eq + Copy> PerAddress<K> {
    /// A table for `rate`; `what` names it in the log.
    pub fn new(rate: Rate, what: &'static str) -> PerAddress<K> {
        PerAddress {
            rate,
            what,
            table: Mutex::new(Table {
                due: HashMap::new(),
                sweep_at: SWEEP_MIN,
                swept_full: None,
                full: false,
            }),
        }
    }

    /// Takes a token for `key` at `now`: an [`Attempt`] that gives it back when dropped
    /// unless kept, or how long until one could be taken.
    pub fn take(&self, key: K, now: Instant) -> Result<Attempt<'_, K>, Duration> {
        let mut table = lock(&self.table);
        if !table.due.contains_key(&key) && !table.make_room(now) {
            if !table.full {
                table.full = true;
                log::warn!(
                    "{}: {MAX_TRACKED} client addresses tracked; new ones are not limited until old ones expire",
                    self.what
                );
            }
            return Ok(Attempt { taken: None });
        }
        let due = table.due.get(&key).copied();
        let next = self.rate.take(due, now)?;
        table.due.insert(key, next);
        Ok(Attempt {
            taken: Some((self, key)),
        })
    }

    fn give_back(&self, key: K) {
        if let Some(due) = lock(&self.table).due.get_mut(&key) {
            *due = self.rate.give_back(*due);
        }
    }

    /// How many keys the table holds now.
    pub fn tracked(&self) -> usize {
        lock(&self.table).due.len()
    }
}

impl<K: Hash + Eq> Table<K> {
    /// Makes room for one more key: sweeps expired keys if the table has grown enough.
    /// False if it is full of live keys.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.due.len() < self.sweep_at.min(MAX_TRACKED) {
            return true;
        }
        let full = self.due.len() >= MAX_TRACKED;
        if full
            && self
                .swept_full
                .is_some_and(|at| now.saturating_duration_since(at) < FULL_SWEEP_INTERVAL)
        {
            return false;
        }
        self.due.retain(|_, due| *due > now);
        self.sweep_at = (2 * self.due.len()).max(SWEEP_MIN);
        self.swept_full = full.then_some(now);
        let room = self.due.len() < MAX_TRACKED;
        if room {
            self.full = false;
        }
        room
    }
}

/// A token taken from a [`PerAddress`] bucket: given back when dropped, unless
/// [`Attempt::keep`] says it was used (a token request that failed, a room created).
#[must_use = "dropping an attempt gives its token back"]
pub struct Attempt<'a, K: Hash + Eq + Copy> {
    taken: Option<(&'a PerAddress<K>, K)>,
}

impl<K: Hash + Eq + Copy> Attempt<'_, K> {
    /// An attempt no limit counts (the limit is off).
    fn unlimited() -> Self {
        Attempt { taken: None }
    }

    /// Counts the attempt: its token is not given back.
    pub fn keep(mut self) {
        self.taken = None;
    }
}

impl<K: Hash + Eq + Copy> Drop for Attempt<'_, K> {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.taken.take() {
            limiter.give_back(key);
        }
    }
}

/// WebSocket connections open now, in all and per client address (`max_connections`,
/// `max_connections_per_ip`). A socket is counted by a [`ConnectionGuard`] from accept to
/// the end of its thread.
pub struct Connections {
    /// `max_connections`; 0 is no limit.
    max_total: usize,
    /// `max_connections_per_ip`; 0 is no limit (and no table).
    max_per_address: usize,
    open: AtomicUsize,
    /// Open sockets per [`addr_key`]; a key leaves with its last socket. Held for a hash
    /// update only.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Set while `max_connections` refuses, so the warning is logged once per episode.
    refusing: AtomicBool,
    metrics: Arc<Metrics>,
}

/// One open WebSocket connection, counted until dropped.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    /// The address key it is counted under, once known.
    address: Option<IpAddr>,
    /// Set once [`ConnectionGuard::count_address`] has run.
    address_counted: bool,
}

impl Connections {
    /// Counts a new connection (601 past `max_connections`).
    pub fn open(self: &Arc<Self>) -> Result<ConnectionGuard, ApiError> {
        let before = self.open.fetch_add(1, SeqCst);
        if self.max_total > 0 && before >= self.max_total {
            self.open.fetch_sub(1, SeqCst);
            self.metrics.refused(Limit::MaxConnections);
            if !self.refusing.swap(true, SeqCst) {
                log::warn!(
                    "max_connections ({}) WebSocket connections open: refusing new ones",
                    self.max_total
                );
            }
            return Err(ApiError::new(ErrorKind::TooManyConnections));
        }
        if self.refusing.load(SeqCst) && self.refusing.swap(false, SeqCst) {
            log::info!("WebSocket connections below max_connections again");
        }
        Ok(ConnectionGuard {
            connections: Arc::clone(self),
            address: None,
            address_counted: false,
        })
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Client addresses with a connection open (the size of the per-address table).
    pub fn addresses(&self) -> usize {
        lock(&self.per_address).len()
    }
}

impl ConnectionGuard {
    /// Counts the connection against its client address (601 past
    /// `max_connections_per_ip`). Only the first call counts.
    pub fn count_address(&mut self, client: IpAddr) -> Result<(), ApiError> {
        if std::mem::replace(&mut self.address_counted, true) {
            return Ok(());
        }
        let connections = &self.connections;
        if connections.max_per_address == 0 {
            return Ok(());
        }
        let key = addr_key(client);
        let mut per_address = lock(&connections.per_address);
        let count = per_address.entry(key).or_insert(0);
        if *count >= connections.max_per_address {
            drop(per_address);
            connections.metrics.refused(Limit::MaxConnectionsPerIp);
            return Err(ApiError::new(ErrorKind::TooManyConnections));
        }
        *count += 1;
        self.address = Some(key);
        Ok(())
    }

    /// Whether the connection has been counted against its address yet.
    pub fn address_counted(&self) -> bool {
        self.address_counted
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let connections = &self.connections;
        connections.open.fetch_sub(1, SeqCst);
        if let Some(key) = self.address {
            let mut per_address = lock(&connections.per_address);
            if let Some(count) = per_address.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_address.remove(&key);
                }
            }
        }
    }
}

/// What [`FrameLimit::check`] says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Pass,
    /// Drop it and tell the client (603).
    Refuse,
    /// Drop it and close the socket (1008): `flood_close_after` refusals within a minute.
    Close,
}

/// One socket's frame rate (`msgs_per_second`, `msgs_burst`, `flood_close_after`), owned
/// by its session thread: no lock.
#[derive(Debug)]
pub struct FrameLimit {
    rate: Option<Rate>,
    due: Option<Instant>,
    /// `flood_close_after`; 0 never closes.
    close_after: usize,
    /// When the refusals of the last [`FLOOD_WINDOW`] happened, oldest first; at most
    /// `close_after` of them. Allocated at the first refusal only.
    refused: VecDeque<Instant>,
}

impl FrameLimit {
    /// A limit of `rate` frames (`None`: no limit), closing after `close_after` refusals
    /// within [`FLOOD_WINDOW`] (0: never).
    pub fn new(rate: Option<Rate>, close_after: usize) -> FrameLimit {
        FrameLimit {
            rate,
            due: None,
            close_after,
            refused: VecDeque::new(),
        }
    }

    /// Decides on a frame that arrived at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let Some(rate) = self.rate else {
            return Verdict::Pass;
        };
        if let Ok(due) = rate.take(self.due, now) {
            self.due = Some(due);
            return Verdict::Pass;
        }
        if self.close_after == 0 {
            return Verdict::Refuse;
        }
        while self
            .refused
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= FLOOD_WINDOW)
        {
            self.refused.pop_front();
        }
        self.refused.push_back(now);
        if self.refused.len() >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ranges(texts: &[&str]) -> Vec<AddrRange> {
        texts.iter().map(|t| AddrRange::parse(t).unwrap()).collect()
    }

    #[test]
    fn ranges_parse_and_match_like_cidr() {
        let loopback = AddrRange::parse("127.0.0.1/8").unwrap();
        assert!(loopback.contains(ip("127.200.0.9")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")));
        assert!(!loopback.contains(ip("128.0.0.1")));
        assert!(!loopback.contains(ip("::1")));
        let one = AddrRange::parse("10.1.2.3").unwrap();
        assert!(one.contains(ip("10.1.2.3")) && !one.contains(ip("10.1.2.4")));
        assert!(AddrRange::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("8.8.8.8")));
        assert!(AddrRange::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(AddrRange::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:ffff::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "host",
        ] {
            assert_eq!(AddrRange::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let xff = ["203.0.113.7, 10.0.0.2"];
        assert_eq!(client_addr(ip("192.0.2.1"), xff, &trusted), ip("192.0.2.1"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), xff, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(client_addr(ip("10.0.0.1"), xff, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // The client put a fake address first; the first untrusted from the right is real.
        let hops = ["6.6.6.6, 198.51.100.4", "10.9.9.9"];
        assert_eq!(client_addr(peer, hops, &trusted), ip("198.51.100.4"));
        assert_eq!(
            client_addr(peer, ["[2001:db8::5]:443"], &trusted),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_addr(peer, ["198.51.100.4:5000"], &trusted),
            ip("198.51.100.4")
        );
        // Garbage stops the walk at the last address known; all trusted: the farthest.
        assert_eq!(
            client_addr(peer, ["1.1.1.1, junk, 10.0.0.3"], &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(client_addr(peer, ["10.0.0.7"], &trusted), ip("10.0.0.7"));
        assert_eq!(client_addr(peer, [], &trusted), peer);
    }

    #[test]
    fn ipv6_addresses_are_limited_by_their_64_network() {
        assert_eq!(addr_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(addr_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_interval() {
        let rate = Rate::per_second(20, 40).unwrap();
        let start = Instant::now();
        let mut due = None;
        for _ in 0..40 {
            due = Some(rate.take(due, start).unwrap());
        }
        let wait = rate.take(due, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(50));
        assert!(rate.take(due, start + wait).is_ok());
        // A second later, 20 more.
        let later = start + Duration::from_secs(1);
        let mut due = Some(rate.take(due, start + wait).unwrap());
        for _ in 0..19 {
            due = Some(rate.take(due, later).unwrap());
        }
        assert!(rate.take(due, later).is_err());
        assert_eq!(Rate::per_second(0, 40), None);
        assert_eq!(Rate::per_second(20, 0), None);
        assert_eq!(Rate::per_minute(0), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(6000)), 6);
        assert_eq!(retry_after_secs(Duration::from_millis(6001)), 7);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn per_address_refuses_past_the_rate_with_the_wait_and_resets() {
        let limiter = PerAddress::new(Rate::per_minute(10).unwrap(), "test");
        let start = Instant::now();
        for _ in 0..10 {
            limiter.take(ip("192.0.2.1"), start).unwrap().keep();
        }
        let wait = limiter.take(ip("192.0.2.1"), start).err().unwrap();
        assert_eq!(wait, Duration::from_secs(6));
        // Another address is not affected.
        limiter.take(ip("192.0.2.2"), start).unwrap().keep();
        // Six seconds on, one more; a minute on, ten more.
        limiter.take(ip("192.0.2.1"), start + wait).unwrap().keep();
        assert!(limiter.take(ip("192.0.2.1"), start + wait).is_err());
        let minute = start + Duration::from_secs(66);
        for _ in 0..10 {
            limiter.take(ip("192.0.2.1"), minute).unwrap().keep();
        }
    }

    #[test]
    fn an_attempt_not_kept_gives_its_token_back() {
        let limiter = PerAddress::new(Rate::per_minute(2).unwrap(), "test");
        let now = Instant::now();
        for _ in 0..10 {
            let attempt = limiter.take(ip("192.0.2.1"), now).unwrap();
            drop(attempt);
        }
        limiter.take(ip("192.0.2.1"), now).unwrap().keep();
        limiter.take(ip("192.0.2.1"), now).unwrap().keep();
        assert!(limiter.take(ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn per_address_tables_are_swept_and_bounded() {
        let limiter = PerAddress::new(Rate::per_minute(1).unwrap(), "test");
        let now = Instant::now();
        let addr = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..5000 {
            limiter.take(addr(n), now).unwrap().keep();
        }
        // A minute later those 5,000 are full buckets again: the sweep at 8,192 keys drops
        // them, so 3,200 new addresses leave 3,200 keys, not 8,200.
        let later = now + Duration::from_secs(61);
        for n in 5000..8200 {
            limiter.take(addr(n), later).unwrap().keep();
        }
        assert_eq!(limiter.tracked(), 3200);
        // Full of live entries: new addresses are served, untracked, never refused.
        for n in 0..2 * MAX_TRACKED as u32 {
            limiter.take(addr(100_000 + n), later).unwrap().keep();
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED);
    }

    /// The figure in the module docs: a table of `MAX_TRACKED` keys has 16,384 buckets,
    /// each an entry and a control byte.
    #[test]
    fn a_full_table_takes_the_memory_the_docs_say() {
        let buckets = (MAX_TRACKED * 8 / 7).next_power_of_two();
        let rooms = std::mem::size_of::<(IpAddr, Instant)>() + 1;
        let tokens = std::mem::size_of::<((IpAddr, u64), Instant)>() + 1;
        assert_eq!((buckets, rooms, tokens), (16_384, 41, 49));
        assert!(buckets * tokens < 800 * 1024);
    }

    #[test]
    fn frames_past_the_burst_are_refused_and_a_flood_closes() {
        let mut frames = FrameLimit::new(Rate::per_second(20, 40), 3);
        let now = Instant::now();
        for _ in 0..40 {
            assert_eq!(frames.check(now), Verdict::Pass);
        }
        assert_eq!(frames.check(now), Verdict::Refuse);
        assert_eq!(frames.check(now), Verdict::Refuse);
        // Refusals older than a minute do not count toward the close.
        let later = now + FLOOD_WINDOW;
        assert_eq!(frames.check(later), Verdict::Pass);
        for _ in 0..39 {
            frames.check(later);
        }
        assert_eq!(frames.check(later), Verdict::Refuse);
        assert_eq!(frames.check(later), Verdict::Refuse);
        assert_eq!(frames.check(later), Verdict::Close);
        let mut unlimited = FrameLimit::new(None, 3);
        assert!((0..1000).all(|_| unlimited.check(now) == Verdict::Pass));
    }
}
