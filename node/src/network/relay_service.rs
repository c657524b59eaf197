//! The circuit relay v2 service, with a fix for libp2p-relay 0.22.
//!
//! libp2p's relay gives relayed connections a dummy handler (no relaying
//! through a relay), but when its advertised status changes it still sends
//! the new status to every connection, and a dummy handler receiving it
//! panics (`unreachable!` in `Either`'s handler). This wrapper knows which
//! connections are relayed and drops those notifications; everything else
//! passes through unchanged.

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::relay;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::task::{Context, Poll};

pub struct RelayService {
    inner: relay::Behaviour,
    relayed: HashSet<ConnectionId>,
}

impl RelayService {
    pub fn new(local: PeerId, config: relay::Config) -> RelayService {
        let mut inner = relay::Behaviour::new(local, config);
        // The node decides when to offer the service (see `nat`), never
        // libp2p from its external addresses: those include relayed ones.
        inner.set_status(Some(relay::Status::Disable));
        RelayService {
            inner,
            relayed: HashSet::new(),
        }
    }

    pub fn set_serving(&mut self, serving: bool) {
        self.inner.set_status(Some(if serving {
            relay::Status::Enable
        } else {
            relay::Status::Disable
        }));
    }
}

impl NetworkBehaviour for RelayService {
    type ConnectionHandler = <relay::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = relay::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if super::nat::is_relayed(local) {
            self.relayed.insert(id);
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if super::nat::is_relayed(addr) {
            self.relayed.insert(id);
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(c) = &event {
            self.relayed.remove(&c.connection_id);
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::NotifyHandler {
                    handler: NotifyHandler::One(id),
                    ..
                }) if self.relayed.contains(&id) => continue,
                other => return other,
            }
        }
    }
}
