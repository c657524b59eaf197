//! What the API shows of the engine's state: vertices, task claims, and the
//! `consensus:finalized` events.

use super::history::DiskHistory;
use crate::types::{Claim, ClaimInfo, TaskInfo, TransactionBody, VertexInfo};
use agentmesh_consensus::{Decision, Engine, History, VertexStatus};
use agentmesh_protocol::{Vertex, VertexId};
use serde::Serialize;

pub fn task_key(task: &str) -> String {
    format!("task:{task}")
}

fn bodies(vertex: &Vertex) -> Vec<TransactionBody> {
    vertex
        .transactions()
        .iter()
        .map(|tx| TransactionBody {
            key: tx.key.clone(),
            payload: String::from_utf8_lossy(&tx.payload).into_owned(),
        })
        .collect()
}

pub fn vertex_info(engine: &Engine<DiskHistory>, id: &VertexId) -> Option<VertexInfo> {
    let status = engine.status(id);
    let vertex = match status {
        VertexStatus::Unknown => return None,
        VertexStatus::Pending | VertexStatus::Processing { .. } => {
            Some(engine.undecided_vertex(id).cloned()?)
        }
        VertexStatus::Accepted => Some(engine.history().vertex(id)?),
        // Rejected vertices keep no content.
        VertexStatus::Rejected => None,
    };
    let (name, confidence, preferred) = match status {
        VertexStatus::Pending => ("pending", 0, false),
        VertexStatus::Processing {
            confidence,
            preferred,
        } => ("processing", confidence, preferred),
        VertexStatus::Accepted => ("accepted", 0, true),
        _ => ("rejected", 0, false),
    };
    Some(VertexInfo {
        id: id.to_string(),
        status: name.into(),
        is_final: matches!(status, VertexStatus::Accepted | VertexStatus::Rejected),
        confidence,
        preferred,
        author: vertex.as_ref().map(|v| v.author().to_string()),
        seq: vertex.as_ref().map(|v| v.seq()),
        timestamp_ms: vertex.as_ref().map(|v| v.timestamp_ms()),
        parents: vertex
            .as_ref()
            .map(|v| v.parents().iter().map(|p| p.to_string()).collect())
            .unwrap_or_default(),
        transactions: vertex.as_ref().map(bodies).unwrap_or_default(),
    })
}

/// The claim a vertex makes on `key`, if its payload is a claim.
fn claim_in(vertex: &Vertex, key: &str) -> Option<ClaimInfo> {
    let tx = vertex.transactions().iter().find(|tx| tx.key == key)?;
    let claim: Claim = serde_json::from_slice(&tx.payload).ok()?;
    Some(ClaimInfo {
        claimant: claim.claimant,
        node: claim.node,
        vertex: vertex.id().to_string(),
    })
}

pub fn task_info(engine: &Engine<DiskHistory>, task: &str) -> TaskInfo {
    let key = task_key(task);
    let winner = engine
        .history()
        .winner(&key)
        .and_then(|id| engine.history().vertex(&id))
        .and_then(|v| claim_in(&v, &key));
    let candidates: Vec<ClaimInfo> = engine
        .candidates(&key)
        .iter()
        .filter_map(|id| engine.undecided_vertex(id))
        .filter_map(|v| claim_in(v, &key))
        .collect();
    let status = if winner.is_some() {
        "claimed"
    } else if candidates.is_empty() {
        "unclaimed"
    } else {
        "contested"
    };
    TaskInfo {
        task: task.to_string(),
        status: status.into(),
        winner,
        candidates,
    }
}

#[derive(Serialize)]
struct DecidedEvent<'a> {
    vertex: String,
    decision: &'a str,
    author: String,
    seq: u64,
    decided_at_ms: u64,
    transactions: Vec<TransactionBody>,
}

pub fn decided_event(vertex: &Vertex, decision: Decision, now_ms: u64) -> Vec<u8> {
    let event = DecidedEvent {
        vertex: vertex.id().to_string(),
        decision: match decision {
            Decision::Accepted => "accepted",
            Decision::Rejected => "rejected",
        },
        author: vertex.author().to_string(),
        seq: vertex.seq(),
        decided_at_ms: now_ms,
        transactions: bodies(vertex),
    };
    serde_json::to_vec(&event).unwrap_or_default()
}
