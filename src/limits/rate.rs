//! The rate limits: a token bucket kept as one instant ([`Rate`]), the bounded table of
//! buckets per address ([`PerAddress`]) and one socket's frame rate ([`FrameLimit`]). See
//! the module docs of `limits` for the algorithm and the memory bounds.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

use crate::net::{wide_key, WIDE_FACTOR};

/// The most keys a [`PerAddress`] table holds (see the module docs).
pub const MAX_TRACKED: usize = 10_000;
/// A table is not swept before it holds this many keys.
const SWEEP_MIN: usize = 1024;
/// A full table is swept at most this often, so a flood of new addresses does not scan it
/// on every request.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How far back refused frames count toward `flood_close_after` (SPEC: "within a minute").
pub const FLOOD_WINDOW: Duration = Duration::from_secs(60);

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

    /// `factor` times this rate: `factor` times the burst, refilled `factor` times faster.
    fn times(self, factor: u32) -> Rate {
        Rate {
            interval: self.interval / factor,
            burst: self.burst.saturating_mul(factor),
        }
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

/// What a [`PerAddress`] table is keyed by: an address key, or an address key and a room.
pub trait AddressKey: Hash + Eq + Copy {
    /// The key of the IPv6 /48 this one is also counted under; `None` for IPv4.
    fn wide(self) -> Option<Self>;
}

impl AddressKey for IpAddr {
    fn wide(self) -> Option<Self> {
        wide_key(self)
    }
}

impl AddressKey for (IpAddr, u64) {
    fn wide(self) -> Option<Self> {
        wide_key(self.0).map(|wide| (wide, self.1))
    }
}

/// A rate per key (an address, or an address and a room) for the whole server, and eight
/// times that rate per IPv6 /48 (SPEC, Limits). Its tables are one mutex, held for a hash
/// lookup (and, rarely, a sweep): see the module docs.
pub struct PerAddress<K> {
    rate: Rate,
    /// What the table is for, in the warning when it is full.
    what: &'static str,
    /// Per key, then per /48 (at `rate` times `WIDE_FACTOR`).
    tables: Mutex<[Table<K>; 2]>,
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

impl<K: AddressKey> PerAddress<K> {
    /// A table for `rate`; `what` names it in the log.
    pub fn new(rate: Rate, what: &'static str) -> PerAddress<K> {
        PerAddress {
            rate,
            what,
            tables: Mutex::new([Table::new(), Table::new()]),
        }
    }

    /// The rate of each table: per key, per /48.
    fn rates(&self) -> [Rate; 2] {
        [self.rate, self.rate.times(WIDE_FACTOR as u32)]
    }

    /// Takes a token for `key` at `now`, and one for its /48: an [`Attempt`] that gives
    /// them back when dropped unless kept, or how long until both could be taken.
    pub fn take(&self, key: K, now: Instant) -> Result<Attempt<'_, K>, Duration> {
        let [rate, wide_rate] = self.rates();
        let mut tables = lock(&self.tables);
        let [narrow, wide] = &mut *tables;
        narrow.take(key, rate, now, self.what)?;
        if let Some(wide_key) = key.wide() {
            if let Err(wait) = wide.take(wide_key, wide_rate, now, self.what) {
                narrow.give_back(key, rate);
                return Err(wait);
            }
        }
        Ok(Attempt {
            taken: Some((self, key)),
        })
    }

    fn give_back(&self, key: K) {
        let [rate, wide_rate] = self.rates();
        let mut tables = lock(&self.tables);
        let [narrow, wide] = &mut *tables;
        narrow.give_back(key, rate);
        if let Some(wide_key) = key.wide() {
            wide.give_back(wide_key, wide_rate);
        }
    }

    /// How many keys the table holds now.
    pub fn tracked(&self) -> usize {
        lock(&self.tables)[0].due.len()
    }
}

impl<K: Hash + Eq> Table<K> {
    fn new() -> Table<K> {
        Table {
            due: HashMap::new(),
            sweep_at: SWEEP_MIN,
            swept_full: None,
            full: false,
        }
    }

    /// Takes a token for `key` at `now`, or says how long until one could be taken. A
    /// new key in a table full of live ones is served untracked (see the module docs).
    fn take(&mut self, key: K, rate: Rate, now: Instant, what: &str) -> Result<(), Duration> {
        if !self.due.contains_key(&key) && !self.make_room(now) {
            if !self.full {
                self.full = true;
                log::warn!(
                    "{what}: {MAX_TRACKED} client addresses tracked; new ones are not limited until old ones expire"
                );
            }
            return Ok(());
        }
        let next = rate.take(self.due.get(&key).copied(), now)?;
        self.due.insert(key, next);
        Ok(())
    }

    /// Puts a token taken for `key` back.
    fn give_back(&mut self, key: K, rate: Rate) {
        if let Some(due) = self.due.get_mut(&key) {
            *due = rate.give_back(*due);
        }
    }

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
pub struct Attempt<'a, K: AddressKey> {
    taken: Option<(&'a PerAddress<K>, K)>,
}

impl<K: AddressKey> Attempt<'_, K> {
    /// An attempt no limit counts (the limit is off).
    pub(super) fn unlimited() -> Self {
        Attempt { taken: None }
    }

    /// Counts the attempt: its token is not given back.
    pub fn keep(mut self) {
        self.taken = None;
    }
}

impl<K: AddressKey> Drop for Attempt<'_, K> {
    fn drop(&mut self) {
        if let Some((limiter, key)) = self.taken.take() {
            limiter.give_back(key);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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

    /// SPEC, Limits: a /48 together gets at most eight times one address's allowance.
    #[test]
    fn an_ipv6_48_gets_eight_times_one_allowance() {
        let limiter = PerAddress::new(Rate::per_minute(2).unwrap(), "test");
        let now = Instant::now();
        for net in 0..8 {
            for _ in 0..2 {
                let key = ip(&format!("2001:db8:7:{net:x}::"));
                limiter.take(key, now).unwrap().keep();
            }
        }
        let wait = limiter.take(ip("2001:db8:7:ff::"), now).err().unwrap();
        assert_eq!(wait, Duration::from_millis(3750));
        // Refused by its /48, a /64 keeps its own token; another /48 is not affected.
        limiter.take(ip("2001:db8:8::"), now).unwrap().keep();
        let later = now + wait;
        limiter.take(ip("2001:db8:7:ff::"), later).unwrap().keep();
        limiter
            .take(ip("2001:db8:7:ff::"), later + wait)
            .unwrap()
            .keep();
        assert!(limiter.take(ip("2001:db8:7:ff::"), later + wait).is_err());
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
