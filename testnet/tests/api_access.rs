//! Who may drive a real node's agent API: only holders of its token, only
//! under an allowed Host, JSON endpoints only with a JSON content type.
//! What a web page can send (cross-site "simple" requests, a rebound DNS
//! name) is refused and changes nothing.

mod common;

use common::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_and_strangers_cannot_drive_the_api() {
    let t = start(1, &["--api-allowed-hosts", "node0.internal"]).await;
    let node = &t.net.nodes[0];
    let api = node.info.api;
    let anonymous = reqwest::Client::new();
    let holder = node.http();
    let url = |path: &str| format!("http://{api}{path}");

    // What any web page can send without a preflight: no token header,
    // text/plain bodies.
    let cross_site_message = anonymous
        .post(url("/v1/channels/coordination/messages"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site_message.status().as_u16(), 401);
    let body: serde_json::Value = cross_site_message.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("missing API token"), "{error}");
    assert!(error.contains("api-token"), "names the token file: {error}");
    // A proposal sent as text/plain, as a form or fetch(no-cors) would.
    let plain_proposal = |http: &reqwest::Client| {
        http.post(url("/v1/transactions"))
            .header("content-type", "text/plain")
            .body(r#"{"transactions":[{"key":"k","payload":"p"}]}"#)
            .send()
    };
    let cross_site_tx = plain_proposal(&anonymous).await.unwrap();
    assert_eq!(cross_site_tx.status().as_u16(), 401);

    // A wrong token, and the right one under a name DNS rebinding uses.
    let wrong = anonymous
        .get(url("/v1/status"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    for host in [
        "evil.example",
        "evil.example:7700",
        "127.0.0.1.evil.example",
    ] {
        let rebound = holder
            .get(url("/v1/status"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status().as_u16(), 403, "Host {host}");
    }
    // Names the operator allowed, and loopback ones, pass.
    for host in ["node0.internal:80", "localhost", &api.to_string()] {
        let allowed = holder
            .get(url("/v1/status"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status().as_u16(), 200, "Host {host}");
    }

    // Even with the token, a JSON endpoint wants a JSON content type.
    let plain = plain_proposal(&holder).await.unwrap();
    assert_eq!(plain.status().as_u16(), 415);

    // Nothing of that was published or proposed.
    let channels = node.client.channels().await.unwrap();
    let published: u64 = channels.counters.iter().map(|c| c.published).sum();
    assert_eq!(published, 0);
    let consensus = node.client.consensus().await.unwrap();
    assert_eq!(
        consensus.processing + consensus.accepted_vertices as usize,
        0
    );

    // The health probe needs nothing; the token holder gets everything.
    let health = anonymous.get(url("/v1/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Load balancers probe with HEAD as well.
    let head = anonymous.head(url("/v1/health")).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let receipt = node
        .client
        .publish("coordination", "text/plain", b"from the holder".to_vec())
        .await
        .unwrap();
    assert!(!receipt.id.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let t = start(1, &[]).await;
    let node = &t.net.nodes[0];
    let http = node.http();
    let url = format!("http://{}/v1/channels/coordination/events", node.info.api);
    let mut open = Vec::new();
    for _ in 0..64 {
        let stream = http.get(&url).send().await.unwrap();
        assert_eq!(stream.status().as_u16(), 200);
        open.push(stream);
    }
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("64 event streams"));
    // The server notices a closed stream at its next write (a message or
    // the keep-alive comment): a message on the channel makes one.
    drop(open.pop());
    let what = "the place of the closed stream to be freed";
    agentmesh_testnet::wait::until(what, std::time::Duration::from_secs(30), || async {
        node.client
            .publish("coordination", "text/plain", b"tick".to_vec())
            .await?;
        let again = http.get(&url).send().await?;
        Ok((again.status().as_u16() == 200).then_some(again))
    })
    .await
    .unwrap();
}

/// The node describes its API at /v1/openapi.json (no token needed), and
/// the description is the API: every documented route answers (not the
/// "no such endpoint" fallback, nor 405), with the token it says it needs,
/// and with a status the description lists for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_served_description_names_exists_and_is_guarded_as_described() {
    let t = start(1, &[]).await;
    let node = &t.net.nodes[0];
    let api = node.info.api;
    let anonymous = reqwest::Client::new();
    let holder = node.http();
    let spec: serde_json::Value = anonymous
        .get(format!("http://{api}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 23, "{} paths", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        let url = format!(
            "http://{api}{}",
            path.replace("{name}", "coordination")
                .replace("{pattern}", "coordination")
                .replace("{id}", &"0".repeat(64))
        );
        for (method, op) in item.as_object().unwrap() {
            let public = op["security"] == serde_json::json!([{}]);
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            for (client, with_token) in [(&anonymous, false), (&holder, true)] {
                let response = client
                    .request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body = if path.ends_with("/events") {
                    String::new() // a live stream: its status says enough
                } else {
                    response.text().await.unwrap()
                };
                assert!(
                    !body.contains("no such endpoint") && status != 405,
                    "{method} {path}: {status} {body}"
                );
                assert!(
                    op["responses"].get(status.to_string()).is_some(),
                    "{method} {path} answered {status}, which its description does not list: {body}"
                );
                if !with_token {
                    let expected = if public { 200 } else { 401 };
                    assert_eq!(status, expected, "{method} {path} without a token: {body}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 26, "{checked} operations");
    // And what it does not name does not exist.
    let unknown = holder
        .get(format!("http://{api}/v1/undocumented"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
}
