//! Batched small tasks: a `map` packs many calls of one function into one message
//! ([`crate::message::Call`], [`crate::TaskMessage::calls`]); a worker runs them one after the
//! other, stores every outcome in one pipeline and acknowledges the message once (see
//! docs/protocol.md, "Batch messages").
//!
//! How many calls go into one message ([`size_for`]): what the caller set
//! ([`crate::TaskOptions::batch`]), else a size from the function's average run time, which
//! workers measure and publish ([`publish_pace`], read by clients with [`read_pace`]): a batch
//! holds a worker's slot for about [`BUDGET`] at most, functions whose calls take
//! [`UNBATCHED_FROM`] or more are not batched, and a function no worker has measured yet is
//! not batched either (its first map runs one message per task).

use std::time::Duration;

use redis::AsyncCommands;

use crate::error::Result;
use crate::keys::TaskKey;
use crate::store::Store;

/// Most calls one batch message carries.
pub const MAX_CALLS: usize = 100;

/// Most bytes of arguments one batch message carries (a call is never split: a call larger than
/// this goes alone).
pub const MAX_BYTES: usize = 256 << 10;

/// The run time a batch of calls of measured run time may add up to.
pub const BUDGET: Duration = Duration::from_millis(2);

/// The average run time from which calls are not batched.
pub const UNBATCHED_FROM: Duration = Duration::from_millis(1);

/// The calls per message for a function whose average run time is `average` (`None`: not
/// measured yet): 1 (not batched) when unknown or at least [`UNBATCHED_FROM`], else as many as
/// fit in [`BUDGET`], between 1 and [`MAX_CALLS`].
pub fn size_for(average: Option<Duration>) -> usize {
    match average {
        None => 1,
        Some(average) if average >= UNBATCHED_FROM => 1,
        Some(average) => {
            let fit = BUDGET.as_nanos() / average.as_nanos().max(1);
            usize::try_from(fit)
                .unwrap_or(MAX_CALLS)
                .clamp(1, MAX_CALLS)
        }
    }
}

/// A fresh key for a batch message of `function`: `{function}.batch-{32 hex digits}` (no
/// outcome is ever stored under it; it names the batch in logs, dead letters and its
/// redelivery counter).
pub fn batch_key(function: &str) -> TaskKey {
    TaskKey::unique(&format!("{function}.batch"))
}

/// Writes the average run times workers measured, `(function, average)`, to
/// [`crate::Keys::pace`] (one `HSET`).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn publish_pace(store: &Store, averages: &[(String, Duration)]) -> Result<()> {
    if averages.is_empty() {
        return Ok(());
    }
    let fields: Vec<(&str, u64)> = averages
        .iter()
        .map(|(f, d)| (f.as_str(), u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
        .collect();
    let mut conn = store.connection();
    let () = conn.hset_multiple(store.keys().pace(), &fields).await?;
    Ok(())
}

/// The average run time of `function` that workers published, if any (one `HGET`).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn read_pace(store: &Store, function: &str) -> Result<Option<Duration>> {
    let mut conn = store.connection();
    let ns: Option<u64> = conn.hget(store.keys().pace(), function).await?;
    Ok(ns.map(Duration::from_nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_functions_are_batched_within_the_budget_and_slow_or_unknown_ones_are_not() {
        assert_eq!(size_for(None), 1);
        assert_eq!(size_for(Some(Duration::from_millis(1))), 1);
        assert_eq!(size_for(Some(Duration::from_millis(5))), 1);
        assert_eq!(size_for(Some(Duration::from_micros(500))), 4);
        assert_eq!(size_for(Some(Duration::from_micros(100))), 20);
        assert_eq!(size_for(Some(Duration::from_micros(1))), MAX_CALLS);
        assert_eq!(size_for(Some(Duration::ZERO)), MAX_CALLS);
    }

    #[test]
    fn batch_keys_name_their_function_and_differ() {
        let (a, b) = (batch_key("inc"), batch_key("inc"));
        assert!(a.as_str().starts_with("inc.batch-"), "{a}");
        assert_ne!(a, b);
    }
}
