//! Limits in Redis: the table (`{prefix}:limits`, a hash: function -> MessagePack [`Limit`]),
//! each rate-limited function's bucket (`{prefix}:limit-bucket:{function}`) and each
//! concurrency-limited function's leases (`{prefix}:limit-leases:{function}`). Every decision is
//! one script that reads Redis's clock (`TIME`) itself, so that workers' clocks never matter.
//!
//! The bucket is a token bucket kept as one number, the time its next token is due (GCRA): a
//! task takes the next token, due now or later; a task whose token is due later goes back to
//! the broker for exactly that long, holding it. So a backlog is spread evenly over time,
//! each task delayed once.
//!
//! The leases of a function are a sorted set of lease ids scored by their expiry (Unix ms):
//! taking one drops the expired first, then adds one if fewer than the limit remain; its
//! holder renews it while the task runs and removes it when the task ends. A worker that dies
//! renews nothing, so its leases expire and their slots are free again.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::Limit;
use crate::error::Result;
use crate::store::Store;

/// Takes the next token of bucket `KEYS[1]` (the time its next token is due, µs): `ARGV[1]`
/// the interval between tokens (µs), `ARGV[2]` the burst. Returns the wait (µs) until the
/// token taken is due (0: now).
const TAKE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1000)
return math.floor(wait)
";

/// Takes a lease `ARGV[2]` of `KEYS[1]` for `ARGV[3]` ms if fewer than `ARGV[1]` unexpired
/// leases are held. Returns 1 if taken, 0 if not.
const ACQUIRE_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
return 1
";

/// Extends lease `ARGV[1]` of `KEYS[1]` to `ARGV[2]` ms from now if it is still held. Returns
/// 1 if renewed, 0 if it was lost (expired and dropped).
const RENEW_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
";

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_LUA));
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));

/// Sets the limit of `function` (replacing one it had).
///
/// # Errors
/// [`crate::Error::InvalidLimit`] if the limit is not valid; [`crate::Error::Store`] if Redis
/// fails.
pub async fn put(store: &Store, function: &str, limit: &Limit) -> Result<()> {
    super::check_function(function)?;
    limit.validate()?;
    redis::cmd("HSET")
        .arg(store.keys().limits())
        .arg(function)
        .arg(limit.encode()?)
        .exec_async(&mut store.connection())
        .await?;
    Ok(())
}

/// Removes the limit of `function` (and its bucket); whether it had one.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn remove(store: &Store, function: &str) -> Result<bool> {
    let keys = store.keys();
    let (removed, _): (u64, u64) = redis::pipe()
        .cmd("HDEL")
        .arg(keys.limits())
        .arg(function)
        .cmd("DEL")
        .arg(keys.limit_bucket(function))
        .query_async(&mut store.connection())
        .await?;
    Ok(removed == 1)
}

/// Every limit in Redis, by function; records that do not decode (written by a newer rask) are
/// left out, with a warning.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn all(store: &Store) -> Result<BTreeMap<String, Limit>> {
    let records: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(store.keys().limits())
        .query_async(&mut store.connection())
        .await?;
    Ok(records
        .into_iter()
        .filter_map(|(function, bytes)| match Limit::decode(&bytes) {
            Ok(limit) => Some((function, limit)),
            Err(e) => {
                tracing::warn!(function, error = %e, "skipping a limit that does not decode");
                None
            }
        })
        .collect())
}

/// Takes the next token of `function`'s bucket for `limit`'s rate: how long until it is due
/// (zero: run now).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn take_token(store: &Store, function: &str, limit: &Limit) -> Result<Duration> {
    let Some(rate) = limit.rate else {
        return Ok(Duration::ZERO);
    };
    let wait_us: u64 = TAKE
        .key(store.keys().limit_bucket(function))
        .arg(rate.interval_us())
        .arg(limit.effective_burst())
        .invoke_async(&mut store.connection())
        .await?;
    Ok(Duration::from_micros(wait_us))
}

/// Takes lease `lease` of `function` for `ttl` if fewer than `concurrency` are held; whether it
/// was taken.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn acquire(
    store: &Store,
    function: &str,
    concurrency: u32,
    lease: &str,
    ttl: Duration,
) -> Result<bool> {
    let taken: u8 = ACQUIRE
        .key(store.keys().limit_leases(function))
        .arg(concurrency)
        .arg(lease)
        .arg(ttl_ms(ttl))
        .invoke_async(&mut store.connection())
        .await?;
    Ok(taken == 1)
}

/// Extends lease `lease` of `function` to `ttl` from now; whether it was still held.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn renew(store: &Store, function: &str, lease: &str, ttl: Duration) -> Result<bool> {
    let renewed: u8 = RENEW
        .key(store.keys().limit_leases(function))
        .arg(lease)
        .arg(ttl_ms(ttl))
        .invoke_async(&mut store.connection())
        .await?;
    Ok(renewed == 1)
}

/// Gives lease `lease` of `function` back.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn release(store: &Store, function: &str, lease: &str) -> Result<()> {
    redis::cmd("ZREM")
        .arg(store.keys().limit_leases(function))
        .arg(lease)
        .exec_async(&mut store.connection())
        .await?;
    Ok(())
}

/// How many unexpired leases of `function` are held now (Redis's clock).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn leases_held(store: &Store, function: &str) -> Result<u64> {
    let now = crate::schedule::store::now_ms(store).await?;
    let held: u64 = redis::cmd("ZCOUNT")
        .arg(store.keys().limit_leases(function))
        .arg(format!("({now}"))
        .arg("+inf")
        .query_async(&mut store.connection())
        .await?;
    Ok(held)
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
