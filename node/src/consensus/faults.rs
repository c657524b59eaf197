//! Injected storage faults, for tests of what a node does when its disk
//! fails (debug builds only: release builds ignore the variable).
//!
//! With `AGENTMESH_INJECT_HISTORY_FAULTS=<file>` set, the node reads the
//! file every 50 ms; while it holds `read`, `write` or `flush`, those
//! operations on the consensus history fail as a failing disk would make
//! them fail (an I/O error from sled).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const VARIABLE: &str = "AGENTMESH_INJECT_HISTORY_FAULTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Read = 1,
    Write = 2,
    Flush = 3,
}

/// Which fault is injected now, shared with the file watcher.
#[derive(Default)]
pub struct FaultSwitch(AtomicU8);

impl FaultSwitch {
    /// An injected error for `op` if that fault is switched on.
    pub fn check(&self, op: Fault) -> Result<(), agentmesh_store::StoreError> {
        if self.0.load(Ordering::Relaxed) == op as u8 {
            return Err(agentmesh_store::StoreError::Sled(sled::Error::Io(
                std::io::Error::other(format!("injected {op:?} fault")),
            )));
        }
        Ok(())
    }

    fn set(&self, text: &str) {
        let fault = match text.trim() {
            "read" => Fault::Read as u8,
            "write" => Fault::Write as u8,
            "flush" => Fault::Flush as u8,
            _ => 0,
        };
        self.0.store(fault, Ordering::Relaxed);
    }
}

/// The switch, watched from the file the variable names, if it is set.
pub fn from_env() -> Option<Arc<FaultSwitch>> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let path = PathBuf::from(std::env::var_os(VARIABLE)?);
    tracing::warn!(file = %path.display(), "storage fault injection is on (a test build)");
    let switch = Arc::new(FaultSwitch::default());
    let watched = switch.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(50));
        loop {
            every.tick().await;
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            watched.set(&text);
        }
    });
    Some(switch)
}
