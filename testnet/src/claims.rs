//! Task claims across a testnet: claim from several nodes at once, then
//! wait until every node reports the final winner.

use crate::{wait, Testnet};
use agentmesh_node::types::ClaimInfo;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Claims `task` for each (node index, agent) at the same moment.
pub async fn claim_at_once(net: &Testnet, task: &str, claimants: &[(usize, String)]) -> Result<()> {
    let claims = claimants.iter().map(|(i, agent)| {
        let client = net.nodes[*i].client.clone();
        let (task, agent) = (task.to_string(), agent.clone());
        async move { client.claim(&task, &agent).await }
    });
    for receipt in futures::future::join_all(claims).await {
        let receipt = receipt?;
        if receipt.status != "processing" {
            bail!("a claim came back {:?}", receipt.status);
        }
    }
    Ok(())
}

/// Every node's final winner for `task`, once all of them have one.
pub async fn final_winners(net: &Testnet, task: &str, timeout: Duration) -> Result<Vec<ClaimInfo>> {
    let result = wait_winners(net, task, timeout).await;
    if result.is_err() {
        // Say where each node stands, so a stall can be understood.
        let mut state = String::new();
        for (i, node) in net.nodes.iter().enumerate() {
            let task_info = node.client.task(task).await;
            let consensus = node.client.consensus().await;
            state.push_str(&format!("\nnode {i}: {task_info:?}\n        {consensus:?}"));
        }
        return result.map_err(|e| e.context(format!("consensus state:{state}")));
    }
    result
}

async fn wait_winners(net: &Testnet, task: &str, timeout: Duration) -> Result<Vec<ClaimInfo>> {
    wait::until(
        &format!("a final winner of {task} on every node"),
        timeout,
        || async {
            let mut all = Vec::new();
            for node in &net.nodes {
                match node.client.task(task).await?.winner {
                    Some(w) => all.push(w),
                    None => return Ok(None),
                }
            }
            Ok(Some(all))
        },
    )
    .await
}

pub struct ContestReport {
    pub task: String,
    pub claimants: Vec<(usize, String)>,
    pub winners: Vec<ClaimInfo>,
    pub elapsed: Duration,
}

/// Every node claims `task` at once for its own agent; every node must then
/// report the same single winner.
pub async fn contested_claim(
    net: &Testnet,
    task: &str,
    timeout: Duration,
) -> Result<ContestReport> {
    let claimants: Vec<(usize, String)> = (0..net.nodes.len())
        .map(|i| (i, format!("agent-{i}")))
        .collect();
    let started = Instant::now();
    claim_at_once(net, task, &claimants).await?;
    let winners = final_winners(net, task, timeout).await?;
    let elapsed = started.elapsed();
    if winners.iter().any(|w| *w != winners[0]) {
        bail!("nodes disagree on the winner of {task}: {winners:?}");
    }
    Ok(ContestReport {
        task: task.to_string(),
        claimants,
        winners,
        elapsed,
    })
}

pub fn print_contest(report: &ContestReport) {
    println!();
    println!(
        "task claim '{}': {} agents on {} nodes claimed it at once",
        report.task,
        report.claimants.len(),
        report.winners.len()
    );
    for (i, w) in report.winners.iter().enumerate() {
        println!(
            "  node {i} says the winner is {} (vertex {}…)",
            w.claimant,
            &w.vertex[..12]
        );
    }
    println!(
        "one winner everywhere: {} — final on all nodes {:.0} ms after the claims",
        report.winners[0].claimant,
        report.elapsed.as_secs_f64() * 1e3
    );
}
