//! Retrying Redis operations that a worker must not give up on (storing outcomes, reading
//! inputs): with backoff, logged, for as long as it takes; nothing is acknowledged meanwhile.

use std::future::Future;
use std::time::Duration;

/// First and largest pause between attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// Runs `attempt` until it succeeds, pausing 50 ms, doubling to at most 5 s, between failures;
/// `what` names the operation in the log.
pub(crate) async fn until_ok<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = rask_common::Result<T>>,
{
    let mut pause = BACKOFF.0;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
    }
}
