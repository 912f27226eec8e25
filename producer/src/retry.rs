//! Riding out a Redis restart in the client's own reads and writes: idempotent store operations
//! are retried with backoff while Redis is unreachable, for at most `reconnect_max_wait`.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;

/// First and largest pause between two attempts.
pub(crate) const BACKOFF: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(5));

/// Runs `op` until it succeeds, fails with something other than a Redis failure, or `max_wait`
/// has passed since the first failure (then returns the last error). `op` must be idempotent:
/// an attempt whose answer was lost may have been applied.
pub(crate) async fn store_retrying<T, F, Fut>(
    what: &str,
    max_wait: Duration,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = BACKOFF.0;
    let mut deadline = None;
    loop {
        match op().await {
            Err(e) if e.is_store_failure() => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + max_wait);
                if Instant::now() + pause > deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in = ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
            other => return other,
        }
    }
}
