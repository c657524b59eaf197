//! Avalanche-style DAG consensus for agentmesh.
//!
//! [`Engine`] is a pure state machine: inputs and the current time in,
//! [`Output`]s out. [`sim`] runs many engines in one process over a seeded,
//! simulated network with Byzantine strategies.

pub mod analysis;
pub mod bootstrap;
pub mod engine;
pub mod graylist;
pub mod history;
pub mod params;
pub mod sim;
pub mod snowball;
pub mod timeouts;
pub mod validators;

pub use bootstrap::{BootstrapProgress, BootstrapReply, BootstrapRequest, Bootstrapper};
pub use engine::{
    BootstrapRefusal, Engine, EngineStats, Output, PollId, ProposeError, RequestId, VertexStatus,
};
pub use graylist::Misbehaviour;
pub use history::{Decision, History, HistoryError, MemoryHistory};
pub use params::{Params, ParamsError};
pub use validators::{ValidatorSet, ValidatorSetError};
