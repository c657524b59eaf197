//! Connection lifecycle: dialling by the dial policy, feeding dial outcomes
//! to the per-peer circuit breakers, half-open QUIC trials, and redialling
//! peers whose connections dropped.

use super::backoff::Backoff;
use super::breaker::BreakerState;
use super::dialer::Dialer;
use super::peers::{Duplicate, PeerTable};
use super::{Network, DUPLICATE_CLOSE_DELAY};
use crate::identity::node_id_of;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a connected peer's gossipsub subscriptions may take to arrive
/// before the connection is taken for one that lost them (they normally
/// arrive within a round trip of the connection).
const SUBSCRIPTIONS_GRACE: Duration = Duration::from_secs(15);
/// Reconnections in a row after which a peer whose subscriptions never
/// arrive is left be (it is no agentmesh node, or reconnecting does not
/// cure what is wrong).
const MAX_SUBSCRIPTION_RECONNECTS: u32 = 3;
/// How long such a peer's reconnections are remembered.
const DEAF_MEMORY: Duration = Duration::from_secs(600);

/// The connection lifecycle: who is connected, how to dial and redial,
/// which connections to close.
pub(super) struct Links {
    pub table: PeerTable,
    /// Dial policy, circuit breakers and redials of lost peers.
    pub dialer: Dialer,
    /// QUIC trial dials under way.
    pub trials: HashMap<ConnectionId, PeerId>,
    /// Duplicate connections to close, and when.
    pub closing_duplicates: Vec<(Instant, ConnectionId)>,
    /// Peers reconnected because their gossip subscriptions never arrived:
    /// when last, and how many times in a row.
    pub deaf_peers: HashMap<PeerId, (Instant, u32)>,
    /// Peers disconnected on purpose (wrong network, no Ed25519 key); never
    /// redialled. Cleared when it grows past its bound.
    pub unwanted: HashSet<PeerId>,
    /// When to redial bootstrap and known peers while no peer is connected.
    pub rejoin: Backoff,
    /// When to run the next Kademlia bootstrap: soon while the mesh is
    /// changing, every `bootstrap_interval` once it is stable.
    pub discovery: Backoff,
}

impl Network {
    /// Dials `peer` unless connected or already dialling: QUIC addresses
    /// first, or TCP only while the peer's breaker is open.
    pub(super) fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.dial_with(peer, addrs, true);
    }

    /// Dials `peer` on `addrs`; with `kademlia`, Kademlia may add the
    /// addresses its routing table holds (not for redials, which use
    /// observed addresses only).
    fn dial_with(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, kademlia: bool) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let now = Instant::now();
        let addrs = self.links.dialer.dial_order(peer, addrs, now);
        if addrs.is_empty() && !kademlia {
            return;
        }
        let mut opts = DialOpts::peer_id(peer)
            .addresses(addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing);
        // Behaviours (Kademlia) may add addresses in their own order, QUIC
        // ones included: only when QUIC is allowed, or nothing else is known.
        if kademlia && (addrs.is_empty() || self.links.dialer.allows_quic(peer, now)) {
            opts = opts.extend_addresses_through_behaviour();
        }
        let opts = opts.build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// Remembers a peer we disconnected on purpose, so it is not redialled.
    pub(super) fn mark_unwanted(&mut self, peer: PeerId) {
        const MAX_UNWANTED: usize = 4096;
        if self.links.unwanted.len() >= MAX_UNWANTED {
            self.links.unwanted.clear();
        }
        self.links.unwanted.insert(peer);
    }

    /// Closes the duplicate connections whose delay has passed.
    pub(super) fn close_due_duplicates(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.links.closing_duplicates.retain(|(at, id)| {
            let is_due = *at <= now;
            if is_due {
                due.push(*id);
            }
            !is_due
        });
        for id in due {
            // False if it closed meanwhile; nothing to do then.
            if self.swarm.close_connection(id) {
                tracing::debug!(connection = ?id, "closed a duplicate connection");
            }
        }
    }

    /// Disconnects admitted peers connected for [`SUBSCRIPTIONS_GRACE`]
    /// whose gossipsub subscriptions never arrived. Every node subscribes
    /// to the consensus topic, so such a peer's hello was lost: gossipsub
    /// sends it once, on the first connection, which may be a stale one to
    /// a restarted peer's old process, or a duplicate closed right after.
    /// Without this the peer stays deaf to this node's channels (and this
    /// node to its) for as long as the connection lasts; after a clean
    /// reconnection both ends exchange subscriptions again.
    pub(super) fn reconnect_peers_missing_subscriptions(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(SUBSCRIPTIONS_GRACE) else {
            return;
        };
        let candidates: Vec<PeerId> = self
            .links
            .table
            .identified_before(cutoff)
            .into_iter()
            .filter(|peer| self.membership.is_admitted(peer))
            .collect();
        if candidates.is_empty() && self.links.deaf_peers.is_empty() {
            return;
        }
        let topic = self.consensus.topic().hash();
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let subscribed: HashSet<PeerId> = gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic))
            .map(|(peer, _)| *peer)
            .collect();
        // Not deaf: it does not speak gossipsub at all. (`PeerKind` is not
        // exported; its name is.)
        let without_gossipsub: HashSet<PeerId> = gossipsub
            .peer_protocol()
            .filter(|(_, kind)| kind.as_static_ref() == "Not Supported")
            .map(|(peer, _)| *peer)
            .collect();
        // Cured peers, and peers not seen for a while, start afresh.
        self.links.deaf_peers.retain(|peer, (at, _)| {
            !subscribed.contains(peer) && now.duration_since(*at) < DEAF_MEMORY
        });
        let deaf: Vec<PeerId> = candidates
            .into_iter()
            .filter(|peer| !subscribed.contains(peer) && !without_gossipsub.contains(peer))
            .collect();
        for peer in deaf {
            let (at, reconnects) = self.links.deaf_peers.entry(peer).or_insert((now, 0));
            // Its connections may still be closing from the last time.
            if *reconnects > 0 && now.duration_since(*at) < SUBSCRIPTIONS_GRACE {
                continue;
            }
            if *reconnects >= MAX_SUBSCRIPTION_RECONNECTS {
                if *reconnects == MAX_SUBSCRIPTION_RECONNECTS {
                    tracing::warn!(%peer, "the peer never subscribes to the consensus topic, even after reconnecting; leaving it be");
                    *reconnects += 1;
                }
                continue;
            }
            *at = now;
            *reconnects += 1;
            tracing::info!(%peer, "the peer's gossip subscriptions never arrived; reconnecting to it from scratch");
            self.metrics.subscription_reconnects.inc();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Redials lost peers whose backoff has run out, and starts the QUIC
    /// trials of half-open breakers.
    pub(super) fn dial_due(&mut self, now: Instant) {
        for peer in self.links.dialer.redials_due(now) {
            if !self.swarm.is_connected(&peer) {
                tracing::debug!(%peer, "redialling a lost peer");
                let addrs = self.links.dialer.known_addrs(&peer);
                self.dial_with(peer, addrs, false);
            }
        }
        for peer in self.links.dialer.trials_due(now) {
            // The peer reached us over QUIC: that connection is the trial's
            // answer (QUIC works both ways), and a second one beside it
            // would only be mistaken for a reconnection.
            if self.links.table.has_quic(&peer) {
                let before = self.links.dialer.breaker_state(peer, now).0;
                let after = self.links.dialer.trial_succeeded(peer, now);
                self.on_breaker_change(peer, before, after);
                continue;
            }
            let quic = self.links.dialer.quic_addrs(&peer);
            if quic.is_empty() {
                self.links.dialer.trial_failed(peer, now);
                continue;
            }
            // A trial may run beside an existing TCP connection.
            let opts = DialOpts::peer_id(peer)
                .addresses(quic)
                .condition(PeerCondition::Always)
                .build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%peer, "QUIC trial dial");
                    self.links.trials.insert(id, peer);
                }
                Err(_) => self.links.dialer.trial_failed(peer, now),
            }
        }
    }

    pub(super) fn on_connection_established(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        endpoint: &ConnectedPoint,
        dial_errors: Vec<Multiaddr>,
    ) {
        // Dials of a peer already connected are others' (an AutoNAT
        // dial-back, hole punching; this node's own dials and Kademlia's
        // wait for no connection), apart from QUIC trials.
        let foreign =
            self.links.table.connections(&peer) > 0 && !self.links.trials.contains_key(&id);
        if node_id_of(&peer).is_none() {
            tracing::warn!(%peer, "peer has no Ed25519 identity; disconnecting");
            self.mark_unwanted(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        let now = Instant::now();
        tracing::debug!(%peer, addr = %endpoint.get_remote_address(), "connected");
        self.links.table.connected(peer, id, endpoint);
        // When both ends dial at once they end up with two connections of
        // one transport; both ends agree which one to keep. A QUIC trial
        // dial is not such a race: it is settled below, by the breaker.
        let local = *self.swarm.local_peer_id();
        let duplicate = if self.links.trials.contains_key(&id) {
            None
        } else {
            self.links.table.duplicate_to_close(&peer, &local)
        };
        match duplicate {
            // Not at once: gossipsub sends its subscriptions on a peer's
            // first connection only, and closing that one before they are
            // delivered would leave the peer unaware of them for good.
            Some(Duplicate::Race(duplicate))
                if !self
                    .links
                    .closing_duplicates
                    .iter()
                    .any(|(_, c)| *c == duplicate) =>
            {
                self.links
                    .closing_duplicates
                    .push((now + DUPLICATE_CLOSE_DELAY, duplicate));
            }
            Some(Duplicate::Race(_) | Duplicate::Later) | None => {}
        }
        self.close_relayed_if_direct(peer, now);
        self.links.dialer.connected(peer, now);
        self.links.rejoin.restart(now);
        // Breakers judge direct QUIC, by dials of a peer that was not
        // connected (this node's and Kademlia's) and QUIC trials.
        let ConnectedPoint::Dialer { address, .. } = endpoint else {
            return;
        };
        if endpoint.is_relayed() || foreign {
            return;
        }
        let dial_errors: Vec<Multiaddr> = dial_errors
            .into_iter()
            .filter(|a| !super::nat::is_relayed(a))
            .collect();
        let before = self.links.dialer.breaker_state(peer, now).0;
        let after = self
            .links
            .dialer
            .dial_succeeded(peer, address, &dial_errors, now);
        let was_trial = self.links.trials.remove(&id).is_some();
        self.on_breaker_change(peer, before, after);
        if was_trial
            && matches!(after, BreakerState::HalfOpen { .. })
            && self.links.table.connections(&peer) > 1
        {
            // Trials only test QUIC; the TCP connection stays in use.
            self.swarm.close_connection(id);
        }
    }

    /// A peer reached directly needs no relay: its relayed connections
    /// are closed (after the same delay as duplicates, so that gossip
    /// subscriptions sent on them are delivered first).
    pub(super) fn close_relayed_if_direct(&mut self, peer: PeerId, now: Instant) {
        if self.links.table.direct_connections(&peer) == 0 {
            return;
        }
        for id in self.links.table.relayed_connections(&peer) {
            if !self.links.closing_duplicates.iter().any(|(_, c)| *c == id) {
                tracing::debug!(%peer, "closing a relayed connection: the peer is reached directly");
                self.links
                    .closing_duplicates
                    .push((now + DUPLICATE_CLOSE_DELAY, id));
            }
        }
    }

    pub(super) fn on_connection_closed(&mut self, peer: PeerId, id: ConnectionId, remaining: u32) {
        let dialled = self.links.table.closed(&peer, id).unwrap_or(false);
        if remaining > 0 {
            return;
        }
        // Only members this node chose (dialled) are redialled: a peer
        // that dialled in redials itself, and redialling strangers would
        // let anyone who connects once fill this node's outbound slots.
        if dialled && self.membership.is_admitted(&peer) && !self.links.unwanted.contains(&peer) {
            self.links.dialer.lost(peer, Instant::now());
        } else {
            self.links.dialer.forget(&peer);
        }
        self.forget_dead_relayed_addrs(peer);
        if self.links.table.is_empty() {
            self.links.rejoin.restart(Instant::now());
        }
    }

    /// Cleans a departed peer's Kademlia entry of relayed addresses that
    /// cannot work any more, since Kademlia hands its entries to every peer
    /// that asks (`bench nat` saw newcomers spend their circuit rate on
    /// dozens of departed NATed peers and not reach the live one):
    /// - addresses through this node: the peer's slot here ended with its
    ///   connection;
    /// - all of them, when the peer is known by relayed addresses only (it
    ///   is behind NAT). If it is still up, its relays (it stays connected
    ///   to them) still know it.
    fn forget_dead_relayed_addrs(&mut self, peer: PeerId) {
        let local = *self.swarm.local_peer_id();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let Some(addrs) = kad.kbucket(peer).and_then(|bucket| {
            bucket
                .iter()
                .find(|e| *e.node.key.preimage() == peer)
                .map(|e| e.node.value.iter().cloned().collect::<Vec<_>>())
        }) else {
            return;
        };
        if addrs.iter().all(super::nat::is_relayed) {
            kad.remove_peer(&peer);
            tracing::debug!(%peer, "forgot a departed peer reachable only through relays");
            return;
        }
        for addr in addrs
            .iter()
            .filter(|a| super::dialer::relay_of(a) == Some(local))
        {
            kad.remove_address(&peer, addr);
        }
    }

    pub(super) fn on_dial_error(
        &mut self,
        peer: Option<PeerId>,
        id: ConnectionId,
        error: &DialError,
    ) {
        let now = Instant::now();
        if let Some(peer) = self.links.trials.remove(&id) {
            if matches!(error, DialError::Denied { .. }) {
                // Our own connection limit said no: QUIC was not tried.
                tracing::debug!(%peer, error = ?error, "QUIC trial refused locally; will retry");
                self.links.dialer.trial_withdrawn(peer);
                return;
            }
            tracing::debug!(%peer, error = ?error, "QUIC trial failed");
            let before = self.links.dialer.breaker_state(peer, now).0;
            self.links.dialer.trial_failed(peer, now);
            let after = self.links.dialer.breaker_state(peer, now).0;
            self.on_breaker_change(peer, before, after);
            return;
        }
        let (Some(peer), DialError::Transport(errors)) = (peer, error) else {
            tracing::debug!(?peer, %error, "dial failed");
            return;
        };
        tracing::debug!(%peer, ?errors, "dial failed");
        // See `on_connection_established`: a failed dial of a connected
        // peer was someone else's (a dial-back through a NAT fails by
        // design) and says nothing about QUIC to that peer.
        if self.links.table.connections(&peer) > 0 {
            return;
        }
        let failed: Vec<Multiaddr> = errors
            .iter()
            .map(|(a, _)| a.clone())
            .filter(|a| !super::nat::is_relayed(a))
            .collect();
        let before = self.links.dialer.breaker_state(peer, now).0;
        let after = self.links.dialer.dial_failed(peer, &failed, now);
        self.on_breaker_change(peer, before, after);
    }

    /// Keeps Kademlia's addresses and the open connections in line with a
    /// breaker that just opened or closed.
    fn on_breaker_change(&mut self, peer: PeerId, before: BreakerState, after: BreakerState) {
        let quic = self.links.dialer.quic_addrs(&peer);
        match (before, after) {
            (BreakerState::Closed, BreakerState::Open { .. }) => {
                tracing::info!(%peer, "QUIC to this peer keeps failing; using TCP only (breaker open)");
                // Kademlia's own dials must not try QUIC either.
                for addr in &quic {
                    self.swarm.behaviour_mut().kad.remove_address(&peer, addr);
                }
            }
            (BreakerState::HalfOpen { .. }, BreakerState::Closed) => {
                tracing::info!(%peer, "QUIC works again (breaker closed)");
                for addr in quic {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                }
                // Move the peer back to QUIC: close its other connections.
                if self.links.table.has_quic(&peer) {
                    for id in self.links.table.non_quic_connections(&peer) {
                        self.swarm.close_connection(id);
                    }
                }
            }
            _ => {}
        }
    }
}
