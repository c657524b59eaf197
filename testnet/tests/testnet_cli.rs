//! The testnet command itself: `up`, `status` and `down` leave nodes running
//! between invocations and stop them cleanly.

use agentmesh_testnet::process::pid_alive;
use agentmesh_testnet::state::TestnetState;
use std::process::Command;

fn testnet(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let bin = agentmesh_testnet::binary::build_for_tests().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentmesh-testnet"))
        .arg("--bin")
        .arg(&bin)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn up_status_and_down_manage_background_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = testnet(dir.path(), &["up", "3"]);
    assert!(ok, "{out}");
    let state = TestnetState::load(dir.path()).unwrap();
    assert_eq!(state.nodes.len(), 3);
    assert!(
        state.nodes.iter().all(|n| pid_alive(n.pid)),
        "nodes outlive `up`"
    );

    let (ok, out) = testnet(dir.path(), &["status"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("running").count(), 3, "{out}");

    let (ok, out) = testnet(dir.path(), &["up", "2"]);
    assert!(!ok && out.contains("already up"), "{out}");

    let (ok, out) = testnet(dir.path(), &["down"]);
    assert!(ok, "{out}");
    assert!(
        state.nodes.iter().all(|n| !pid_alive(n.pid)),
        "down stops every node"
    );
    let (ok, out) = testnet(dir.path(), &["status"]);
    assert!(!ok && out.contains("no testnet is up"), "{out}");
}
