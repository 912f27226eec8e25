//! Retrying Redis operations that a worker must not give up on while they can still succeed
//! (storing outcomes, reading inputs): with backoff, logged, for as long as the errors are
//! transient (a lost connection, a server loading or failing over); nothing is acknowledged
//! meanwhile. An error that retrying cannot fix ([`rask_common::Error::is_permanent`]) is
//! returned to the caller at once.

use std::future::Future;
use std::time::Duration;

/// First and largest pause between attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// Runs `attempt` until it succeeds, pausing 50 ms, doubling to at most 5 s, between transient
/// failures; `what` names the operation in the log.
///
/// # Errors
/// The first error that is not transient.
pub(crate) async fn until_ok<T, F, Fut>(what: &str, mut attempt: F) -> rask_common::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = rask_common::Result<T>>,
{
    let mut pause = BACKOFF.0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
    }
}
