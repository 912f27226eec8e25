//! The record of delay queues in Redis, so that `purge` can find them.
//!
//! AMQP cannot list queues, and a delay queue is named after its delay
//! ([`crate::broker::Destination::after`]: `{queue}.delay.{ms}ms`), so whoever publishes to one
//! also notes its name here, in the sorted set [`Keys::delay_queues`], scored by when it may be
//! gone: its messages expire after the delay and the queue a minute later (`x-expires`); a margin
//! covers clocks that differ between hosts. [`live`] reads the names whose score is still ahead
//! and forgets the others.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Result;
use crate::keys::Keys;
use crate::settings::Settings;
use crate::store::Store;

/// How long after its delay a noted queue is still listed: its own `x-expires` margin (a minute)
/// and ten minutes for clocks that differ between hosts.
const MARGIN: Duration = Duration::from_secs(11 * 60);

/// The name of the delay queue in front of the task queue for `delay`, as
/// [`crate::broker::Destination::after`] declares it; `None` for no delay.
pub fn name(settings: &Settings, delay: Duration) -> Option<String> {
    let ms = crate::retry::duration_ms(delay);
    (ms > 0).then(|| format!("{}.delay.{ms}ms", settings.queue))
}

/// Notes that the delay queue for `delay` is in use, so that `purge` will empty it. Nothing to do
/// for no delay.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn note(store: &Store, settings: &Settings, delay: Duration) -> Result<()> {
    let Some(queue) = name(settings, delay) else {
        return Ok(());
    };
    let until = unix_ms(SystemTime::now() + delay.saturating_add(MARGIN));
    // GT: a shorter-lived note never shortens a longer one.
    redis::cmd("ZADD")
        .arg(key(store.keys()))
        .arg("GT")
        .arg(until)
        .arg(queue)
        .query_async::<()>(&mut store.connection())
        .await?;
    Ok(())
}

/// The delay queues noted that may still exist, sorted by name; forgets the others.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn live(store: &Store) -> Result<Vec<String>> {
    let key = key(store.keys());
    let now = unix_ms(SystemTime::now());
    let (mut names,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(&key)
        .arg("-inf")
        .arg(format!("({now}"))
        .ignore()
        .cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut store.connection())
        .await?;
    names.sort();
    Ok(names)
}

fn key(keys: &Keys) -> String {
    keys.delay_queues()
}

/// Milliseconds since the Unix epoch (0 for times before it).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_delay_in_milliseconds() {
        let settings = Settings {
            queue: "jobs".into(),
            ..Settings::default()
        };
        assert_eq!(name(&settings, Duration::ZERO), None);
        assert_eq!(
            name(&settings, Duration::from_secs(10)).as_deref(),
            Some("jobs.delay.10000ms")
        );
    }
}
