//! Setting up a host as the deployment docs say: `agentmesh init` writes a
//! configuration that `agentmesh run` starts from, and the systemd unit in
//! deploy/ passes `systemd-analyze verify`.

use agentmesh_testnet::wait;
use std::process::Command;
use std::time::Duration;

fn agentmesh(args: &[&str]) -> (bool, String) {
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let out = Command::new(bin).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_configuration_a_node_runs_from() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, report) = agentmesh(&[
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--network",
        "initnet",
        "--public-address",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    assert!(ok, "{report}");
    let peer_id = report
        .lines()
        .find_map(|l| l.strip_prefix("peer id"))
        .map(|s| s.trim().to_string())
        .expect(&report);
    let config = data.join("agentmesh.toml");
    // The node starts from the file (flags move it to loopback, port 0).
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let mut child = Command::new(bin)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1,/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait::until(
        "the node to start from the init file",
        Duration::from_secs(60),
        || async { Ok(agentmesh_node::ready::read(&data).ok()) },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.unwrap();
    assert_eq!(ready.peer_id, peer_id, "init's peer id is the node's");
    // Run again without --force: refused, the file kept.
    let before = std::fs::read_to_string(&config).unwrap();
    let (ok, out) = agentmesh(&["init", "--data-dir", data.to_str().unwrap()]);
    assert!(!ok && out.contains("--force"), "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/agentmesh.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/agentmesh run --config "));
    // verify checks that ExecStart's program exists: point it at the build.
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentmesh.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/agentmesh", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
