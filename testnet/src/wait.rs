//! Waiting for conditions with deadlines (never fixed sleeps).

use anyhow::{bail, Context, Result};
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Ok(Some(value))` or `timeout` passes.
/// `Ok(None)` means "not yet"; an error ends the wait at once.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()
            .await
            .with_context(|| format!("while waiting for {what}"))?
        {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
