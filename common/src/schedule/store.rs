//! Schedules in Redis: the records (`{prefix}:schedules`), the last tick claimed per schedule
//! (`{prefix}:schedule-last`) and the outbox of claimed ticks not yet confirmed published
//! (`{prefix}:schedule-outbox`). A tick is claimed by one compare-and-set script: the claim
//! succeeds only if the schedule's last tick is still the one the claimant read, so two workers
//! that read the same state cannot both publish its ticks. Time is Redis's (`TIME`), so that
//! workers' clocks do not decide when a tick is due.

use std::sync::LazyLock;

use redis::Script;

use super::Schedule;
use crate::error::Result;
use crate::store::Store;

/// Sets the last tick of schedule `ARGV[1]` to `ARGV[3]` if it is still `ARGV[2]` (`-1`: none
/// yet) and puts the due ticks `ARGV[5..]` in the outbox, scored `ARGV[4]` (now, ms).
/// KEYS: the last-tick hash, the outbox. Returns 1 if claimed, 0 if another claimed first.
const CLAIM_LUA: &str = r"
local last = redis.call('HGET', KEYS[1], ARGV[1])
if (last or '-1') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1] .. '/' .. ARGV[i])
end
return 1
";

/// Moves outbox entry `ARGV[1]` to score `ARGV[3]` if its score is still `ARGV[2]`, so that
/// one worker republishes a stale claim. KEYS: the outbox. Returns 1 if taken over.
const RECLAIM_LUA: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
";

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
static RECLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(RECLAIM_LUA));

/// Every schedule with its last claimed tick, read at Redis time `now_ms`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Redis's clock when the schedules were read (Unix ms).
    pub now_ms: u64,
    /// The schedules, by name, each with its last claimed tick; records that do not decode
    /// (written by a newer rask) are left out.
    pub schedules: Vec<(Schedule, Option<u64>)>,
}

/// What the snapshot's pipeline answers: `TIME`, the records, the last ticks.
type SnapshotReply = ((u64, u64), Vec<(String, Vec<u8>)>, Vec<(String, i64)>);

/// An outbox entry: a claimed tick whose publishing was not confirmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The schedule's name.
    pub name: String,
    /// The tick (Unix ms).
    pub tick_ms: u64,
    /// When it was claimed (Unix ms, Redis's clock).
    pub claimed_ms: u64,
}

/// Redis's clock (Unix ms), which decides when ticks are due.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn now_ms(store: &Store) -> Result<u64> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut store.connection())
        .await?;
    Ok(seconds * 1000 + micros / 1000)
}

/// Adds `schedule`, or replaces the schedule of that name (keeping its last tick, so that no
/// tick is published twice).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn put(store: &Store, schedule: &Schedule) -> Result<()> {
    let keys = store.keys();
    redis::cmd("HSET")
        .arg(keys.schedules())
        .arg(&schedule.name)
        .arg(schedule.encode()?)
        .exec_async(&mut store.connection())
        .await?;
    Ok(())
}

/// Removes schedule `name`; whether it existed.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn remove(store: &Store, name: &str) -> Result<bool> {
    let keys = store.keys();
    let (removed, _): (u64, u64) = redis::pipe()
        .cmd("HDEL")
        .arg(keys.schedules())
        .arg(name)
        .cmd("HDEL")
        .arg(keys.schedule_last())
        .arg(name)
        .query_async(&mut store.connection())
        .await?;
    Ok(removed == 1)
}

/// Pauses (`paused`) or resumes schedule `name`; whether it exists. Ticks while paused are
/// recorded as skipped, so resuming publishes none of them.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails; [`crate::Error::Decode`] if the record does not
/// decode.
pub async fn set_paused(store: &Store, name: &str, paused: bool) -> Result<bool> {
    let Some(mut schedule) = get(store, name).await? else {
        return Ok(false);
    };
    schedule.paused = paused;
    put(store, &schedule).await?;
    Ok(true)
}

/// Schedule `name`, if there is one that decodes.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails; [`crate::Error::Decode`] if the record does not
/// decode.
pub async fn get(store: &Store, name: &str) -> Result<Option<Schedule>> {
    let bytes: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(store.keys().schedules())
        .arg(name)
        .query_async(&mut store.connection())
        .await?;
    bytes.map(|b| Schedule::decode(&b)).transpose()
}

/// Every schedule with its last tick, and Redis's clock, in one round trip.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn snapshot(store: &Store) -> Result<Snapshot> {
    let keys = store.keys();
    let ((seconds, micros), records, last): SnapshotReply = redis::pipe()
        .cmd("TIME")
        .cmd("HGETALL")
        .arg(keys.schedules())
        .cmd("HGETALL")
        .arg(keys.schedule_last())
        .query_async(&mut store.connection())
        .await?;
    let last: std::collections::HashMap<String, i64> = last.into_iter().collect();
    let mut schedules: Vec<(Schedule, Option<u64>)> = records
        .into_iter()
        .filter_map(|(name, bytes)| match Schedule::decode(&bytes) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                tracing::warn!(schedule = name, error = %e, "skipping a schedule that does not decode");
                None
            }
        })
        .map(|s| {
            let tick = last.get(&s.name).and_then(|t| u64::try_from(*t).ok());
            (s, tick)
        })
        .collect();
    schedules.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(Snapshot {
        now_ms: seconds * 1000 + micros / 1000,
        schedules,
    })
}

/// Claims the ticks of schedule `name` up to `latest_ms` if its last tick is still
/// `expected_last_ms`, putting `due` in the outbox; whether this caller won the claim.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn claim(
    store: &Store,
    name: &str,
    expected_last_ms: Option<u64>,
    latest_ms: u64,
    due: &[u64],
    now_ms: u64,
) -> Result<bool> {
    let keys = store.keys();
    let mut invocation = CLAIM.prepare_invoke();
    invocation
        .key(keys.schedule_last())
        .key(keys.schedule_outbox())
        .arg(name)
        .arg(expected_last_ms.map_or_else(|| "-1".to_owned(), |t| t.to_string()))
        .arg(latest_ms)
        .arg(now_ms);
    for tick in due {
        invocation.arg(*tick);
    }
    let claimed: u8 = invocation.invoke_async(&mut store.connection()).await?;
    Ok(claimed == 1)
}

/// Removes a published tick from the outbox.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn published(store: &Store, name: &str, tick_ms: u64) -> Result<()> {
    redis::cmd("ZREM")
        .arg(store.keys().schedule_outbox())
        .arg(format!("{name}/{tick_ms}"))
        .exec_async(&mut store.connection())
        .await?;
    Ok(())
}

/// At most `limit` outbox entries claimed before `before_ms` (their claimant died or lost its
/// connection before confirming them).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn stale(store: &Store, before_ms: u64, limit: usize) -> Result<Vec<Claimed>> {
    let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(store.keys().schedule_outbox())
        .arg("-inf")
        .arg(format!("({before_ms}"))
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .arg("WITHSCORES")
        .query_async(&mut store.connection())
        .await?;
    Ok(entries
        .into_iter()
        .filter_map(|(member, score)| {
            let (name, tick) = member.rsplit_once('/')?;
            Some(Claimed {
                name: name.to_owned(),
                tick_ms: tick.parse().ok()?,
                claimed_ms: score as u64,
            })
        })
        .collect())
}

/// Takes over a stale outbox entry (see [`stale`]) as of `now_ms`; whether this caller got it.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn reclaim(store: &Store, claimed: &Claimed, now_ms: u64) -> Result<bool> {
    let taken: u8 = RECLAIM
        .key(store.keys().schedule_outbox())
        .arg(format!("{}/{}", claimed.name, claimed.tick_ms))
        .arg(claimed.claimed_ms)
        .arg(now_ms)
        .invoke_async(&mut store.connection())
        .await?;
    Ok(taken == 1)
}

/// Drops outbox entries of a schedule that no longer exists.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn forget(store: &Store, claimed: &Claimed) -> Result<()> {
    published(store, &claimed.name, claimed.tick_ms).await
}
