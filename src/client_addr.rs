//! Which client an HTTP request or WebSocket comes from, for the limits
//! keyed by address. Plain functions, unit- and property-tested.
//!
//! Behind a proxy (`TRUST_FORWARDED_FOR=true`), the client's address is the
//! rightmost `X-Forwarded-For` entry that is not one of `TRUSTED_PROXIES`:
//! every proxy appends the address it received the request from (nginx's
//! `$proxy_add_x_forwarded_for`), so entries to the right of the client's
//! were written by trusted proxies, and entries to its left were written by
//! the client itself and prove nothing. A peer that is not a trusted proxy
//! is the client, whatever it claims.
//!
//! IPv6 clients are keyed by their /64: one subscriber usually holds a whole
//! /64, so keying single addresses would hand out 2^64 buckets.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` entries are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Loopback only (`127.0.0.0/8`, `::1`): nginx on the same host.
    pub fn loopback() -> Self {
        TrustedProxies(vec![
            IpNet::V4("127.0.0.0/8".parse().expect("a valid network")),
            IpNet::V6("::1/128".parse().expect("a valid network")),
        ])
    }

    /// A comma-separated list of addresses and networks
    /// (`10.0.0.0/8, 192.168.1.7, fd00::/8`).
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not an IP address or network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client's address. `forwarded` holds the `X-Forwarded-For` header
/// values in the order they appear; `trusted` is `None` unless
/// `TRUST_FORWARDED_FOR` is set.
pub fn client_address<'a>(
    forwarded: impl IntoIterator<Item = &'a str>,
    peer: Option<IpAddr>,
    trusted: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let peer = peer.map(canonical);
    let Some(trusted) = trusted else {
        return peer;
    };
    if !peer.is_some_and(|p| trusted.contains(p)) {
        return peer; // not through a proxy we believe
    }
    let entries: Vec<&str> = forwarded
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        let Ok(ip) = entry.parse::<IpAddr>().map(canonical) else {
            // A hop a trusted proxy wrote that is not an address: the chain
            // cannot be followed further; the last trusted hop is the client.
            return peer;
        };
        if !trusted.contains(ip) {
            return Some(ip);
        }
    }
    // Every hop is a trusted proxy (a request from the proxy's own host).
    entries
        .first()
        .and_then(|e| e.parse().ok())
        .map(canonical)
        .or(peer)
}

/// What limits are keyed by: the address itself for IPv4, its /64 for IPv6.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// An IPv4 address written as IPv6 (`::ffff:1.2.3.4`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn behind_nginx(xff: &str) -> Option<IpAddr> {
        client_address(
            [xff],
            Some(ip("127.0.0.1")),
            Some(&TrustedProxies::loopback()),
        )
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        assert_eq!(behind_nginx("203.0.113.9"), Some(ip("203.0.113.9")));
        // Forged entries to the left change nothing.
        assert_eq!(
            behind_nginx("1.2.3.4, 5.6.7.8, 203.0.113.9"),
            Some(ip("203.0.113.9"))
        );
        // Trusted hops on the right are skipped.
        assert_eq!(
            behind_nginx("1.2.3.4, 203.0.113.9, 127.0.0.1"),
            Some(ip("203.0.113.9"))
        );
        // Several header lines are one list, in order.
        let trusted = TrustedProxies::loopback();
        assert_eq!(
            client_address(["1.1.1.1", "203.0.113.9"], Some(ip("::1")), Some(&trusted)),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn without_trust_or_without_a_trusted_peer_the_peer_is_the_client() {
        let peer = Some(ip("198.51.100.7"));
        assert_eq!(client_address(["1.2.3.4"], peer, None), peer);
        let trusted = TrustedProxies::loopback();
        assert_eq!(client_address(["1.2.3.4"], peer, Some(&trusted)), peer);
    }

    #[test]
    fn odd_chains_fall_back_to_what_is_known() {
        // No header: the proxy's host itself.
        assert_eq!(behind_nginx(""), Some(ip("127.0.0.1")));
        // Garbage written right of the client: the chain stops there.
        assert_eq!(behind_nginx("203.0.113.9, bogus"), Some(ip("127.0.0.1")));
        // Only trusted hops: the leftmost.
        assert_eq!(behind_nginx("127.0.0.5, 127.0.0.1"), Some(ip("127.0.0.5")));
    }

    #[test]
    fn proxies_parse_as_networks_or_addresses() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7 ,fd00::/8").unwrap();
        assert!(t.contains(ip("10.9.8.7")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd00::1")));
        assert!(t.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nginx").is_err());
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies(vec![]));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(limit_key(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(limit_key(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
    }

    proptest! {
        /// Whatever a client writes into the header itself, behind a proxy
        /// that appends the address it saw, the key is that address.
        #[test]
        fn forged_entries_never_change_the_client(
            forged in prop::collection::vec(any::<std::net::Ipv4Addr>(), 0..6),
            client in any::<std::net::Ipv4Addr>()
                .prop_filter("not loopback", |a| !a.is_loopback()),
        ) {
            let mut chain: Vec<String> = forged.iter().map(|a| a.to_string()).collect();
            chain.push(client.to_string());
            let header = chain.join(", ");
            prop_assert_eq!(behind_nginx(&header), Some(IpAddr::V4(client)));
        }
    }
}
