//! What a simulation run showed: safety, liveness, finality, graylisting.

use super::{Sim, Strategy};
use crate::history::{Decision, History};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Simulated time at the end (ms).
    pub end_ms: u64,
    pub messages: u64,
    /// Two honest nodes decided a vertex differently, or accepted different
    /// winners for one conflict key.
    pub safety_violations: Vec<String>,
    /// Uncontested keys issued by honest nodes.
    pub virtuous_keys: usize,
    /// (honest node, virtuous key) pairs without an accepted winner.
    pub liveness_misses: Vec<String>,
    /// Contested keys whose winner every honest node agrees on.
    pub contested_decided: usize,
    pub contested_keys: usize,
    /// Vertices still undecided at some honest node at the end.
    pub undecided: usize,
    /// Time from proposal to acceptance, per (honest node, transaction).
    pub finality_ms: Vec<u64>,
    /// Byzantine nodes graylisted by at least one honest node at the end.
    pub byzantine_graylisted: usize,
    pub honest_graylisted: usize,
    /// When the last honest node accepted the last contested key, if every
    /// honest node accepted every one (simulated ms).
    pub contested_decided_at_ms: Option<u64>,
}

impl Report {
    pub(super) fn collect(sim: &Sim) -> Report {
        let honest: Vec<usize> = (0..sim.nodes.len())
            .filter(|i| sim.nodes[*i].strategy == Strategy::Honest)
            .collect();
        let mut report = Report {
            end_ms: sim.now,
            messages: sim.messages,
            finality_ms: sim.finality_ms.clone(),
            ..Report::default()
        };
        let mut decisions: HashMap<_, (Decision, usize)> = HashMap::new();
        for &i in &honest {
            let history = sim.nodes[i].engine.history();
            for (id, (decision, _)) in history.decisions() {
                match decisions.get(id) {
                    Some((other, j)) if other != decision => report
                        .safety_violations
                        .push(format!("{id:?}: node {j} {other:?}, node {i} {decision:?}")),
                    Some(_) => {}
                    None => {
                        decisions.insert(*id, (*decision, i));
                    }
                }
            }
            report.undecided +=
                sim.nodes[i].engine.processing_len() + sim.nodes[i].engine.pending_len();
        }
        for (key, issues) in &sim.issued {
            let honest_only = issues
                .iter()
                .all(|(a, _)| *a == usize::MAX || sim.nodes[*a].strategy == Strategy::Honest);
            let one_payload = issues.iter().all(|(_, p)| *p == issues[0].1);
            let virtuous = honest_only && one_payload;
            let winners: Vec<_> = honest
                .iter()
                .map(|&i| sim.nodes[i].engine.history().winner(key))
                .collect();
            let first = winners.iter().flatten().next();
            if let Some(first) = first {
                for (w, &i) in winners.iter().zip(&honest) {
                    if let Some(w) = w {
                        if w != first {
                            report.safety_violations.push(format!(
                                "key {key}: node {i} accepted {w:?}, another {first:?}"
                            ));
                        }
                    }
                }
            }
            if virtuous {
                report.virtuous_keys += 1;
                for (w, &i) in winners.iter().zip(&honest) {
                    if w.is_none() {
                        report
                            .liveness_misses
                            .push(format!("node {i} has no winner for {key}"));
                    }
                }
            } else if key.starts_with("task:") {
                report.contested_keys += 1;
                if winners.iter().all(|w| w.is_some()) {
                    report.contested_decided += 1;
                }
            }
        }
        for node in &sim.nodes {
            let id = node.key.node_id();
            let listed = honest.iter().any(|&i| {
                sim.nodes[i]
                    .engine
                    .graylisted(sim.now)
                    .iter()
                    .any(|(p, _)| *p == id)
            });
            if listed {
                if node.strategy == Strategy::Honest {
                    report.honest_graylisted += 1;
                } else {
                    report.byzantine_graylisted += 1;
                }
            }
        }
        report.finality_ms.sort_unstable();
        if report.contested_keys > 0 && report.contested_decided == report.contested_keys {
            report.contested_decided_at_ms = sim
                .accepted_at
                .iter()
                .filter(|(key, _)| key.starts_with("task:"))
                .flat_map(|(_, at)| at.iter().map(|(_, ms)| *ms))
                .max();
        }
        report
    }

    pub fn finality_percentile(&self, p: f64) -> u64 {
        if self.finality_ms.is_empty() {
            return 0;
        }
        let idx = ((self.finality_ms.len() - 1) as f64 * p).round() as usize;
        self.finality_ms[idx]
    }
}
