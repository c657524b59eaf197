//! The agentmesh node: configuration, libp2p networking, channels and the
//! agent API. The `agentmesh` binary is a thin CLI over this library; Rust
//! programs can embed a node with [`node::start`].

pub mod api;
pub mod ca;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod consensus;
pub mod identity;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod model_cli;
pub mod network;
pub mod node;
pub mod patterns;
pub mod ready;
pub mod types;
