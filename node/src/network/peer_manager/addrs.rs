//! What an address says about where a peer is: its IP, the subnet that
//! per-subnet limits count, and whether an address may be handed to or
//! accepted from a remote peer (address hygiene).

use ipnet::IpNet;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::net::IpAddr;

/// The IP an address starts with, if it starts with one and does not go
/// through a relay: the IP of a relayed address is the relay's, shared by
/// every peer behind it, and says nothing of where the peer is (the relay
/// limits its circuits itself).
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        return None;
    }
    first_ip(addr)
}

/// The relay's IP of an address that goes through a relay.
pub fn relay_ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| p == Protocol::P2pCircuit) {
        first_ip(addr)
    } else {
        None
    }
}

/// The IP an address starts with, relayed or not.
pub fn first_ip(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// The subnet per-subnet limits count: a /24 for IPv4, a /48 for IPv6
/// (the block one site is usually given).
pub fn subnet_of(ip: IpAddr) -> IpNet {
    let prefix = if ip.is_ipv4() { 24 } else { 48 };
    IpNet::new(ip, prefix)
        .expect("24 and 48 are valid prefix lengths")
        .trunc()
}

/// How far an address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// This host only (loopback), or no host at all (unspecified).
    Host,
    /// One link (link-local).
    Link,
    /// A private network (RFC 1918, CGNAT, unique-local IPv6).
    Private,
    /// Anywhere; also DNS names, which are resolved when dialled.
    Public,
}

/// How far an address reaches; a relayed one as far as its relay's.
pub fn reach(addr: &Multiaddr) -> Reach {
    match first_ip(addr) {
        Some(ip) => reach_of_ip(ip),
        None => Reach::Public,
    }
}

pub fn reach_of_ip(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() || v4.is_unspecified() {
                Reach::Host
            } else if v4.is_link_local() {
                Reach::Link
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Reach::Private
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach_of_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() || v6.is_unspecified() {
                Reach::Host
            } else if first & 0xffc0 == 0xfe80 {
                Reach::Link
            } else if first & 0xfe00 == 0xfc00 {
                Reach::Private
            } else {
                Reach::Public
            }
        }
    }
}

/// Whether an address a peer announced is worth routing to, given where
/// that peer was seen (`seen_at`, the remote address of its connection)
/// and the private networks configured as reachable.
///
/// - Loopback addresses only from a peer on this host: anyone else naming
///   them points the node (and whoever it tells) at its own host.
/// - Link-local addresses never: they mean nothing without an interface.
/// - Private addresses from a peer that is itself on a private network
///   (or this host), or inside a configured network.
/// - Public addresses and DNS names always.
pub fn is_routable_from(addr: &Multiaddr, seen_at: Option<IpAddr>, private: &[IpNet]) -> bool {
    let seen = seen_at.map_or(Reach::Public, reach_of_ip);
    match reach(addr) {
        Reach::Host => seen == Reach::Host,
        Reach::Link => false,
        Reach::Private => {
            seen <= Reach::Private
                || first_ip(addr).is_some_and(|ip| private.iter().any(|n| n.contains(&ip)))
        }
        Reach::Public => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reach_classifies_the_special_ranges() {
        for (addr, expected) in [
            ("/ip4/127.0.0.1/tcp/1", Reach::Host),
            ("/ip4/0.0.0.0/tcp/1", Reach::Host),
            ("/ip6/::1/tcp/1", Reach::Host),
            ("/ip4/169.254.3.4/tcp/1", Reach::Link),
            ("/ip6/fe80::1/tcp/1", Reach::Link),
            ("/ip4/10.1.2.3/tcp/1", Reach::Private),
            ("/ip4/192.168.1.1/udp/1/quic-v1", Reach::Private),
            ("/ip4/100.64.0.1/tcp/1", Reach::Private),
            ("/ip6/fd00::1/tcp/1", Reach::Private),
            ("/ip6/::ffff:10.0.0.1/tcp/1", Reach::Private),
            ("/ip4/8.8.8.8/tcp/1", Reach::Public),
            ("/ip6/2001:db8::1/tcp/1", Reach::Public),
            ("/dns4/example.org/tcp/1", Reach::Public),
            (
                "/ip4/10.1.2.3/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
                Reach::Private,
            ),
        ] {
            assert_eq!(reach(&a(addr)), expected, "{addr}");
        }
    }

    #[test]
    fn relayed_addresses_have_no_peer_ip() {
        let relayed = a("/ip4/10.1.2.3/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit");
        assert_eq!(ip_of(&relayed), None);
        assert_eq!(relay_ip_of(&relayed), ip("10.1.2.3"));
        assert_eq!(relay_ip_of(&a("/ip4/10.1.2.3/tcp/1")), None);
        assert_eq!(ip_of(&a("/ip4/10.1.2.3/tcp/1")), ip("10.1.2.3"));
        // A relay on this host, named by a remote peer, points nowhere good.
        let local_relay = a("/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit");
        assert!(!is_routable_from(&local_relay, ip("203.0.113.9"), &[]));
    }

    #[test]
    fn announced_addresses_are_judged_by_where_the_peer_was_seen() {
        let private: Vec<IpNet> = vec!["172.16.0.0/12".parse().unwrap()];
        // A remote peer on the internet cannot send us to our own host, to
        // a link, or into a private network we did not name.
        let far = ip("203.0.113.9");
        assert!(!is_routable_from(&a("/ip4/127.0.0.1/tcp/1"), far, &[]));
        assert!(!is_routable_from(&a("/ip4/169.254.1.1/tcp/1"), far, &[]));
        assert!(!is_routable_from(&a("/ip4/10.0.0.1/tcp/1"), far, &[]));
        assert!(is_routable_from(&a("/ip4/172.17.0.1/tcp/1"), far, &private));
        assert!(is_routable_from(&a("/ip4/198.51.100.7/tcp/1"), far, &[]));
        // A peer on a private network may name private addresses, not ours.
        let lan = ip("10.9.0.2");
        assert!(is_routable_from(&a("/ip4/10.9.0.2/tcp/1"), lan, &[]));
        assert!(!is_routable_from(&a("/ip4/127.0.0.1/tcp/1"), lan, &[]));
        // A peer on this host may name anything but link-local.
        let local = ip("127.0.0.1");
        assert!(is_routable_from(&a("/ip4/127.0.0.1/tcp/1"), local, &[]));
        assert!(!is_routable_from(&a("/ip6/fe80::1/tcp/1"), local, &[]));
    }

    #[test]
    fn subnets_group_neighbours() {
        assert_eq!(
            subnet_of("10.1.2.3".parse().unwrap()),
            subnet_of("10.1.2.200".parse().unwrap())
        );
        assert_ne!(
            subnet_of("10.1.2.3".parse().unwrap()),
            subnet_of("10.1.3.3".parse().unwrap())
        );
        assert_eq!(
            subnet_of("2001:db8:1:2::1".parse().unwrap()).to_string(),
            "2001:db8:1::/48"
        );
    }
}
