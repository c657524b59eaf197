//! Membership: in a network with an authority, a peer takes part only after
//! proving, right after connecting, that it holds a certificate for its own
//! peer id (the handshake below). Until then nothing it sends is accepted:
//! its gossip is held (and accepted or rejected with the verdict), its
//! requests are refused, and the consensus and pattern services do not see
//! it as a peer. Frames and vertices carry their author's certificate, so
//! scopes are checked for authors this node never met.

use super::{now_ms, Network};
use crate::config::Settings;
use crate::identity::node_id_of;
use agentmesh_protocol::membership::{
    verify_certificate, CertificateError, Hello, HelloReply, Verified,
};
use agentmesh_protocol::{NodeId, Vertex};
use anyhow::{bail, Context};
use libp2p::request_response::{self, ResponseChannel};
use libp2p::{gossipsub, PeerId};
use lru::LruCache;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a vertex's author may not propose.
#[derive(Debug, thiserror::Error)]
pub enum ProposerRefused {
    #[error("author {0} may not propose vertices")]
    NoScope(NodeId),
    #[error("author {0} is not a member: {1}")]
    NotAMember(NodeId, MembershipError),
}

/// Certificates of authors met through frames and vertices, verified once.
const KNOWN_CERTIFICATES: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

/// Gossip held per peer while its handshake is under way, in messages and
/// in bytes. More is ignored, and lost: gossipsub's duplicate cache then
/// drops other copies of it (at worst a new member's first frames). A
/// stranger never spends more of this node's memory than this.
const HELD_PER_PEER: usize = 512;
const HELD_BYTES_PER_PEER: usize = 1 << 20;
/// Bytes held for all pending peers together.
const HELD_BYTES_TOTAL: usize = 16 << 20;
/// A refused peer's connections are denied this long (it may come back
/// with a certificate after that), in memory only...
const REFUSED_COOL_OFF: Duration = Duration::from_secs(60);
/// Longer than any honest membership handshake takes (a request and its
/// answer on a fresh connection: milliseconds).
const HONEST_HANDSHAKE_BOUND: Duration = Duration::from_secs(1);
/// How long a stranger turned away (or displaced) for want of a handshake
/// place may not reconnect.
const TURNED_AWAY_COOL_OFF: Duration = Duration::from_secs(1);

/// Whether a refusal counts against the peer's address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strike {
    Yes,
    No,
}
/// ...for at most this many peers at once (the oldest are let go first:
/// a Sybil's throwaway ids cost it a handshake each, never this node
/// unbounded memory).
const MAX_COOLING: NonZeroUsize = NonZeroUsize::new(4096).unwrap();

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no membership certificate presented")]
    Missing,
    #[error(transparent)]
    Certificate(#[from] CertificateError),
}

struct Known {
    bytes: Vec<u8>,
    verified: Arc<Verified>,
}

struct Pending {
    since: Instant,
    held: Vec<(gossipsub::MessageId, gossipsub::Message)>,
    held_bytes: usize,
    /// Where it says it listens (from identify), and whether it serves
    /// Kademlia: routed only once it is admitted.
    identified: Option<Identified>,
}

/// What identify told about a peer, kept until it may be routed to.
pub struct Identified {
    pub addrs: Vec<libp2p::Multiaddr>,
    /// The IP the peer was seen connecting from.
    pub seen_at: Option<std::net::IpAddr>,
    pub serves_kad: bool,
    /// It offers circuit relay service.
    pub serves_relay: bool,
    /// The IP it sees this node at (directly connected only).
    pub sees_us_at: Option<std::net::IpAddr>,
    /// This identify came over a connection through a relay.
    pub via_relay: bool,
}

pub struct Membership {
    authority: Option<NodeId>,
    own: Option<(Vec<u8>, Arc<Verified>)>,
    known: LruCache<NodeId, Known>,
    /// Peers that proved membership, with their scopes (`None` in an open
    /// network: no scope applies).
    admitted: HashMap<PeerId, Option<Arc<Verified>>>,
    pending: HashMap<PeerId, Pending>,
    /// Bytes held over all pending peers.
    held_bytes: usize,
    /// Refused peers blocked until the given instant.
    cooling: LruCache<PeerId, Instant>,
    timeout: Duration,
    pub refused: u64,
    /// Newcomers turned away because every handshake place was taken.
    pub turned_away: u64,
    /// Milliseconds from connection to admission, for the benchmark and
    /// `/metrics`.
    pub last_handshake_ms: Option<f64>,
}

impl Membership {
    /// Reads and checks this node's certificate. A node whose own
    /// certificate is missing, forged, expired or someone else's refuses to
    /// start: every peer would refuse it anyway.
    pub fn load(settings: &Settings, local: NodeId) -> anyhow::Result<Membership> {
        let mut membership = Membership {
            authority: None,
            own: None,
            known: LruCache::new(KNOWN_CERTIFICATES),
            admitted: HashMap::new(),
            pending: HashMap::new(),
            held_bytes: 0,
            cooling: LruCache::new(MAX_COOLING),
            timeout: settings.config.membership.membership_timeout_ms.duration(),
            refused: 0,
            turned_away: 0,
            last_handshake_ms: None,
        };
        let Some(m) = &settings.authority else {
            tracing::warn!("no authority configured: this node runs OPEN and accepts any peer (set membership.authority and membership.certificate to require membership)");
            return Ok(membership);
        };
        let path = &m.certificate;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the certificate file {}", path.display()))?;
        let verified = verify_certificate(&bytes, &m.authority)
            .with_context(|| format!("certificate file {}", path.display()))?;
        if let Err(e) = verified.check(&local, now_ms()) {
            bail!("certificate file {}: {e}", path.display());
        }
        tracing::info!(
            scopes = %verified.certificate.scopes.join(","),
            expires_ms = verified.certificate.expires_ms,
            "membership certificate loaded; peers must present theirs"
        );
        membership.authority = Some(m.authority);
        membership.own = Some((bytes, Arc::new(verified)));
        Ok(membership)
    }

    pub fn is_open(&self) -> bool {
        self.authority.is_none()
    }

    pub fn own_certificate(&self) -> Option<&[u8]> {
        self.own.as_ref().map(|(bytes, _)| bytes.as_slice())
    }

    /// This node's scopes (`None`: open network, no limits).
    pub fn own_scopes(&self) -> Option<Arc<Verified>> {
        self.own.as_ref().map(|(_, v)| v.clone())
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains_key(peer)
    }

    /// The scopes of an admitted peer: `Some(None)` when no scope applies
    /// (open network), `None` when the peer is not admitted.
    pub fn scopes_of(&self, peer: &PeerId) -> Option<Option<&Verified>> {
        self.admitted.get(peer).map(|v| v.as_deref())
    }

    /// A peer's first connection: true if a handshake must follow.
    fn connected(&mut self, peer: PeerId) -> bool {
        if self.is_open() {
            self.admitted.insert(peer, None);
            return false;
        }
        if self.admitted.contains_key(&peer) || self.pending.contains_key(&peer) {
            return false;
        }
        self.pending.insert(
            peer,
            Pending {
                since: Instant::now(),
                held: Vec::new(),
                held_bytes: 0,
                identified: None,
            },
        );
        true
    }

    fn disconnected(&mut self, peer: &PeerId) {
        self.admitted.remove(peer);
        self.take_pending(peer);
    }

    /// Removes a pending peer, releasing what was held for it.
    fn take_pending(&mut self, peer: &PeerId) -> Option<Pending> {
        let p = self.pending.remove(peer)?;
        self.held_bytes -= p.held_bytes;
        Some(p)
    }

    /// A refused peer still blocked for a while.
    pub fn is_cooling(&self, peer: &PeerId) -> bool {
        self.cooling
            .peek(peer)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Bytes held for pending peers.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The certificate of `author` valid now: the presented one, or the one
    /// met before. `Ok(None)` in an open network.
    pub fn check(
        &mut self,
        author: &NodeId,
        presented: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Option<Arc<Verified>>, MembershipError> {
        let Some(authority) = self.authority else {
            return Ok(None);
        };
        let verified = match (presented, self.known.get(author)) {
            (Some(bytes), Some(known)) if known.bytes == bytes => known.verified.clone(),
            (None, Some(known)) => known.verified.clone(),
            (None, None) => return Err(MembershipError::Missing),
            (Some(bytes), _) => {
                let verified = Arc::new(verify_certificate(bytes, &authority)?);
                // Only a certificate of the author itself is remembered for
                // it (a frame may not plant one for somebody else).
                verified.check(author, now_ms)?;
                self.known.put(
                    *author,
                    Known {
                        bytes: bytes.to_vec(),
                        verified: verified.clone(),
                    },
                );
                verified
            }
        };
        verified.check(author, now_ms)?;
        Ok(Some(verified))
    }

    /// May the author of `vertex` propose? (Its certificate travels with it.)
    pub fn check_proposer(&mut self, vertex: &Vertex) -> Result<(), ProposerRefused> {
        let author = vertex.author();
        match self.check(&author, vertex.certificate(), now_ms()) {
            Ok(Some(scopes)) if !scopes.may_propose() => Err(ProposerRefused::NoScope(author)),
            Ok(_) => Ok(()),
            Err(e) => Err(ProposerRefused::NotAMember(author, e)),
        }
    }

    /// Holds a gossip message of a peer whose handshake is under way; false
    /// if the peer is not pending or its queue is full.
    pub fn hold(
        &mut self,
        peer: &PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) -> bool {
        let size = message.data.len() + message.topic.as_str().len();
        match self.pending.get_mut(peer) {
            Some(p)
                if p.held.len() < HELD_PER_PEER
                    && p.held_bytes + size <= HELD_BYTES_PER_PEER
                    && self.held_bytes + size <= HELD_BYTES_TOTAL =>
            {
                p.held.push((id, message));
                p.held_bytes += size;
                self.held_bytes += size;
                true
            }
            _ => false,
        }
    }

    /// The pending peer that has waited longest, and since when.
    fn longest_waiting(&self) -> Option<(PeerId, Instant)> {
        self.pending
            .iter()
            .min_by_key(|(_, p)| p.since)
            .map(|(peer, p)| (*peer, p.since))
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn held_count(&self) -> usize {
        self.pending.values().map(|p| p.held.len()).sum()
    }

    pub fn is_pending(&self, peer: &PeerId) -> bool {
        self.pending.contains_key(peer)
    }

    /// Keeps what identify said about a pending peer until it is admitted.
    pub fn hold_identified(&mut self, peer: &PeerId, identified: Identified) {
        if let Some(p) = self.pending.get_mut(peer) {
            p.identified = Some(identified);
        }
    }

    /// Admits `peer`; returns the gossip held for it and what identify
    /// said about it meanwhile.
    fn admit(
        &mut self,
        peer: PeerId,
        verified: Arc<Verified>,
    ) -> (
        Vec<(gossipsub::MessageId, gossipsub::Message)>,
        Option<Identified>,
    ) {
        let pending = self.take_pending(&peer);
        if let Some(p) = &pending {
            self.last_handshake_ms = Some(p.since.elapsed().as_secs_f64() * 1e3);
        }
        self.admitted.insert(peer, Some(verified));
        pending.map(|p| (p.held, p.identified)).unwrap_or_default()
    }

    /// Peers whose handshake took longer than the timeout.
    fn overdue(&self, now: Instant) -> Vec<PeerId> {
        self.pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > self.timeout)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Admitted peers whose certificate has expired since.
    fn expired(&self, now_ms: u64) -> Vec<PeerId> {
        self.admitted
            .iter()
            .filter(|(_, v)| {
                v.as_ref()
                    .is_some_and(|v| v.certificate.expires_ms <= now_ms)
            })
            .map(|(peer, _)| *peer)
            .collect()
    }

    fn hello(&self) -> Hello {
        Hello {
            certificate: self.own_certificate().map(|c| ByteBuf::from(c.to_vec())),
        }
    }
}

impl Network {
    /// A connection of a peer that is neither admitted nor proving
    /// membership is up: start the handshake if one is needed. Peers this
    /// node dialled always get a handshake place; a stranger dialling in
    /// gets one if a place is free (or can be freed), else it is turned
    /// away and blocked for a few seconds (which closes every connection
    /// it has, so none slips through unfenced).
    pub(super) fn membership_connected(&mut self, peer: PeerId, dialled: bool) {
        if !self.membership.is_open()
            && !dialled
            && self.membership.pending_count()
                >= self.settings.config.membership.max_pending_handshakes.get()
            && !self.make_room_for_a_handshake()
        {
            tracing::debug!(%peer, "too many handshakes under way; turning a newcomer away");
            self.membership.turned_away += 1;
            self.cool_off(peer, Instant::now() + TURNED_AWAY_COOL_OFF);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        if self.membership.connected(peer) {
            // Until it proves membership, gossipsub sends it nothing: below
            // the publish and gossip thresholds it gets no published,
            // forwarded or advertised message, and with a negative score it
            // is never grafted. Its subscriptions are still recorded, so
            // admission (score back to 0) needs no reconnection.
            self.swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, super::behaviour::PENDING_PEER_SCORE);
            let hello = self.membership.hello();
            self.swarm
                .behaviour_mut()
                .membership
                .send_request(&peer, hello);
        }
    }

    /// With every handshake place taken: disconnects the peer that has
    /// waited longest, if it has waited longer than any honest handshake
    /// takes. It may be merely slow, so it is not refused: no strike, no
    /// forgetting, a short block. Returns whether a place was freed.
    fn make_room_for_a_handshake(&mut self) -> bool {
        match self.membership.longest_waiting() {
            Some((peer, since)) if since.elapsed() > HONEST_HANDSHAKE_BOUND => {
                tracing::debug!(%peer, "too many handshakes under way; displacing the longest waiting");
                self.drop_pending(&peer);
                self.cool_off(peer, Instant::now() + TURNED_AWAY_COOL_OFF);
                let _ = self.swarm.disconnect_peer_id(peer);
                true
            }
            _ => false,
        }
    }

    /// The last connection of `peer` closed. A stranger that leaves before
    /// finishing its handshake held a place for free: a strike against its
    /// address (`remote`), as for a refusal.
    pub(super) fn membership_disconnected(&mut self, peer: &PeerId, remote: Option<IpAddr>) {
        if self.membership.is_pending(peer) {
            if let Some(ip) = remote {
                self.strike_address(ip, *peer);
            }
        }
        self.drop_pending(peer);
        self.membership.disconnected(peer);
    }

    /// Forgets a pending peer; what it sent meanwhile is ignored (its
    /// content was never judged, and its relays may be honest).
    fn drop_pending(&mut self, peer: &PeerId) {
        if let Some(p) = self.membership.take_pending(peer) {
            for (id, _) in p.held {
                self.report(&id, peer, gossipsub::MessageAcceptance::Ignore);
            }
        }
    }

    /// Disconnects peers that did not prove membership in time, and
    /// members whose certificate ran out while they were connected.
    pub(super) fn expire_handshakes(&mut self) {
        for peer in self.membership.overdue(Instant::now()) {
            self.refuse_member(
                peer,
                "did not present a membership certificate in time",
                Strike::Yes,
            );
        }
        for peer in self.membership.expired(now_ms()) {
            self.membership.admitted.remove(&peer);
            self.refuse_member(peer, "its membership certificate expired", Strike::No);
        }
        // Cool-offs have several lengths, so the oldest is not always the
        // first to end: look at all of them (a few thousand at most).
        let now = Instant::now();
        let ended: Vec<PeerId> = self
            .membership
            .cooling
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in ended {
            self.membership.cooling.pop(&peer);
            self.end_cool_off(peer);
        }
    }

    /// Lets a refused peer connect again, unless it is banned as well.
    fn end_cool_off(&mut self, peer: PeerId) {
        let banned = node_id_of(&peer).is_some_and(|node| self.guard.is_banned(&node));
        if !banned {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    /// Checks the certificate `peer` presented; admits or refuses it.
    /// Returns whether it was admitted.
    fn judge_certificate(&mut self, peer: PeerId, certificate: Option<&[u8]>) -> bool {
        if self.membership.is_admitted(&peer) {
            return true;
        }
        if !self.membership.is_pending(&peer) {
            // Refused already (both ends' hellos cross on the wire).
            return false;
        }
        let Some(node) = node_id_of(&peer) else {
            return false;
        };
        match self.membership.check(&node, certificate, now_ms()) {
            Ok(Some(verified)) => {
                tracing::info!(%peer, scopes = %verified.certificate.scopes.join(","), "peer proved its membership");
                let (held, identified) = self.membership.admit(peer, verified);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .set_application_score(&peer, 0.0);
                if let Some(identified) = identified {
                    self.route_to(peer, identified);
                }
                for (id, message) in held {
                    self.on_gossip(peer, id, message);
                }
                // Consensus and patterns may use the peer from now on.
                self.maintain_consensus();
                true
            }
            // Open network: the peer was admitted on connection.
            Ok(None) => true,
            Err(e) => {
                self.refuse_member(peer, &e.to_string(), Strike::Yes);
                false
            }
        }
    }

    /// Disconnects a peer that is not a member (and never dials it again);
    /// what it sent while its handshake was under way is ignored (never
    /// judged: rejecting it would charge the honest members relaying the
    /// same bytes). It is not banned: a node whose certificate was missing
    /// may come back with one. `strike`: count it against its address (not
    /// for a member whose certificate merely expired).
    fn refuse_member(&mut self, peer: PeerId, reason: &str, strike: Strike) {
        tracing::warn!(%peer, %reason, "refusing a peer that is not a member");
        self.membership.refused += 1;
        self.drop_pending(&peer);
        self.forget_peer(&peer);
        self.mark_unwanted(peer);
        if strike == Strike::Yes {
            self.strike_addresses_of(&peer);
        }
        self.cool_off(peer, Instant::now() + REFUSED_COOL_OFF);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Refuses `peer`'s connections until `until` (in memory, bounded: past
    /// the bound the least recently issued ends early).
    pub(super) fn cool_off(&mut self, peer: PeerId, until: Instant) {
        if let Some((evicted, _)) = self.membership.cooling.push(peer, until) {
            if evicted != peer {
                self.end_cool_off(evicted);
            }
        }
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    /// Drops a refused or banned peer from the routing table and the peer
    /// book, so it is neither handed to others nor redialled after a restart.
    pub(super) fn forget_peer(&mut self, peer: &PeerId) {
        self.swarm.behaviour_mut().kad.remove_peer(peer);
        if let Some(node) = node_id_of(peer) {
            if let Err(e) = self.peer_book.remove(&node) {
                tracing::warn!(%peer, error = %e, "cannot forget a refused peer");
            }
        }
    }

    pub(super) fn on_membership_event(
        &mut self,
        event: request_response::Event<Hello, HelloReply>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_hello(peer, request, channel),
                request_response::Message::Response { response, .. } => match response {
                    HelloReply::Welcome { certificate } => {
                        self.judge_certificate(peer, certificate.as_deref().map(|c| c.as_slice()));
                    }
                    HelloReply::Refused { reason } => {
                        tracing::warn!(%peer, %reason, "peer refused this node's membership");
                        self.mark_unwanted(peer);
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                },
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                if self.membership.is_pending(&peer) {
                    // Wait for the peer's own hello until the deadline: a
                    // connection closed as a duplicate fails our request
                    // while another one carries on.
                    tracing::debug!(%peer, %error, "membership handshake request failed");
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound membership handshake failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_hello(&mut self, peer: PeerId, hello: Hello, channel: ResponseChannel<HelloReply>) {
        let reply = if self.membership.is_open()
            || self.judge_certificate(peer, hello.certificate.as_deref().map(|c| c.as_slice()))
        {
            HelloReply::Welcome {
                certificate: self.membership.hello().certificate,
            }
        } else {
            HelloReply::Refused {
                reason: "no valid membership certificate for this peer id".into(),
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .membership
            .send_response(channel, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_protocol::membership::{issue, Scope};
    use agentmesh_protocol::NodeKey;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed([n; 32]).unwrap()
    }

    fn membership(authority: Option<NodeId>) -> Membership {
        Membership {
            authority,
            own: None,
            known: LruCache::new(KNOWN_CERTIFICATES),
            admitted: HashMap::new(),
            pending: HashMap::new(),
            held_bytes: 0,
            cooling: LruCache::new(MAX_COOLING),
            timeout: Duration::from_secs(10),
            refused: 0,
            turned_away: 0,
            last_handshake_ms: None,
        }
    }

    fn certificate(holder: NodeId, expires_ms: u64) -> Vec<u8> {
        issue(&key(1), holder, &[Scope::Propose], 0, expires_ms).unwrap()
    }

    #[test]
    fn members_whose_certificate_runs_out_are_found() {
        let mut m = membership(Some(key(1).node_id()));
        let peer = PeerId::random();
        let alice = key(2).node_id();
        let v = m
            .check(&alice, Some(&certificate(alice, 1_000)), 5)
            .unwrap()
            .unwrap();
        m.admitted.insert(peer, Some(v));
        assert!(m.expired(999).is_empty());
        assert_eq!(m.expired(1_000), vec![peer]);
    }

    fn gossip(bytes: usize) -> gossipsub::Message {
        gossipsub::Message {
            source: None,
            data: vec![0; bytes],
            sequence_number: None,
            topic: gossipsub::TopicHash::from_raw("t"),
        }
    }

    #[test]
    fn what_pending_peers_send_is_held_within_a_byte_budget() {
        let mut m = membership(Some(key(1).node_id()));
        let peers: Vec<PeerId> = (0..40).map(|_| PeerId::random()).collect();
        for peer in &peers {
            assert!(m.connected(*peer));
        }
        // One peer: up to its own budget.
        let mut held = 0;
        while m.hold(
            &peers[0],
            gossipsub::MessageId::from(vec![held as u8]),
            gossip(100_000),
        ) {
            held += 1;
        }
        assert!(
            m.held_bytes() <= HELD_BYTES_PER_PEER && held == 10,
            "{held}"
        );
        // Many peers: up to the total.
        for peer in &peers[1..] {
            while m.hold(peer, gossipsub::MessageId::from(vec![0]), gossip(100_000)) {}
        }
        assert!(m.held_bytes() <= HELD_BYTES_TOTAL);
        assert!(m.held_bytes() > HELD_BYTES_TOTAL - 200_000);
        // Leaving releases what was held.
        for peer in &peers {
            m.disconnected(peer);
        }
        assert_eq!(m.held_bytes(), 0);
    }

    #[test]
    fn an_open_network_checks_nothing() {
        let mut m = membership(None);
        assert!(m.check(&key(2).node_id(), None, 5).unwrap().is_none());
    }

    #[test]
    fn authors_need_a_valid_certificate_of_their_own() {
        let mut m = membership(Some(key(1).node_id()));
        let (alice, bob) = (key(2).node_id(), key(3).node_id());
        let alices = certificate(alice, 1_000);
        assert!(matches!(
            m.check(&alice, None, 5),
            Err(MembershipError::Missing)
        ));
        let v = m.check(&alice, Some(&alices), 5).unwrap().unwrap();
        assert!(v.may_propose());
        // Remembered: later frames may omit it, until it expires.
        assert!(m.check(&alice, None, 6).unwrap().is_some());
        assert!(matches!(
            m.check(&alice, None, 1_000),
            Err(MembershipError::Certificate(
                CertificateError::Expired { .. }
            ))
        ));
        // Bob presenting Alice's certificate gets nothing, and is not
        // remembered as holding it.
        assert!(matches!(
            m.check(&bob, Some(&alices), 5),
            Err(MembershipError::Certificate(
                CertificateError::WrongHolder { .. }
            ))
        ));
        assert!(matches!(
            m.check(&bob, None, 5),
            Err(MembershipError::Missing)
        ));
        // Another authority's certificate is worthless here.
        let foreign = issue(&key(9), bob, &[Scope::All], 0, 1_000).unwrap();
        assert!(matches!(
            m.check(&bob, Some(&foreign), 5),
            Err(MembershipError::Certificate(
                CertificateError::OtherAuthority { .. }
            ))
        ));
    }
}
