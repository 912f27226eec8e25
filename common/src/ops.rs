//! Operating a deployment: the typed records behind `rask status`, `rask run` and the dashboard.
//!
//! - The **worker registry**: every worker keeps a [`WorkerEntry`] at [`Keys::worker`] (with a
//!   TTL of three heartbeats, refreshed every heartbeat) and its id in the set [`Keys::workers`];
//!   [`live_workers`] reads them back, dropping ids whose entry expired.
//! - **Broadcasts**: a [`BroadcastRequest`] published to the fanout exchange
//!   [`Settings::broadcast_exchange`](crate::Settings::broadcast_exchange) reaches one exclusive
//!   queue per live worker; each answers with a [`BroadcastReply`] to the request's `reply_to`.
//!   Built-in broadcast functions: [`PING`] and [`INFO`] (a [`WorkerInfo`]).
//!
//! Everything is MessagePack with named fields, so newer fields do not break older readers
//! (except in a [`BroadcastRequest`], which refuses fields it does not know).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys::TaskKey;
use crate::outcome::FailureKind;
use crate::pool::Pool;
use crate::resources::Resources;
use crate::store::Store;
use crate::usage::ProcessUsage;

/// The broadcast function every worker answers with `"pong"`.
pub const PING: &str = "ping";
/// The broadcast function every worker answers with its [`WorkerInfo`].
pub const INFO: &str = "info";
/// What a worker answers to [`PING`].
pub const PONG: &str = "pong";
/// How many recent task failures a worker keeps in its registry entry.
pub const RECENT_ERRORS: usize = 5;

/// A live worker as it describes itself in the registry, refreshed every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The worker's unique id (`{host}-{pid}-{random}`).
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The version of the `rask-worker` library it runs.
    pub version: String,
    /// When it started.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// When it wrote this entry.
    #[serde(with = "humantime_serde")]
    pub updated_at: SystemTime,
    /// How often it writes this entry.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The task queue it consumes.
    pub queue: String,
    /// Tasks it runs at once.
    pub concurrency: usize,
    /// The functions it can run, sorted.
    pub functions: Vec<String>,
    /// Where its Prometheus `/metrics` and `/health` endpoint listens, if it serves one.
    pub metrics_addr: Option<SocketAddr>,
    /// Its task counters since it started.
    pub counters: WorkerCounters,
    /// Tasks it finished per second over its last heartbeat interval.
    pub tasks_per_second: f64,
    /// Its last few task failures, newest last (at most [`RECENT_ERRORS`]).
    pub recent_errors: Vec<RecentError>,
    /// What it has of named resources (its `resources` setting); empty (and absent in entries
    /// of older workers) when it declares none.
    #[serde(default)]
    pub resources: Resources,
    /// How much of its resources the tasks it runs held when it wrote this entry.
    #[serde(default)]
    pub resources_in_use: Resources,
    /// The pools it serves ([`crate::pool`]). An entry written before pools existed reads as
    /// `["default"]`: such a worker consumed the default pool's queues.
    #[serde(default = "default_pools")]
    pub pools: Vec<Pool>,
    /// Its resident memory and CPU time when it wrote this entry (absent from entries of older
    /// workers, and where `/proc` cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ProcessUsage>,
}

/// The pools of a registry entry that names none.
fn default_pools() -> Vec<Pool> {
    vec![Pool::default_pool()]
}

impl WorkerEntry {
    /// Whether it serves `pool`.
    pub fn serves(&self, pool: &Pool) -> bool {
        self.pools.contains(pool)
    }
}

/// Task counters of one worker since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Tasks it started running.
    pub started: u64,
    /// Tasks whose outcome was a value.
    pub succeeded: u64,
    /// Tasks whose outcome was a failure.
    pub failed: u64,
    /// Failed attempts scheduled to run again (retryable failures).
    pub retried: u64,
    /// Tasks running now.
    pub in_flight: u64,
}

impl WorkerCounters {
    /// Tasks with an outcome stored: succeeded or failed.
    pub fn done(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// A task failure a worker saw recently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentError {
    /// When the task failed.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// The task's key.
    pub key: TaskKey,
    /// The function it called.
    pub function: String,
    /// The class of failure.
    pub kind: FailureKind,
    /// What went wrong.
    pub message: String,
}

/// What a worker answers to the [`INFO`] broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's id.
    pub id: String,
    /// Its host name.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The version of the `rask-worker` library it runs.
    pub version: String,
    /// The functions it can run, sorted.
    pub functions: Vec<String>,
    /// Tasks it runs at once.
    pub concurrency: usize,
    /// How long it has been running.
    #[serde(with = "humantime_serde")]
    pub uptime: Duration,
}

/// A request to run one function on every live worker. Its AMQP properties carry the rest:
/// `reply_to` (the caller's reply queue), `correlation_id` (matched by replies), `expiration`
/// (the caller's timeout, so that a late worker does not run it) and `timestamp` (when it was
/// published), all signed with `signing_keys` ([`crate::signing::MessageKind::BroadcastRequest`]).
///
/// Unlike the other records here it refuses fields it does not know, so that no other message
/// (a task message has `function` and `args` too) decodes as a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// The function: a built-in ([`PING`], [`INFO`]) or one the workers registered.
    pub function: String,
    /// Its arguments, a MessagePack array (as for a task).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

/// One worker's answer to a [`BroadcastRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastReply {
    /// The worker that ran it.
    pub worker: String,
    /// The MessagePack-encoded value it returned, or why it failed.
    pub result: std::result::Result<serde_bytes::ByteBuf, BroadcastFailure>,
}

/// Why a broadcast function failed on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct BroadcastFailure {
    /// The class of failure (`UnknownTask`, `BadArguments`, `Failed`, `Panicked`).
    pub kind: FailureKind,
    /// What went wrong.
    pub message: String,
}

/// Encodes a registry entry, broadcast request or reply (MessagePack, named fields).
///
/// # Errors
/// [`crate::Error::Encode`] if the value does not encode.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes what [`encode`] wrote.
///
/// # Errors
/// [`crate::Error::Decode`] if the bytes are not such a value.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Writes (or refreshes) `entry` in the registry with a TTL of `ttl`, in one round trip.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn register(store: &Store, entry: &WorkerEntry, ttl: Duration) -> Result<()> {
    let keys = store.keys();
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    redis::pipe()
        .cmd("SET")
        .arg(keys.worker(&entry.id))
        .arg(encode(entry)?)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .cmd("SADD")
        .arg(keys.workers())
        .arg(&entry.id)
        .ignore()
        .query_async::<()>(&mut store.connection())
        .await?;
    Ok(())
}

/// Removes worker `id` from the registry (a worker stopping cleanly).
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn deregister(store: &Store, id: &str) -> Result<()> {
    let keys = store.keys();
    redis::pipe()
        .cmd("DEL")
        .arg(keys.worker(id))
        .ignore()
        .cmd("SREM")
        .arg(keys.workers())
        .arg(id)
        .ignore()
        .query_async::<()>(&mut store.connection())
        .await?;
    Ok(())
}

/// The live workers (those whose entry has not expired), sorted by id. Ids whose entry
/// expired are removed from the index on the way; an entry that does not decode (written by
/// an incompatible version) is skipped with a warning.
///
/// # Errors
/// [`crate::Error::Store`] if Redis fails.
pub async fn live_workers(store: &Store) -> Result<Vec<WorkerEntry>> {
    let keys = store.keys();
    let mut conn = store.connection();
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.workers())
        .query_async(&mut conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    ids.sort();
    let names: Vec<String> = ids.iter().map(|id| keys.worker(id)).collect();
    let found: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(names).query_async(&mut conn).await?;
    let mut live = Vec::with_capacity(ids.len());
    let mut gone = Vec::new();
    for (id, bytes) in ids.into_iter().zip(found) {
        match bytes.map(|b| decode::<WorkerEntry>(&b)) {
            Some(Ok(entry)) => live.push(entry),
            Some(Err(e)) => {
                tracing::warn!(worker = %id, error = %e, "skipping a registry entry that does not decode")
            }
            None => gone.push(id),
        }
    }
    if !gone.is_empty() {
        redis::cmd("SREM")
            .arg(keys.workers())
            .arg(gone)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_replies_round_trip() {
        let entry = WorkerEntry {
            id: "h-1-abc".into(),
            host: "h".into(),
            pid: 1,
            version: "0.1.0".into(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            updated_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_005),
            heartbeat_interval: Duration::from_secs(5),
            queue: "rask.tasks".into(),
            concurrency: 4,
            functions: vec!["inc".into()],
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            counters: WorkerCounters {
                started: 3,
                succeeded: 2,
                failed: 1,
                retried: 0,
                in_flight: 0,
            },
            tasks_per_second: 0.5,
            recent_errors: vec![RecentError {
                at: SystemTime::UNIX_EPOCH,
                key: TaskKey::new("inc-1").unwrap(),
                function: "inc".into(),
                kind: FailureKind::Failed,
                message: "no".into(),
            }],
            pools: vec![Pool::default_pool(), Pool::new("gpu").unwrap()],
            resources: "gpu=2,mem=16GiB".parse().unwrap(),
            usage: Some(ProcessUsage {
                resident_bytes: 50 << 20,
                cpu_seconds: 1.25,
            }),
            resources_in_use: "gpu=1".parse().unwrap(),
        };
        let back: WorkerEntry = decode(&encode(&entry).unwrap()).unwrap();
        assert_eq!(back, entry);
        assert_eq!(back.counters.done(), 3);
        assert!(back.serves(&Pool::new("gpu").unwrap()));

        // An entry written before pools existed serves the default pool.
        let mut older: rmpv::Value = rmp_serde::from_slice(&encode(&entry).unwrap()).unwrap();
        if let rmpv::Value::Map(fields) = &mut older {
            fields.retain(|(k, _)| k.as_str() != Some("pools"));
        }
        let older: WorkerEntry = decode(&rmp_serde::to_vec_named(&older).unwrap()).unwrap();
        assert_eq!(older.pools, vec![Pool::default_pool()]);

        // An entry of an older worker, without resources, declares none.
        let rmpv::Value::Map(fields) = decode::<rmpv::Value>(&encode(&entry).unwrap()).unwrap()
        else {
            panic!("an entry is a map")
        };
        let older = rmpv::Value::Map(
            fields
                .into_iter()
                .filter(|(k, _)| {
                    !k.as_str()
                        .is_some_and(|k| k.starts_with("resources") || k == "usage")
                })
                .collect(),
        );
        let back: WorkerEntry = decode(&rmp_serde::to_vec(&older).unwrap()).unwrap();
        assert!(back.resources.is_empty() && back.resources_in_use.is_empty());
        assert_eq!(back.usage, None, "an older worker's entry has no usage");

        let reply = BroadcastReply {
            worker: "w".into(),
            result: Err(BroadcastFailure {
                kind: FailureKind::UnknownTask,
                message: "nope".into(),
            }),
        };
        assert_eq!(
            decode::<BroadcastReply>(&encode(&reply).unwrap()).unwrap(),
            reply
        );
    }

    #[test]
    fn nothing_but_a_request_decodes_as_one() {
        let request = BroadcastRequest {
            function: "inc".into(),
            args: vec![0x91, 0x01],
        };
        let back: BroadcastRequest = decode(&encode(&request).unwrap()).unwrap();
        assert_eq!(back, request);
        // A task message has `function` and `args` too, and more.
        let task = crate::TaskMessage::new(TaskKey::new("inc-1").unwrap(), "inc", vec![0x91, 0x01]);
        let err = decode::<BroadcastRequest>(&task.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        // So does an array with more elements than a request has fields.
        let long = rmp_serde::to_vec(&("inc", serde_bytes::ByteBuf::from(vec![0x90]), 1)).unwrap();
        assert!(decode::<BroadcastRequest>(&long).is_err());
    }
}
