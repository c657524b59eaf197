//! Runs the adversarial campaign: `cargo run --release -p agentmesh-consensus
//! --example campaign -- [RUNS] [FIRST_SEED] [FILTER]`; prints JSON.
use agentmesh_consensus::sim::campaign;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args.first().and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let filter = args.get(2).map(String::as_str);
    let report = campaign::run(runs, seed, filter);
    println!("{}", campaign::to_json(&report));
}
