//! `GET /metrics` over real node processes: the exposition parses as the
//! Prometheus text format, carries libp2p's metrics and the node's, and its
//! counters move as messages flow.

mod common;

use agentmesh_testnet::{wait, Testnet};
use common::{start, MESH_TIMEOUT};
use prometheus_parse::{LineInfo, Scrape, Value};
use std::time::Duration;

/// Scrapes node `i`: every line must be a comment, a type or help line, or
/// a sample (a parser that skips what it cannot read would hide errors).
async fn scrape(net: &Testnet, i: usize) -> Scrape {
    let url = format!("http://{}/metrics", net.nodes[i].info.api);
    let response = net.nodes[i].http().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for line in text.lines() {
        let ok = match LineInfo::parse(line) {
            LineInfo::Sample { value, .. } => value.parse::<f64>().is_ok(),
            LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Empty => true,
            LineInfo::Ignored => line == "# EOF" || line.starts_with("# UNIT"),
        };
        assert!(ok, "not a valid exposition line: {line:?}");
    }
    assert!(text.ends_with("# EOF\n"));
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn value(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_messages_flow() {
    let t = start(2, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    let mut events = net.nodes[1].client.subscribe("metrics:cpu").await.unwrap();
    net.wait_remote_subscribers(0, "metrics", 1, MESH_TIMEOUT)
        .await
        .unwrap();

    let before = scrape(net, 1).await;
    let received_before = value(&before, "agentmesh_messages_received_total", None).unwrap();
    // libp2p's own metrics are there, and so are the node's peers.
    assert!(
        before
            .samples
            .iter()
            .any(|s| s.metric.starts_with("libp2p_swarm_connections")),
        "no libp2p swarm metrics"
    );
    assert_eq!(value(&before, "agentmesh_peers", None), Some(1.0));

    for n in 0..5 {
        net.nodes[0]
            .client
            .publish(
                "metrics:cpu",
                "application/json",
                format!("{{\"n\":{n}}}").into_bytes(),
            )
            .await
            .unwrap();
    }
    for _ in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(30),
            futures::StreamExt::next(&mut events),
        )
        .await
        .unwrap();
    }
    let after = wait::until(
        "node 1's counters to move",
        Duration::from_secs(30),
        || async {
            let s = scrape(net, 1).await;
            let received = value(&s, "agentmesh_messages_received_total", None).unwrap_or(0.0);
            Ok((received >= received_before + 5.0).then_some(s))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        value(
            &after,
            "agentmesh_channel_messages_received_total",
            Some(("channel", "metrics:cpu"))
        ),
        Some(5.0)
    );
    let latencies = value(&after, "agentmesh_message_delivery_latency_seconds", None).unwrap();
    assert!(latencies >= 5.0, "{latencies} delivery latencies observed");
    // Subscriptions arrived on every connection: nobody was reconnected.
    assert_eq!(
        value(&after, "agentmesh_subscription_reconnects_total", None),
        Some(0.0)
    );
    let sent = scrape(net, 0).await;
    assert_eq!(
        value(
            &sent,
            "agentmesh_channel_messages_published_total",
            Some(("channel", "metrics:cpu"))
        ),
        Some(5.0)
    );
}
