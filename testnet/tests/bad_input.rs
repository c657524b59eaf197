//! Bad input anywhere gets a clear error naming the problem, never a crash:
//! configuration, flags, environment, API bodies and wire messages.

mod common;

use agentmesh_node::identity::node_id_of;
use agentmesh_protocol::frame::{sign_payload, FramePayload};
use agentmesh_protocol::{codec, encode_frame, Channel, Envelope, MessageId, NodeId, NodeKey};
use agentmesh_testnet::binary;
use agentmesh_testnet::collect::Collector;
use agentmesh_testnet::process::pid_alive;
use agentmesh_testnet::rogue::RoguePeer;
use common::start;
use std::process::Command;
use std::time::Duration;

/// Runs `agentmesh run` with a configuration that must be refused, and
/// returns its exit status and standard error.
fn run_refused(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let bin = binary::build_for_tests().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .args(["--data-dir", dir.path().to_str().unwrap()]);
    // Safe defaults for what the case does not set itself.
    if !args.contains(&"--api") {
        cmd.args(["--api", "127.0.0.1:0"]);
    }
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A valid configuration would start a node and never exit: refuse to
    // wait for that, so a regression fails instead of hanging.
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("agentmesh run {args:?} did not refuse its configuration");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
// Long on purpose: A table of cases: each bad setting and the words its error must contain.
fn invalid_configuration_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let bad_addr = dir.path().join("bad-addr.toml");
    std::fs::write(
        &bad_addr,
        "[network]\nbootstrap = [\"/ip4/10.0.0.1/tcp/notaport/p2p/x\"]\n",
    )
    .unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[network]\nbootstrap_peers = []\n").unwrap();
    let wrong_type = dir.path().join("wrong-type.toml");
    std::fs::write(&wrong_type, "[network]\nping_interval_secs = \"often\"\n").unwrap();

    let zeros = "0".repeat(64);
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        (
            vec!["--config", bad_addr.to_str().unwrap()],
            vec![],
            "'network.bootstrap'",
        ),
        (
            vec!["--config", unknown.to_str().unwrap()],
            vec![],
            "bootstrap_peers",
        ),
        (
            vec!["--config", wrong_type.to_str().unwrap()],
            vec![],
            "ping_interval_secs",
        ),
        (
            vec!["--config", "/nonexistent/agentmesh.toml"],
            vec![],
            "/nonexistent/agentmesh.toml",
        ),
        (
            vec!["--listen", "/ip4/127.0.0.1/tcp/0/garbage"],
            vec![],
            "listen",
        ),
        (
            vec!["--bootstrap", "/ip4/127.0.0.1/tcp/4001"],
            vec![],
            "/p2p/",
        ),
        (
            vec!["--ping-interval-secs", "soon"],
            vec![],
            "--ping-interval-secs",
        ),
        (
            vec![],
            vec![("AGENTMESH_MAX_MESSAGE_BYTES", "0")],
            "'network.max_message_bytes'",
        ),
        (
            vec![],
            vec![("AGENTMESH_NETWORK", "has spaces")],
            "'node.network'",
        ),
        (vec!["--api", "0.0.0.0:7700"], vec![], "'api.listen'"),
        (
            vec!["--quic=false", "--tcp=false"],
            vec![],
            "enable at least one",
        ),
        (
            vec!["--consensus-alpha-preference", "5"],
            vec![],
            "'consensus.alpha_preference'",
        ),
        (
            vec!["--consensus-alpha-confidence", "12"],
            vec![],
            "Byzantine",
        ),
        (
            vec!["--validators", "nonsense"],
            vec![],
            "'consensus.validators'",
        ),
        (
            vec![
                "--validators",
                "12D3KooWQK1wnefoLrcVHbbnf5tLzbopUd3K3bFAoJpA7YJgL5pV=0",
            ],
            vec![],
            "weight 0",
        ),
        (
            vec![],
            vec![("AGENTMESH_CONSENSUS_BETA_ROGUE", "1")],
            "'consensus.beta_rogue'",
        ),
        (vec!["--authority", "abc"], vec![], "'membership.authority'"),
        (
            vec!["--authority", &zeros],
            vec![],
            "'membership.certificate'",
        ),
        (
            vec![
                "--authority",
                &zeros,
                "--certificate",
                "/nonexistent/c.cert",
            ],
            vec![],
            "/nonexistent/c.cert",
        ),
        (vec!["--ban-threshold", "0"], vec![], "--ban-threshold"),
    ];
    for (args, env, expected) in cases {
        let (status, stderr) = run_refused(&args, &env);
        assert!(!status.success(), "{args:?} {env:?} should fail");
        assert!(
            stderr.contains(expected),
            "{args:?} {env:?}: stderr {stderr:?} does not mention {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `agentmesh model`: bad data files are refused naming the line; a good
/// one trains, prints the metrics and writes a checkpoint.
#[test]
fn model_data_files_are_checked_and_trained_from_the_cli() {
    let bin = binary::build_for_tests().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = |args: &[&str]| Command::new(&bin).arg("model").args(args).output().unwrap();
    let good = r#"{"context":{"text":"open a socket"},"label":"net"}"#;
    for (name, content, expected) in [
        ("bad-json.jsonl", format!("{good}\n{{oops\n"), "line 2"),
        (
            "no-label.jsonl",
            format!("{good}\n{good}\n{{\"context\":{{\"text\":\"x\"}}}}\n"),
            "line 3",
        ),
        ("empty.jsonl", "\n".to_string(), "holds no samples"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = model(&["eval", "--data", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Feature options out of range are named before any data is read.
    let data = dir.path().join("bad-json.jsonl");
    for (option, value, expected) in [
        ("--norm", "0", "feature norm 0 is not in"),
        ("--norm", "NaN", "feature norm NaN is not in"),
        ("--dim", "1000", "feature dim 1000"),
    ] {
        let out = model(&["eval", "--data", data.to_str().unwrap(), option, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{option} {value} was accepted");
        assert!(stderr.contains(expected), "{option} {value}: {stderr}");
    }
    let words = [
        ("net", "socket connect peer packet dial"),
        ("db", "table query index commit row"),
        ("ui", "button click render layout pixel"),
    ];
    let lines: Vec<String> = (0..90)
        .map(|i| {
            let (label, text) = words[i % 3];
            serde_json::json!({"context": {"text": format!("{text} case {i}")}, "label": label})
                .to_string()
        })
        .collect();
    let data = dir.path().join("good.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let checkpoint = dir.path().join("model.ckpt");
    let out = model(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        checkpoint.to_str().unwrap(),
        "--dim",
        "1024",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "test_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "epochs",
        "train_seconds",
        "baseline_test_accuracy",
    ] {
        assert!(metrics[key].is_number(), "{key} missing from {metrics}");
    }
    assert!(
        metrics["test_accuracy"].as_f64().unwrap() > 0.9,
        "{metrics}"
    );
    let bytes = std::fs::read(&checkpoint).unwrap();
    let restored = agentmesh_neural::checkpoint::Checkpoint::decode(&bytes).unwrap();
    assert_eq!(restored.labels, vec!["db", "net", "ui"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: A table of cases on one node: each bad request and the error a user must
// read.
async fn invalid_api_requests_get_an_error_with_the_reason() {
    // Every kind of bad data at once would get the rogue banned (see the
    // flooding test in membership.rs); here each must be seen and counted.
    let t = start(
        1,
        &["--max-message-bytes", "1024", "--ban-threshold", "100000"],
    )
    .await;
    let api = t.net.nodes[0].info.api;
    let http = t.net.nodes[0].http();
    let post = |channel: &str, content_type: &str, body: Vec<u8>| {
        http.post(format!("http://{api}/v1/channels/{channel}/messages"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = vec![
        (
            post("coordination", "application/json", b"{not json".to_vec())
                .await
                .unwrap(),
            400,
            "not valid JSON",
        ),
        (
            post("coordination", "text/plain", vec![]).await.unwrap(),
            400,
            "empty",
        ),
        (
            post("bad%20channel", "text/plain", b"x".to_vec())
                .await
                .unwrap(),
            400,
            "channel name",
        ),
        (
            post("a::b", "text/plain", b"x".to_vec()).await.unwrap(),
            400,
            "empty segment",
        ),
        (
            post(
                "coordination",
                &format!("text/{}", "x".repeat(200)),
                b"x".to_vec(),
            )
            .await
            .unwrap(),
            400,
            "content type",
        ),
        (
            post("coordination", "text/plain", vec![b'x'; 2000])
                .await
                .unwrap(),
            413,
            "max_message_bytes",
        ),
        (
            http.get(format!("http://{api}/v1/channels/met*/events"))
                .send()
                .await
                .unwrap(),
            400,
            "':*'",
        ),
        (
            http.post(format!("http://{api}/v1/messages"))
                .json(&serde_json::json!({ "messages": [] }))
                .send()
                .await
                .unwrap(),
            400,
            "1 to 1024 messages",
        ),
        (
            http.post(format!("http://{api}/v1/messages"))
                .json(&serde_json::json!({ "messages": [
                    { "channel": "coordination", "body": 1 },
                    { "channel": "coordination", "body": 2 },
                    { "channel": "no spaces", "body": 3 },
                ] }))
                .send()
                .await
                .unwrap(),
            400,
            "message 2",
        ),
        (
            http.post(format!("http://{api}/v1/messages"))
                .header("content-type", "application/json")
                .body("[1, 2")
                .send()
                .await
                .unwrap(),
            400,
            "not a valid batch",
        ),
        (
            http.post(format!("http://{api}/v1/messages"))
                .body(r#"{"messages":[]}"#)
                .send()
                .await
                .unwrap(),
            415,
            "takes a JSON body",
        ),
        (
            http.get(format!("http://{api}/v1/nothing"))
                .send()
                .await
                .unwrap(),
            404,
            "no such endpoint",
        ),
    ];
    expect_errors(cases).await;
    // Nothing of that was published.
    let status = t.net.nodes[0].client.status().await.unwrap();
    assert_eq!(status.messages.published, 0);

    let propose = |body: serde_json::Value| {
        http.post(format!("http://{api}/v1/transactions"))
            .json(&body)
            .send()
    };
    let claim = |body: serde_json::Value| {
        http.post(format!("http://{api}/v1/tasks/t1/claim"))
            .json(&body)
            .send()
    };
    let tx = |key: &str, payload: String| serde_json::json!({ "key": key, "payload": payload });
    let consensus_cases = vec![
        (
            propose(serde_json::json!({ "transactions": [] }))
                .await
                .unwrap(),
            400,
            "between 1 and 1024",
        ),
        (
            propose(
                serde_json::json!({ "transactions": [tx("a", "x".into()), tx("a", "y".into())] }),
            )
            .await
            .unwrap(),
            400,
            "appears twice",
        ),
        (
            propose(serde_json::json!({ "transactions": [tx("", "x".into())] }))
                .await
                .unwrap(),
            400,
            "transactions[0].key",
        ),
        (
            propose(serde_json::json!({ "transactions": [tx("k", "x".repeat(5000))] }))
                .await
                .unwrap(),
            413,
            "payload is over 4096",
        ),
        (
            propose(serde_json::json!({ "txs": [] })).await.unwrap(),
            400,
            "not what this endpoint takes",
        ),
        (
            http.get(format!("http://{api}/v1/vertices/xyz"))
                .send()
                .await
                .unwrap(),
            400,
            "not a hex vertex id",
        ),
        (
            http.get(format!("http://{api}/v1/vertices/{}", "0".repeat(64)))
                .send()
                .await
                .unwrap(),
            404,
            "unknown to this node",
        ),
        (claim(serde_json::json!({})).await.unwrap(), 400, "claimant"),
        (
            claim(serde_json::json!({ "claimant": "" })).await.unwrap(),
            400,
            "claimant must be",
        ),
    ];
    expect_errors(consensus_cases).await;
    // Nothing of that was proposed.
    let consensus = t.net.nodes[0].client.consensus().await.unwrap();
    assert_eq!(consensus.polls_started, 0);
    assert_eq!(consensus.processing, 0);

    let put = |body: serde_json::Value| {
        http.post(format!("http://{api}/v1/patterns"))
            .json(&body)
            .send()
    };
    let get = |path: &str| http.get(format!("http://{api}{path}")).send();
    let pattern = |extra: serde_json::Value| {
        let mut p = serde_json::json!({ "id": "p1", "kind": "fix", "name": "n" });
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let pattern_cases = vec![
        (
            put(serde_json::json!({ "name": "n" })).await.unwrap(),
            400,
            "kind",
        ),
        (
            put(pattern(serde_json::json!({ "colour": "red" })))
                .await
                .unwrap(),
            400,
            "unknown field `colour`",
        ),
        (
            put(pattern(serde_json::json!({ "id": "has space" })))
                .await
                .unwrap(),
            400,
            "id: character ' '",
        ),
        (
            put(pattern(serde_json::json!({ "kind": "" })))
                .await
                .unwrap(),
            400,
            "kind: must not be empty",
        ),
        (
            put(pattern(serde_json::json!({ "tags": ["a b"] })))
                .await
                .unwrap(),
            400,
            "tags: tag \"a b\" contains whitespace",
        ),
        (
            put(pattern(serde_json::json!({ "metadata": 7 })))
                .await
                .unwrap(),
            400,
            "metadata: must be a JSON object",
        ),
        (
            put(pattern(serde_json::json!({ "name": "x".repeat(300) })))
                .await
                .unwrap(),
            400,
            "name: longer than 256",
        ),
        (
            get("/v1/patterns?limit=0").await.unwrap(),
            400,
            "limit must be",
        ),
        (
            get("/v1/patterns?colour=red").await.unwrap(),
            400,
            "tag, kind, after and limit",
        ),
        (
            get("/v1/patterns/unknown").await.unwrap(),
            404,
            "no pattern",
        ),
        (
            http.post(format!("http://{api}/v1/patterns/unknown/outcomes"))
                .json(&serde_json::json!({ "success": true }))
                .send()
                .await
                .unwrap(),
            404,
            "no pattern",
        ),
        (
            http.post(format!("http://{api}/v1/patterns/unknown/outcomes"))
                .json(&serde_json::json!({ "worked": true }))
                .send()
                .await
                .unwrap(),
            400,
            "unknown field",
        ),
    ];
    expect_errors(pattern_cases).await;
    // Nothing of that was stored.
    let sync = t.net.nodes[0].client.sync_status().await.unwrap();
    assert_eq!(sync.patterns, 0);

    let model_post = |path: &str, body: Vec<u8>| {
        http.post(format!("http://{api}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let model_cases = vec![
        (
            model_post("/v1/recommend", json(serde_json::json!({ "context": { "text": " " } })))
                .await
                .unwrap(),
            400,
            "context.text is empty",
        ),
        (
            model_post(
                "/v1/recommend",
                json(serde_json::json!({ "context": { "text": "retry" }, "k": 0 })),
            )
            .await
            .unwrap(),
            400,
            "k must be between 1 and 100",
        ),
        (
            model_post(
                "/v1/recommend",
                json(serde_json::json!({ "context": { "text": "x", "colour": "red" } })),
            )
            .await
            .unwrap(),
            400,
            "unknown field",
        ),
        (
            model_post(
                "/v1/outcomes",
                json(serde_json::json!({ "context": { "text": "x" }, "pattern": "bad id!", "success": true })),
            )
            .await
            .unwrap(),
            400,
            "pattern",
        ),
        (
            model_post(
                "/v1/outcomes",
                json(serde_json::json!({ "context": { "text": "x", "metadata": { "n": "many" } }, "pattern": "p", "success": true })),
            )
            .await
            .unwrap(),
            400,
            "not what this endpoint takes",
        ),
        (
            model_post("/v1/model/train", json(serde_json::json!({})))
                .await
                .unwrap(),
            400,
            "at least two labels",
        ),
        (
            http.put(format!("http://{api}/v1/model/checkpoint"))
                .body(b"not a checkpoint".to_vec())
                .send()
                .await
                .unwrap(),
            400,
            "malformed checkpoint",
        ),
        (get("/v1/model/checkpoint").await.unwrap(), 404, "no model yet"),
    ];
    expect_errors(model_cases).await;
    // Nothing of that was stored or learned.
    let model = t.net.nodes[0].client.model_status().await.unwrap();
    assert_eq!(
        (
            model["trained"].as_bool(),
            model["stored_outcomes"].as_u64()
        ),
        (Some(false), Some(0))
    );
}

/// Each response has the status and an error naming the reason.
async fn expect_errors(cases: Vec<(reqwest::Response, u16, &str)>) {
    for (response, status, reason) in cases {
        assert_eq!(response.status().as_u16(), status, "{reason}");
        let body: serde_json::Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains(reason),
            "{error:?} does not mention {reason:?}"
        );
    }
}

fn envelope(channel: &str, sender: NodeId, body: &[u8]) -> Envelope {
    Envelope {
        channel: Channel::parse(channel).unwrap(),
        id: MessageId::random().unwrap(),
        sender,
        // Fresh: frames stamped outside the node's window are dropped.
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        content_type: "text/plain".into(),
        body: body.to_vec(),
    }
}

/// A frame signed by `key`, whatever its envelopes claim.
fn signed(key: &NodeKey, author: NodeId, envelopes: Vec<Envelope>) -> Vec<u8> {
    let payload = codec::encode(&FramePayload { author, envelopes }).unwrap();
    sign_payload(key, payload, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long on purpose: One rogue peer against one node: each kind of bad message in turn, then the
// counters.
async fn malformed_oversized_and_forged_messages_from_a_peer_are_rejected_and_counted() {
    // Every kind of bad data at once would get the rogue banned (see the
    // flooding test in membership.rs); here each must be seen and counted.
    let t = start(
        1,
        &["--max-message-bytes", "1024", "--ban-threshold", "100000"],
    )
    .await;
    let node = &t.net.nodes[0];
    let mut subscriber = Collector::subscribe(&t.net, &[0], "coordination")
        .await
        .unwrap();
    let tcp = node.tcp_addr().unwrap();
    let mut rogue = RoguePeer::new(&t.net.options.network).unwrap();
    rogue.connect(&tcp, "coordination").await.unwrap();
    let me = node_id_of(&rogue.peer_id).unwrap();

    let rogue_key = NodeKey::from_seed(*rogue.key.seed()).unwrap();
    let key = &rogue_key;
    let stranger = NodeKey::generate().unwrap();
    let rejected_kinds = vec![
        b"\xff\x00 not cbor at all".to_vec(),
        // A body over the node's limit.
        signed(key, me, vec![envelope("coordination", me, &[b'x'; 2000])]),
        // Signed by another key while claiming to be the rogue's.
        signed(&stranger, me, vec![envelope("coordination", me, b"forged")]),
        // The rogue signing an envelope that claims another sender.
        signed(
            key,
            me,
            vec![envelope(
                "coordination",
                stranger.node_id(),
                b"impersonation",
            )],
        ),
        // A channel of another family on the coordination topic.
        signed(key, me, vec![envelope("task:assigned", me, b"wrong topic")]),
        // One bad envelope spoils the whole frame.
        signed(
            key,
            me,
            vec![
                envelope("coordination", me, b"fine"),
                envelope("coordination", stranger.node_id(), b"bad"),
            ],
        ),
        // A lone envelope that is not wrapped in a signed frame.
        envelope("coordination", me, b"not a frame")
            .encode()
            .unwrap(),
    ];
    let expected_rejections = rejected_kinds.len() as u64;
    let rogue_id = rogue.peer_id.to_string();
    // One at a time, so that each travels in its own frame; keep the rogue's
    // swarm running while waiting for the node's verdict on it.
    for (i, data) in rejected_kinds.into_iter().enumerate() {
        rogue.publish_raw("coordination", data).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            rogue.pump(Duration::from_millis(20)).await;
            let peers = node.client.peers().await.unwrap();
            let counted = peers
                .iter()
                .find(|p| p.peer_id == rogue_id)
                .map_or(0, |p| p.rejected_messages);
            if counted == i as u64 + 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "bad message {i} not counted ({counted} so far); node log:\n{}",
                node.log_tail(40)
            );
        }
    }
    let valid = encode_frame(
        key,
        &[envelope("coordination", me, b"hello from a peer")],
        None,
    )
    .unwrap();
    rogue.publish_raw("coordination", valid).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the valid message was never delivered"
        );
        rogue.pump(Duration::from_millis(20)).await;
        if let Some(got) = subscriber.next(Duration::from_millis(20)).await {
            break got;
        }
    };
    // It was sent last, so every rejected message had been processed (and,
    // had it been accepted, delivered) before it.
    assert_eq!(got.event.body, serde_json::json!("hello from a peer"));
    assert_eq!(got.event.sender, me.to_string());
    // A frame larger than the transport limit (which also admits vertices
    // of up to 1 MiB) is dropped before decoding.
    rogue
        .publish_raw("coordination", vec![0u8; 2_200_000])
        .unwrap();
    rogue.pump(Duration::from_millis(200)).await;
    let status = node.client.status().await.unwrap();
    assert_eq!(status.messages.rejected, expected_rejections);
    assert_eq!(status.messages.received, 1);
    assert!(pid_alive(node.pid()));
    // And the node still serves its other peers: a second node joins and
    // exchanges messages with it.
    drop(subscriber);
    let mut t = t;
    t.net.add_node(&[]).await.unwrap();
    t.net.wait_full_mesh(common::MESH_TIMEOUT).await.unwrap();
    let report =
        agentmesh_testnet::demo::exchange(&t.net, "coordination", 1, Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(report.received, vec![2, 2]);
}
