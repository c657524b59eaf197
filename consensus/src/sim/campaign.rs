//! Adversarial campaigns: many seeded runs of named scenarios, counted for
//! safety violations and stalls. `agentmesh-testnet campaign` prints the
//! result as JSON; the test suite runs a fixed subset.

use super::{Partition, Restart, Sim, SimConfig, Strategy};

/// One kind of run: how to build it from a seed, and what to check.
pub struct Scenario {
    pub name: &'static str,
    pub build: fn(u64) -> SimConfig,
    /// A key accepted by an honest node before this time (ms) is a
    /// violation: a partition side without α-confidence of the weight
    /// decided it.
    pub quiet_until_ms: Option<(&'static str, u64)>,
    /// Seconds of computing per run rather than a fraction of one: a
    /// campaign runs a fiftieth as many of these (at least one).
    pub heavy: bool,
}

impl Scenario {
    /// Runs of this scenario in a campaign of `runs` per scenario.
    pub fn runs_in(&self, runs: u64) -> u64 {
        if self.heavy {
            (runs / 50).max(1)
        } else {
            runs
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScenarioResult {
    pub name: &'static str,
    pub runs: u64,
    /// Runs in which two honest nodes accepted conflicting transactions (or
    /// decided a vertex differently).
    pub safety_violations: u64,
    /// Runs in which a side of a partition decided what it must not.
    pub decided_while_partitioned: u64,
    /// Runs that ended with honest work undecided: a virtuous key or a
    /// contested task key some honest node has no winner for.
    pub stalled: u64,
    /// Simulated time until every honest node accepted every contested
    /// task key, over the runs that got there (ms).
    pub decide_ms_max: Option<u64>,
    pub decide_ms_mean: Option<u64>,
    /// The first violating seed and what happened, to replay it.
    pub first_violation: Option<(u64, String)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignReport {
    pub runs: u64,
    pub safety_violations: u64,
    pub stalled: u64,
    pub scenarios: Vec<ScenarioResult>,
}

fn adaptive(nodes: usize, byzantine: usize, seed: u64) -> SimConfig {
    let mut c = SimConfig::new(nodes, seed).with_byzantine(Strategy::Adaptive, byzantine);
    c.claimants_per_key = nodes - byzantine;
    c.contested_keys = 2;
    c.deadline_ms = 120_000;
    c
}

/// Conflicting claims of `job:1`, one on each side of a silent partition
/// of `first` against the rest, healed at 6 s.
fn partitioned(nodes: usize, first: usize, seed: u64) -> SimConfig {
    let mut c = SimConfig::new(nodes, seed);
    c.virtuous_per_node = 1;
    c.contested_keys = 0;
    c.partitions = vec![Partition::split(nodes, first, 0, PARTITION_HEALS_MS)];
    c.proposals = vec![
        (100, 0, "task:job-1".into(), b"left".to_vec()),
        (100, nodes - 1, "task:job-1".into(), b"right".to_vec()),
    ];
    c.deadline_ms = 180_000;
    c
}

const PARTITION_HEALS_MS: u64 = 6_000;

fn every_strategy(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(30, seed);
    for strategy in [
        Strategy::Adaptive,
        Strategy::LateRival,
        Strategy::Contrary,
        Strategy::Flip,
        Strategy::Silent,
        Strategy::Equivocate,
    ] {
        c = c.with_byzantine(strategy, 1);
    }
    c.deadline_ms = 120_000;
    c
}

/// A fifth of the weight releasing ground rivals of vertices some honest
/// node has just accepted, to the nodes still polling them.
fn late_rivals(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(30, seed).with_byzantine(Strategy::LateRival, 6);
    c.virtuous_per_node = 3;
    c.deadline_ms = 120_000;
    c
}

fn churn(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(20, seed);
    c.workload_ms = 3_000;
    c.restarts = vec![
        Restart {
            node: 1,
            down_ms: 500,
            up_ms: 2_500,
            keep_history: true,
        },
        Restart {
            node: 2,
            down_ms: 1_200,
            up_ms: 1_900,
            keep_history: true,
        },
        Restart {
            node: 3,
            down_ms: 0,
            up_ms: 2_000,
            keep_history: false,
        },
        Restart {
            node: 4,
            down_ms: 0,
            up_ms: 3_500,
            keep_history: false,
        },
    ];
    c.deadline_ms = 120_000;
    c
}

fn many_way(byzantine: usize, seed: u64) -> SimConfig {
    let mut c = SimConfig::new(100, seed).with_byzantine(Strategy::Adaptive, byzantine);
    c.virtuous_per_node = 0;
    c.contested_keys = 1;
    c.claimants_per_key = 100 - byzantine;
    c.latency_ms = (500, 1_500);
    c.workload_ms = 100;
    c.deadline_ms = 600_000;
    c
}

fn sybils(seed: u64) -> SimConfig {
    let mut c = SimConfig::new(10, seed).with_sybils(300);
    c.deadline_ms = 120_000;
    c
}

/// Every scenario, cheapest first.
pub fn scenarios() -> Vec<Scenario> {
    let quiet = Some(("task:job-1", PARTITION_HEALS_MS));
    vec![
        Scenario {
            name: "adaptive_n4_1byz",
            build: |s| adaptive(4, 1, s),
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "adaptive_n7_2byz",
            build: |s| adaptive(7, 2, s),
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "every_strategy_20pct_n30",
            build: every_strategy,
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "late_rival_20pct_n30",
            build: late_rivals,
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "churn_n20",
            build: churn,
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "sybil_300_ids_n10",
            build: sybils,
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "silent_halves_n28",
            build: |s| partitioned(28, 14, s),
            quiet_until_ms: quiet,
            heavy: false,
        },
        Scenario {
            name: "silent_halves_n30",
            build: |s| partitioned(30, 15, s),
            quiet_until_ms: quiet,
            heavy: false,
        },
        Scenario {
            name: "silent_halves_n40",
            build: |s| partitioned(40, 20, s),
            quiet_until_ms: quiet,
            heavy: false,
        },
        Scenario {
            name: "silent_third_n30",
            build: |s| partitioned(30, 10, s),
            quiet_until_ms: None,
            heavy: false,
        },
        Scenario {
            name: "silent_halves_n100",
            build: |s| partitioned(100, 50, s),
            quiet_until_ms: quiet,
            heavy: true,
        },
        Scenario {
            name: "silent_third_n100",
            build: |s| partitioned(100, 33, s),
            quiet_until_ms: None,
            heavy: true,
        },
        Scenario {
            name: "many_way_n100_rtt_1_3s",
            build: |s| many_way(0, s),
            quiet_until_ms: None,
            heavy: true,
        },
        Scenario {
            name: "many_way_n100_rtt_1_3s_20pct_adaptive",
            build: |s| many_way(20, s),
            quiet_until_ms: None,
            heavy: true,
        },
    ]
}

/// Runs `seed_from..seed_from + runs` of one scenario.
pub fn run_scenario(scenario: &Scenario, seed_from: u64, runs: u64) -> ScenarioResult {
    let mut result = ScenarioResult {
        name: scenario.name,
        ..ScenarioResult::default()
    };
    let mut decide = Vec::new();
    for seed in seed_from..seed_from + runs {
        let config = (scenario.build)(seed);
        let mut sim = Sim::new(config);
        let report = sim.run();
        result.runs += 1;
        if !report.safety_violations.is_empty() {
            result.safety_violations += 1;
            if result.first_violation.is_none() {
                result.first_violation = Some((seed, report.safety_violations[0].clone()));
            }
        }
        if let Some((key, until)) = scenario.quiet_until_ms {
            let early = sim
                .accepted_at
                .get(key)
                .is_some_and(|at| at.iter().any(|(_, ms)| *ms < until));
            if early {
                result.decided_while_partitioned += 1;
            }
        }
        // Honest work only: conflicts an adversary started may stay open.
        if !report.liveness_misses.is_empty() || report.contested_decided < report.contested_keys {
            result.stalled += 1;
        }
        decide.extend(report.contested_decided_at_ms);
    }
    if !decide.is_empty() {
        result.decide_ms_max = decide.iter().max().copied();
        result.decide_ms_mean = Some(decide.iter().sum::<u64>() / decide.len() as u64);
    }
    result
}

/// Runs every scenario whose name contains `filter` (all without one).
pub fn run(runs: u64, seed_from: u64, filter: Option<&str>) -> CampaignReport {
    let mut report = CampaignReport::default();
    for scenario in scenarios() {
        if filter.is_some_and(|f| !scenario.name.contains(f)) {
            continue;
        }
        let result = run_scenario(&scenario, seed_from, scenario.runs_in(runs));
        report.runs += result.runs;
        report.safety_violations += result.safety_violations + result.decided_while_partitioned;
        report.stalled += result.stalled;
        report.scenarios.push(result);
    }
    report
}

fn opt(v: Option<u64>) -> String {
    v.map_or("null".to_string(), |v| v.to_string())
}

/// The report as one line of JSON:
/// `{"runs":..,"safety_violations":..,"stalled":..,"strategies":{name:{..}}}`.
pub fn to_json(report: &CampaignReport) -> String {
    let scenarios: Vec<String> = report
        .scenarios
        .iter()
        .map(|s| {
            let first = s.first_violation.as_ref().map_or("null".to_string(), |(seed, what)| {
                format!("{{\"seed\":{seed},\"what\":{:?}}}", what)
            });
            format!(
                "\"{}\":{{\"runs\":{},\"safety_violations\":{},\"decided_while_partitioned\":{},\"stalled\":{},\"decide_ms_mean\":{},\"decide_ms_max\":{},\"first_violation\":{}}}",
                s.name,
                s.runs,
                s.safety_violations,
                s.decided_while_partitioned,
                s.stalled,
                opt(s.decide_ms_mean),
                opt(s.decide_ms_max),
                first
            )
        })
        .collect();
    format!(
        "{{\"runs\":{},\"safety_violations\":{},\"stalled\":{},\"strategies\":{{{}}}}}",
        report.runs,
        report.safety_violations,
        report.stalled,
        scenarios.join(",")
    )
}
