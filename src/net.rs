//! Addresses, a leaf that `config` and `limits` both use. Who a client is: address ranges from the configuration (`trusted_proxies`), the
//! client's address behind trusted proxies (`X-Forwarded-For`, walked from the right), and
//! the key limits count under ([`addr_key`]: an IPv4 address or an IPv6 /64; and
//! [`wide_key`]: an IPv6 /48). See the module docs of `limits` for why.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

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

/// How many times one address's allowance an IPv6 /48 may hold together (SPEC, Limits).
pub const WIDE_FACTOR: usize = 8;

/// The /48 an IPv6 client address is also counted under; `None` for IPv4.
pub fn wide_key(addr: IpAddr) -> Option<IpAddr> {
    match canonical(addr) {
        v6 @ IpAddr::V6(_) => Some(masked(v6, 48)),
        IpAddr::V4(_) => None,
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
        assert_eq!(
            wide_key(ip("2001:db8:1:2:aaaa::1")),
            Some(ip("2001:db8:1::"))
        );
        assert_eq!(wide_key(ip("::ffff:192.0.2.1")), None);
    }
}
