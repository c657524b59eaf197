//! The dashboard served at `/`, loaded in a real headless Chromium against
//! a running testnet: it shows the node's connections, channels and
//! patterns, and keeps updating itself.
//!
//! Needs Chromium (`apt-get install chromium`; `.ci/run` installs it). On
//! a machine without it the test says so and passes, unless
//! `AGENTMESH_REQUIRE_CHROMIUM` is set (as `.ci/run` does).

mod common;

use agentmesh_testnet::patterns::{sample, wait_converged};
use common::{start, MESH_TIMEOUT};
use std::path::PathBuf;
use std::time::Duration;

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

/// The page's DOM after its scripts ran for `budget` of (virtual) time.
async fn render(browser: &PathBuf, url: &str, budget: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("chromium finished")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of the element with `id` (its first text, tags stripped).
fn element(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest.find(&format!("</{}", tag_of(&dom[..start]))).unwrap();
    strip_tags(&rest[open..close])
}

/// The `data-points` of each line in the chart with `id`.
fn data_points(dom: &str, id: &str) -> Vec<u32> {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let chart = &dom[start..start + dom[start..].find("</svg>").unwrap()];
    chart
        .split("data-points=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
        .collect()
}

fn tag_of(before: &str) -> &str {
    let at = before.rfind('<').unwrap() + 1;
    before[at..].split_whitespace().next().unwrap()
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_node_live_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("AGENTMESH_REQUIRE_CHROMIUM").is_none(),
            "AGENTMESH_REQUIRE_CHROMIUM is set but Chromium is not installed"
        );
        eprintln!("SKIPPED: Chromium is not installed (apt-get install chromium)");
        return;
    };
    let t = start(3, &[]).await;
    let net = &t.net;
    net.wait_full_mesh(MESH_TIMEOUT).await.unwrap();
    for n in 0..3 {
        net.nodes[0]
            .client
            .publish(
                "coordination",
                "application/json",
                format!("{{\"n\":{n}}}").into_bytes(),
            )
            .await
            .unwrap();
    }
    net.nodes[2]
        .client
        .put_pattern(&sample("shown", "snippet", &["ui"]))
        .await
        .unwrap();
    wait_converged(net, &[0, 1, 2], 1, MESH_TIMEOUT)
        .await
        .unwrap();
    // The model is untrained on a fresh node: the rules answer.
    let context = agentmesh_neural::Context {
        text: "retry a flaky network call".into(),
        ..Default::default()
    };
    let answer = net.nodes[0].client.recommend(&context, 3).await.unwrap();
    assert_eq!(
        serde_json::to_value(answer.source).unwrap(),
        serde_json::json!("rules")
    );

    // Without the token the page says how to get in, and shows nothing.
    let bare = format!("http://{}/", net.nodes[0].info.api);
    let dom = render(&browser, &bare, Duration::from_secs(2)).await;
    assert!(element(&dom, "state").contains("no valid API token"));
    assert_ne!(element(&dom, "node-id"), net.nodes[0].info.peer_id);
    let url = format!("{bare}#token={}", net.nodes[0].token);
    let dom = render(&browser, &url, Duration::from_secs(4)).await;
    assert_eq!(element(&dom, "node-id"), net.nodes[0].info.peer_id);
    assert_eq!(element(&dom, "state"), "live");
    assert_eq!(element(&dom, "peer-count"), "2");
    let refreshes: u32 = element(&dom, "refreshes").parse().unwrap();
    assert!(refreshes >= 2, "the page updated itself {refreshes} times");
    let peers = element(&dom, "peers");
    assert_eq!(peers.matches("quic").count(), 2, "{peers}");
    let counters = element(&dom, "channel-counters");
    assert!(counters.contains("coordination"), "{counters}");
    let patterns = element(&dom, "patterns");
    assert!(patterns.starts_with("patterns 1 "), "{patterns}");
    let channels = element(&dom, "channels");
    assert!(channels.contains("learning"), "{channels}");
    // The model panel is live: the node's own /v1/model, including the
    // recommendation just answered by the rules.
    let model = element(&dom, "model");
    assert!(
        model.starts_with("model enabled, untrained (the rules answer) version 0 "),
        "{model}"
    );
    assert!(
        model.contains("recommendations by model / rules / cache 0 / 1 / 0"),
        "{model}"
    );
    // The charts hold one point a refresh (throughput one fewer: a rate
    // needs two polls), and their captions the latest values.
    assert!(data_points(&dom, "chart-peers")[0] >= 2, "peers chart");
    assert_eq!(element(&dom, "chart-peers-latest"), "2");
    let throughput = data_points(&dom, "chart-throughput");
    assert_eq!(throughput.len(), 2, "published and received lines");
    assert!(throughput.iter().all(|n| *n >= 1), "{throughput:?}");
    let rates = element(&dom, "chart-throughput-latest");
    let parts: Vec<&str> = rates.split(" / ").collect();
    assert_eq!(parts.len(), 2, "{rates}");
    assert!(parts.iter().all(|p| p.parse::<f64>().is_ok()), "{rates}");
    let consensus = element(&dom, "consensus");
    assert!(consensus.starts_with("state running "), "{consensus}");
    let security = element(&dom, "security");
    assert!(
        security.starts_with("membership open (no authority)"),
        "{security}"
    );
}
