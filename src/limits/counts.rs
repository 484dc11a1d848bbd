//! Counting what each client address has in flight (WebSocket connections, HTTP
//! connections, bcrypt jobs): [`AddressCounts`], and the [`AddressSlot`] that holds one
//! count until it is dropped, however the request or connection ends.
//!
//! A count is kept per [`addr_key`] (an IPv4 address, or an IPv6 /64), and for an IPv6
//! client also per /48 ([`wide_key`]), which together may hold at most [`WIDE_FACTOR`]
//! times one key's allowance: a host given a /48 has 65,536 /64s, and would otherwise have
//! 65,536 allowances (100 WebSockets per /64 filled `max_connections` from one /48).
//!
//! Memory: an entry per key and per /48 with something in flight, removed with its last
//! slot, so the tables hold at most as many entries as there are slots (each bounded by a
//! total limit: `max_connections`, `max_http_connections`, `bcrypt_queue_len`).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::error::ApiError;
use crate::metrics::{Limit, Metrics};
use crate::sync::lock;

use crate::net::{addr_key, wide_key, WIDE_FACTOR};

/// How many things each client address has in flight, and the most it may have.
pub struct AddressCounts {
    /// The most per [`addr_key`] (above 0: a limit of 0 builds no `AddressCounts`).
    max: usize,
    /// Counted in `/metrics` at each refusal.
    limit: Limit,
    /// What a refused client is told.
    refusal: ApiError,
    metrics: Arc<Metrics>,
    /// Held for a hash update only.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// In flight per [`addr_key`].
    per_key: HashMap<IpAddr, usize>,
    /// In flight per IPv6 /48.
    per_wide: HashMap<IpAddr, usize>,
}

/// One thing in flight for a client address, counted until dropped.
pub struct AddressSlot {
    counts: Arc<AddressCounts>,
    key: IpAddr,
    wide: Option<IpAddr>,
}

impl AddressCounts {
    /// Counts of at most `max` per address (and `WIDE_FACTOR * max` per /48); a refusal is
    /// `refusal`, counted under `limit`. `None` for a `max` of 0: the limit is off.
    pub fn new(
        max: usize,
        limit: Limit,
        refusal: ApiError,
        metrics: &Arc<Metrics>,
    ) -> Option<Arc<AddressCounts>> {
        (max > 0).then(|| {
            Arc::new(AddressCounts {
                max,
                limit,
                refusal,
                metrics: Arc::clone(metrics),
                counts: Mutex::new(Counts::default()),
            })
        })
    }

    /// A slot for `client`, or the refusal if its address (or its /48) has none to spare.
    pub fn take(self: &Arc<Self>, client: IpAddr) -> Result<AddressSlot, ApiError> {
        let (key, wide) = (addr_key(client), wide_key(client));
        let mut counts = lock(&self.counts);
        let of_key = counts.per_key.get(&key).copied().unwrap_or(0);
        let of_wide = wide.and_then(|w| counts.per_wide.get(&w).copied());
        let wide_max = self.max.saturating_mul(WIDE_FACTOR);
        if of_key >= self.max || of_wide.is_some_and(|n| n >= wide_max) {
            drop(counts);
            self.metrics.refused(self.limit);
            return Err(self.refusal.clone());
        }
        *counts.per_key.entry(key).or_insert(0) += 1;
        if let Some(wide) = wide {
            *counts.per_wide.entry(wide).or_insert(0) += 1;
        }
        Ok(AddressSlot {
            counts: Arc::clone(self),
            key,
            wide,
        })
    }

    /// Client addresses with something in flight (a `/metrics` gauge).
    pub fn addresses(&self) -> usize {
        lock(&self.counts).per_key.len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts.counts);
        release(&mut counts.per_key, self.key);
        if let Some(wide) = self.wide {
            release(&mut counts.per_wide, wide);
        }
    }
}

/// One less for `key`; a key leaves the table with its last one.
fn release(table: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(count) = table.get_mut(&key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            table.remove(&key);
        }
    }
}

/// The REST listener's per-address limit (`max_http_connections_per_ip`), asked by
/// tiny_http's accept thread for each new connection: it knows only the peer's address,
/// so behind a trusted proxy every client counts as the proxy (docs/limits.md).
pub struct PeerCounts(pub Arc<AddressCounts>);

impl tiny_http::PeerLimit for PeerCounts {
    fn admit(&self, peer: IpAddr) -> Option<tiny_http::PeerSlot> {
        let slot = self.0.take(peer).ok()?;
        Some(Box::new(slot))
    }
}

impl fmt::Debug for PeerCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerCounts({})", self.0.limit.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn counts(max: usize) -> Arc<AddressCounts> {
        let refusal = ApiError::new(ErrorKind::TooManyConnections);
        let metrics = Arc::new(Metrics::default());
        AddressCounts::new(max, Limit::MaxHttpConnectionsPerIp, refusal, &metrics).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_holds_at_most_max_and_a_dropped_slot_frees_one() {
        let counts = counts(2);
        let first = counts.take(ip("192.0.2.1")).unwrap();
        let _second = counts.take(ip("192.0.2.1")).unwrap();
        let refused = counts.take(ip("192.0.2.1")).err().unwrap();
        assert_eq!(refused.kind, ErrorKind::TooManyConnections);
        // Another address is not affected; one freed slot lets the first in again.
        let _other = counts.take(ip("192.0.2.2")).unwrap();
        drop(first);
        let _again = counts.take(ip("192.0.2.1")).unwrap();
        assert_eq!(counts.addresses(), 2);
        assert!(AddressCounts::new(
            0,
            Limit::BcryptPerIp,
            refused,
            &Arc::new(Metrics::default())
        )
        .is_none());
    }

    #[test]
    fn an_ipv6_64_counts_as_one_address() {
        let counts = counts(2);
        let _a = counts.take(ip("2001:db8:1:2::1")).unwrap();
        let _b = counts.take(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(counts.take(ip("2001:db8:1:2::3")).is_err());
    }

    /// SPEC, Limits: a /48 together holds at most 8 times one address's allowance.
    #[test]
    fn an_ipv6_48_holds_at_most_eight_allowances() {
        let counts = counts(2);
        let slots: Vec<AddressSlot> = (0..8u16)
            .flat_map(|net| {
                let addr = ip(&format!("2001:db8:1:{net:x}::1"));
                [counts.take(addr).unwrap(), counts.take(addr).unwrap()]
            })
            .collect();
        assert!(counts.take(ip("2001:db8:1:99::1")).is_err());
        // Another /48 is not affected, and a freed slot is free for any /64 of the /48.
        let _elsewhere = counts.take(ip("2001:db8:2::1")).unwrap();
        drop(slots);
        let _again = counts.take(ip("2001:db8:1:99::1")).unwrap();
        assert_eq!(counts.addresses(), 2);
    }
}
