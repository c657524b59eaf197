//! Launches and drives local agentmesh node processes: the testnet demo,
//! the integration tests and the benchmarks all go through this crate, so
//! they exercise the real binary over real sockets.

pub mod authority;
pub mod bench;
pub mod binary;
pub mod claims;
pub mod collect;
pub mod consensus_bench;
pub mod demo;
pub mod federated_bench;
pub mod history_bench;
pub mod hosts;
pub mod membership_bench;
pub mod mesh;
pub mod model_bench;
pub mod nat_bench;
#[cfg(feature = "nats")]
pub mod nats_bench;
pub mod partition;
pub mod patterns;
pub mod pending_bench;
pub mod process;
pub mod rogue;
pub mod state;
pub mod sybil_bench;
pub mod sync_bench;
pub mod transport_bench;
pub mod wait;

pub use mesh::{Testnet, TestnetOptions};
pub use process::{NodeProcess, NodeSpec};
