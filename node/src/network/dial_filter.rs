//! A transport that refuses, address by address, to dial this host or a
//! link-local address outside the exempt networks.
//!
//! The node's own dials never use such addresses (address hygiene keeps
//! them out), but others choose addresses too: hole punching dials what
//! the remote peer reports, Kademlia dials what other peers answer, AutoNAT
//! dials back what a peer asks. Filtering at the transport catches every
//! one, per address: a dial with one bad address among good ones goes on
//! with the good ones (the swarm moves to the next address when one is not
//! supported).

use super::peer_manager::addrs::{first_ip, reach, Reach};
use ipnet::IpNet;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::{Multiaddr, Transport};
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct NoLocalDials<T> {
    inner: T,
    exempt: Vec<IpNet>,
}

impl<T> NoLocalDials<T> {
    pub fn new(inner: T, exempt: Vec<IpNet>) -> Self {
        NoLocalDials { inner, exempt }
    }

    /// Whether `addr` points at this host or a link, outside the exempt
    /// networks (a relayed address by its relay's).
    pub fn refuses(&self, addr: &Multiaddr) -> bool {
        matches!(reach(addr), Reach::Host | Reach::Link)
            && !first_ip(addr).is_some_and(|ip| self.exempt.iter().any(|n| n.contains(&ip)))
    }
}

impl<T: Transport + Unpin> Transport for NoLocalDials<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        if self.refuses(&addr) {
            tracing::debug!(%addr, "refusing to dial this host or a link-local address");
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_refused_unless_exempt() {
        let filter = NoLocalDials::new((), vec!["127.0.0.0/8".parse().unwrap()]);
        let refused = |a: &str| filter.refuses(&a.parse().unwrap());
        assert!(!refused("/ip4/127.0.0.1/tcp/4001"));
        assert!(refused("/ip4/0.0.0.0/udp/4001/quic-v1"));
        assert!(refused("/ip4/169.254.1.1/tcp/4001"));
        assert!(refused("/ip6/::1/tcp/4001"));
        assert!(refused("/ip6/fe80::1/tcp/4001"));
        assert!(!refused("/ip4/10.0.0.7/udp/4001/quic-v1"));
        assert!(!refused("/ip4/203.0.113.7/tcp/4001"));
        assert!(!refused("/dns/example.org/tcp/4001"));
        assert!(refused(
            "/ip4/0.0.0.0/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
        ));
    }
}
