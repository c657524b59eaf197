//! `GET /metrics`: libp2p's own metrics (libp2p-metrics, recorded by the
//! network task), a histogram of publish-to-delivery latency, and the
//! node's counters, read at scrape time from the same snapshots the JSON
//! API serves (so the two never disagree).

use crate::types::{Channels, ConsensusStatus, PeerInfo, Status, SyncStatus};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// What the node's own part of a scrape shows.
pub struct Snapshot {
    pub status: Status,
    pub channels: Channels,
    pub peers: Vec<PeerInfo>,
    pub consensus: ConsensusStatus,
    pub sync: SyncStatus,
    pub model: crate::model::ModelStatus,
}

/// The registry behind `/metrics`, built once at start-up.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    /// One scrape at a time, so each encodes the snapshot it put in.
    scrape: Arc<Mutex<()>>,
}

/// Metrics the network task records as events happen.
pub struct NetworkMetrics {
    pub libp2p: libp2p::metrics::Metrics,
    /// Seconds from a message's publication (sender's clock) to its
    /// arrival here, for messages from peers.
    pub delivery_latency: Histogram,
    /// Peers disconnected because their gossipsub subscriptions never
    /// arrived (see `Network::reconnect_peers_missing_subscriptions`).
    pub subscription_reconnects: Counter,
}

pub fn build() -> (Metrics, NetworkMetrics) {
    let mut registry = Registry::default();
    let libp2p = libp2p::metrics::Metrics::new(&mut registry);
    // 0.5 ms to about 16 s.
    let delivery_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
    registry.register(
        "agentmesh_message_delivery_latency_seconds",
        "Publication (sender's clock) to arrival here of messages from peers",
        delivery_latency.clone(),
    );
    let subscription_reconnects = Counter::default();
    registry.register(
        "agentmesh_subscription_reconnects",
        "Peers reconnected because their gossip subscriptions never arrived",
        subscription_reconnects.clone(),
    );
    let snapshot = Arc::new(Mutex::new(None));
    registry.register_collector(Box::new(NodeCollector(snapshot.clone())));
    (
        Metrics {
            registry: Arc::new(registry),
            snapshot,
            scrape: Arc::new(Mutex::new(())),
        },
        NetworkMetrics {
            libp2p,
            delivery_latency,
            subscription_reconnects,
        },
    )
}

impl Metrics {
    /// The text exposition (OpenMetrics, which Prometheus reads) with the
    /// node's counters taken from `snapshot`.
    pub fn encode(&self, snapshot: Snapshot) -> Result<String, fmt::Error> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        // Released before encoding: the collector locks it to read.
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Debug)]
struct NodeCollector(Arc<Mutex<Option<Snapshot>>>);

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Snapshot")
    }
}

type Labels = Vec<(&'static str, String)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A metric with one sample per label set.
fn family<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in rows {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(e, name, help, MetricType::Counter, rows)
}

fn gauges(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let rows = rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(e, name, help, MetricType::Gauge, rows)
}

/// Plain metrics of one area: name, help, value.
type Counters<'a> = &'a [(&'static str, &'static str, u64)];
type Gauges<'a> = &'a [(&'static str, &'static str, i64)];

fn table(e: &mut DescriptorEncoder, counters: Counters, gauges: Gauges) -> fmt::Result {
    for (name, help, value) in counters {
        counter(e, name, help, *value)?;
    }
    for (name, help, value) in gauges {
        gauge(e, name, help, *value)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = guard.as_ref() else {
            return Ok(());
        };
        encode_messages(&mut e, s)?;
        encode_peers(&mut e, s)?;
        encode_consensus(&mut e, &s.consensus)?;
        encode_patterns(&mut e, &s.sync)?;
        encode_model(&mut e, &s.model)?;
        gauge(
            &mut e,
            "agentmesh_uptime_seconds",
            "Seconds since the node started",
            s.status.uptime_secs as i64,
        )
    }
}

/// Which of a channel's counters a metric reports.
type PickCounter = fn(&crate::types::ChannelCountersInfo) -> u64;

fn encode_messages(e: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    let m = &s.status.messages;
    #[rustfmt::skip]
    let plain_counters: Counters = &[
        ("agentmesh_messages_published", "Messages published by this node's agents", m.published),
        ("agentmesh_messages_received", "Messages from peers that passed validation", m.received),
        ("agentmesh_messages_rejected", "Messages from peers that failed validation", m.rejected),
        ("agentmesh_messages_delivered", "Deliveries to local subscribers", m.delivered_locally),
    ];
    #[rustfmt::skip]
    let plain_gauges: Gauges = &[];
    table(e, plain_counters, plain_gauges)?;
    let per_channel = |pick: PickCounter| {
        s.channels
            .counters
            .iter()
            .map(move |c| (vec![("channel", c.channel.clone())], pick(c)))
    };
    #[rustfmt::skip]
    let channel_counters: [(&str, &str, PickCounter); 3] = [
        ("agentmesh_channel_messages_published", "Messages published per channel", |c| c.published),
        ("agentmesh_channel_messages_received", "Messages received per channel", |c| c.received),
        ("agentmesh_channel_messages_rejected", "Messages rejected per channel (or topic family)", |c| c.rejected),
    ];
    for (name, help, pick) in channel_counters {
        counters(e, name, help, per_channel(pick))?;
    }
    gauges(
        e,
        "agentmesh_channel_subscribers",
        "Subscribers per channel family: local streams and connected peers",
        s.channels.subscribed.iter().flat_map(|f| {
            [
                ("local", f.local_subscribers as f64),
                ("remote", f.remote_subscribers as f64),
            ]
            .map(|(place, n)| {
                let labels = vec![("family", f.family.clone()), ("where", place.to_string())];
                (labels, n)
            })
        }),
    )
}

fn encode_peers(e: &mut DescriptorEncoder, s: &Snapshot) -> fmt::Result {
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in &s.peers {
        let transport = serde_json::to_value(&p.transport)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *by_state.entry((transport, p.breaker.clone())).or_default() += 1;
    }
    gauges(
        e,
        "agentmesh_peers",
        "Connected peers by the transport in use and the state of their QUIC circuit breaker",
        by_state
            .into_iter()
            .map(|((t, b), n)| (vec![("transport", t), ("breaker", b)], n as f64)),
    )?;
    let sec = &s.status.security;
    counters(
        e,
        "agentmesh_peer_offences",
        "Misbehaviour seen from peers, by kind (malformed, bad_signature, unauthorised, over_rate)",
        sec.offences
            .iter()
            .map(|(kind, n)| (vec![("kind", kind.clone())], *n)),
    )?;
    #[rustfmt::skip]
    let plain_counters: Counters = &[
        ("agentmesh_peer_bans", "Bans issued since start-up", sec.bans_issued),
        ("agentmesh_membership_refused_peers", "Peers refused for lacking a valid membership certificate", sec.refused_peers),
    ];
    #[rustfmt::skip]
    let plain_gauges: Gauges = &[
        ("agentmesh_known_peers", "Peers remembered on disk", s.status.known_peers as i64),
        ("agentmesh_banned_peers", "Peers banned now (bans survive restarts)", sec.banned_peers as i64),
    ];
    table(e, plain_counters, plain_gauges)
}

fn encode_consensus(e: &mut DescriptorEncoder, c: &crate::types::ConsensusStatus) -> fmt::Result {
    #[rustfmt::skip]
    let plain_counters: Counters = &[
        ("agentmesh_consensus_polls", "Consensus polls started", c.polls_started),
        ("agentmesh_consensus_polls_succeeded", "Polls that reached an alpha majority", c.polls_succeeded),
        ("agentmesh_consensus_accepted_vertices", "Vertices finalized as accepted", c.accepted_vertices),
        ("agentmesh_consensus_rejected_vertices", "Vertices finalized as rejected", c.rejected_vertices),
        ("agentmesh_consensus_accepted_transactions", "Transactions finalized as accepted", c.accepted_transactions),
        ("agentmesh_consensus_flush_failures", "Flushes of decisions to disk that failed", c.flush_failures),
        ("agentmesh_consensus_bootstrapped_vertices", "Vertices accepted unpolled on a quorum's word while bootstrapping", c.bootstrap.accepted_vertices),
        ("agentmesh_consensus_bootstrap_fetched_bytes", "Bytes of vertices fetched while bootstrapping", c.bootstrap.fetched_bytes),
    ];
    #[rustfmt::skip]
    let plain_gauges: Gauges = &[
        ("agentmesh_consensus_processing_vertices", "Vertices being polled", c.processing as i64),
        ("agentmesh_consensus_graylisted_peers", "Peers whose votes are ignored for now", c.graylisted.len() as i64),
        ("agentmesh_consensus_halted", "1 once the consensus history failed: the node votes no more", c.halted.is_some() as i64),
        ("agentmesh_consensus_bootstrapping", "1 while the node walks the validators' accepted history", (c.bootstrap.state != "done" && c.bootstrap.state != "waiting") as i64),
        ("agentmesh_consensus_bootstrap_remaining", "Entries of the source's accepted log still to read", c.bootstrap.remaining as i64),
    ];
    table(e, plain_counters, plain_gauges)?;
    let quantiles = |p: &crate::types::Percentiles| {
        [("0.5", p.p50), ("0.95", p.p95), ("0.99", p.p99)]
            .map(|(q, v)| (vec![("quantile", q.to_string())], v / 1e3))
    };
    gauges(
        e,
        "agentmesh_consensus_finality_seconds",
        "Proposal to acceptance of this node's recent vertices, by quantile",
        quantiles(&c.finality_ms),
    )?;
    gauges(
        e,
        "agentmesh_consensus_query_rtt_seconds",
        "Consensus query round trips, by quantile",
        quantiles(&c.query_rtt_ms),
    )
}

fn encode_patterns(e: &mut DescriptorEncoder, sync: &crate::types::SyncStatus) -> fmt::Result {
    let (r, a) = (&sync.replication, &sync.anti_entropy);
    #[rustfmt::skip]
    let plain_counters: Counters = &[
        ("agentmesh_pattern_batches_sent", "Pattern batches gossiped", r.batches_sent),
        ("agentmesh_pattern_batches_received", "Pattern batches received by gossip", r.batches_received),
        ("agentmesh_pattern_batches_rejected", "Pattern batches refused whole (frame, checksum, encoding)", r.batches_rejected),
        ("agentmesh_patterns_sent", "Pattern states gossiped", r.patterns_sent),
        ("agentmesh_patterns_applied", "Gossiped pattern states that changed what this node holds", r.patterns_applied),
        ("agentmesh_patterns_rejected", "Pattern states refused (invalid, or a join past the limits)", r.patterns_rejected),
        ("agentmesh_anti_entropy_rounds", "Anti-entropy rounds this node started", a.rounds),
        ("agentmesh_anti_entropy_rounds_failed", "Anti-entropy rounds that failed", a.rounds_failed),
        ("agentmesh_anti_entropy_patterns_fetched", "Pattern states fetched by anti-entropy", a.patterns_fetched),
        ("agentmesh_anti_entropy_patterns_pushed", "Pattern states pushed by anti-entropy", a.patterns_pushed),
        ("agentmesh_patterns_corrupt_skipped", "Times listings skipped a damaged pattern record since start-up", sync.corrupt_records_skipped),
    ];
    #[rustfmt::skip]
    let plain_gauges: Gauges = &[
        ("agentmesh_patterns", "Patterns held", sync.patterns as i64),
    ];
    table(e, plain_counters, plain_gauges)
}

fn encode_model(e: &mut DescriptorEncoder, m: &crate::model::ModelStatus) -> fmt::Result {
    let r = m.recommendations;
    counters(
        e,
        "agentmesh_recommendations",
        "Recommendations answered, by who chose them",
        [("model", r.model), ("rules", r.rules)].map(|(k, v)| (vec![("source", k.to_string())], v)),
    )?;
    #[rustfmt::skip]
    let plain_counters: Counters = &[
        ("agentmesh_recommendations_cached", "Recommendations answered from the cache", r.cached),
        ("agentmesh_model_online_updates", "Outcomes that changed the model at once", m.online_updates),
        ("agentmesh_model_merges", "Merge rounds that installed peers' models", m.merges),
        ("agentmesh_model_merge_failures", "Peer models that could not be fetched or merged", m.merge_failures),
        ("agentmesh_model_peer_models_rejected", "Peer models rejected: worse on this node's own data, or unusable", m.peer_models_rejected),
        ("agentmesh_model_peer_model_bytes_fetched", "Bytes of peers' models fetched", m.model_bytes_fetched),
    ];
    #[rustfmt::skip]
    let plain_gauges: Gauges = &[
        ("agentmesh_model_version", "Version of the local model (0: untrained)", m.version as i64),
        ("agentmesh_model_classes", "Patterns the local model knows", m.classes.len() as i64),
    ];
    table(e, plain_counters, plain_gauges)
}
