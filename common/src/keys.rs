//! Task keys and the one place that builds every Redis key and channel name.
//!
//! A task key names one task and its result (`inc-3f2a…`); the Redis key of that result is
//! `{prefix}:result:{key}` and completions are announced on the channel `{prefix}:done`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest task key accepted.
pub const MAX_KEY_LEN: usize = 200;

/// The key of one task and of its result: 1–200 characters of `[A-Za-z0-9_.:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskKey(String);

impl TaskKey {
    /// Checks and wraps a key, e.g. one read from the command line.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if it is empty, too long or holds other characters.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        let valid = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if valid {
            Ok(TaskKey(key))
        } else {
            Err(Error::InvalidKey(key))
        }
    }

    /// A fresh key no other task has: `{function}-{32 hex digits}` (a random UUID).
    pub fn unique(function: &str) -> Self {
        Self::named(function, uuid::Uuid::new_v4().as_bytes())
    }

    /// `{function}-{id as 32 hex digits}`, the function's name shortened and filtered to the
    /// key alphabet.
    pub(crate) fn named(function: &str, id: &[u8; 16]) -> Self {
        let mut key = String::with_capacity(function.len().min(MAX_KEY_LEN - 33) + 33);
        key.extend(
            function
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
                .take(MAX_KEY_LEN - 33),
        );
        key.push('-');
        push_hex(&mut key, id);
        TaskKey(key)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Appends `bytes` to `out` as lowercase hex digits (task keys, signatures).
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

impl std::borrow::Borrow<str> for TaskKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskKey {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        TaskKey::new(value)
    }
}

impl From<TaskKey> for String {
    fn from(key: TaskKey) -> String {
        key.0
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Builds the Redis keys and channel names of one deployment (one key prefix).
///
/// For a Redis Cluster ([`Keys::clustered`]) every key carries a hash tag, so that the keys a
/// script or a multi-key command touches live in one hash slot: the keys of one task carry the task
/// key in braces (`rask:result:{inc-1}`: its result, task record, published marker, pending and
/// dependents sets and delivery counter share a slot), the deployment's own keys the prefix in
/// braces (`{rask}:workers`, `{rask}:worker:w-1`). A single Redis uses the names without braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    tagged: bool,
}

impl Keys {
    /// Keys under `prefix` (the `key_prefix` setting) for a single Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            tagged: false,
        }
    }

    /// Keys under `prefix` for a Redis Cluster: with hash tags (see [`Keys`]).
    pub fn clustered(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            tagged: true,
        }
    }

    /// Whether names carry hash tags (a Redis Cluster).
    pub fn is_clustered(&self) -> bool {
        self.tagged
    }

    /// The name of the `kind` key of task `key`.
    fn of_task(&self, kind: &str, key: &TaskKey) -> String {
        if self.tagged {
            format!("{}:{kind}:{{{}}}", self.prefix, key.0)
        } else {
            format!("{}:{kind}:{}", self.prefix, key.0)
        }
    }

    /// The name of the deployment's own key `rest` (`{prefix}:{rest}`).
    fn of_deployment(&self, rest: &str) -> String {
        if self.tagged {
            format!("{{{}}}:{rest}", self.prefix)
        } else {
            format!("{}:{rest}", self.prefix)
        }
    }

    /// Where the result of `key` is stored: `{prefix}:result:{key}`.
    pub fn result(&self, key: &TaskKey) -> String {
        self.of_task("result", key)
    }

    /// The common start of every result key (`{prefix}:result:`), for scans.
    pub fn result_pattern_prefix(&self) -> String {
        format!("{}:result:", self.prefix)
    }

    /// The key prefix itself (for scripts that build key names).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The message of a graph task, kept until its inputs are ready: `{prefix}:task:{key}`.
    pub fn task(&self, key: &TaskKey) -> String {
        self.of_task("task", key)
    }

    /// Whether the message of graph task `key` is in the broker's hands (or about to be, by a
    /// worker that released it), so that registering it again must not publish it again:
    /// `{prefix}:published:{key}`, set only while the task has a record and no result, with at
    /// most its record's TTL, and deleted when its result is stored (see
    /// [`crate::dependencies`]).
    pub fn published(&self, key: &TaskKey) -> String {
        self.of_task("published", key)
    }

    /// The set of inputs a graph task still waits for: `{prefix}:pending:{key}`.
    pub fn pending(&self, key: &TaskKey) -> String {
        self.of_task("pending", key)
    }

    /// The set of graph tasks waiting for the result of `key`: `{prefix}:dependents:{key}`.
    pub fn dependents(&self, key: &TaskKey) -> String {
        self.of_task("dependents", key)
    }

    /// How many times the message of `key` was delivered again after a delivery that ended
    /// without an outcome (a crashed or vanished worker): `{prefix}:deliveries:{key}`, an
    /// integer counted by workers to enforce the `max_deliveries` setting.
    pub fn deliveries(&self, key: &TaskKey) -> String {
        self.of_task("deliveries", key)
    }

    /// The state records written in time bucket `bucket` (see [`crate::events`]): a hash of
    /// task key -> its last event on a worker (MessagePack [`crate::events::Event`]):
    /// `{prefix}:states:{bucket}`.
    pub fn states(&self, bucket: u64) -> String {
        self.of_deployment(&format!("states:{bucket}"))
    }

    /// The queued records written in time bucket `bucket`: a hash of task key -> its `queued`
    /// event: `{prefix}:queued:{bucket}`.
    pub fn queued(&self, bucket: u64) -> String {
        self.of_deployment(&format!("queued:{bucket}"))
    }

    /// The deployment's bounded event stream (a Redis Stream, see [`crate::events`]):
    /// `{prefix}:events`.
    pub fn events(&self) -> String {
        self.of_deployment("events")
    }

    /// Where arguments passed by reference are kept ([`crate::reference`]):
    /// `{prefix}:arg:{digest}`, the digest in hex (no hash tag on a cluster: each is read and
    /// written alone).
    pub fn argument(&self, digest: &crate::reference::Digest) -> String {
        format!("{}:arg:{}", self.prefix, digest.hex())
    }

    /// Pattern (for `SCAN MATCH`) of every [`Keys::argument`] key of this prefix.
    pub fn argument_pattern(&self) -> String {
        format!("{}:arg:*", self.prefix)
    }

    /// How many times the result of graph task `key` was recomputed from its message because a
    /// dependent found it gone (see [`crate::dependencies::lineage`]): `{prefix}:rebuilds:{key}`,
    /// an integer living as long as the task's record.
    pub fn rebuilds(&self, key: &TaskKey) -> String {
        self.of_task("rebuilds", key)
    }

    /// Patterns (for `SCAN MATCH`) of every graph bookkeeping key of this prefix.
    pub fn graph_patterns(&self) -> [String; 5] {
        ["task", "published", "pending", "dependents", "rebuilds"]
            .map(|kind| format!("{}:{kind}:*", self.prefix))
    }

    /// The registry entry of the live worker `id` (a MessagePack
    /// [`crate::ops::WorkerEntry`] with a TTL of three heartbeats): `{prefix}:worker:{id}`.
    pub fn worker(&self, id: &str) -> String {
        self.of_deployment(&format!("worker:{id}"))
    }

    /// The set of worker ids that registered (an index of [`Keys::worker`] entries, so that
    /// readers need no `SCAN`; ids whose entry expired are removed by readers):
    /// `{prefix}:workers`.
    pub fn workers(&self) -> String {
        self.of_deployment("workers")
    }

    /// The periodic tasks (a hash: schedule name -> MessagePack
    /// [`crate::schedule::Schedule`]): `{prefix}:schedules`.
    pub fn schedules(&self) -> String {
        self.of_deployment("schedules")
    }

    /// The last tick claimed per schedule (a hash: schedule name -> Unix ms):
    /// `{prefix}:schedule-last`.
    pub fn schedule_last(&self) -> String {
        self.of_deployment("schedule-last")
    }

    /// Claimed ticks not yet confirmed published (a sorted set of `{name}/{tick ms}` scored by
    /// the claim's Unix ms), republished by any worker once their claim is stale:
    /// `{prefix}:schedule-outbox`.
    pub fn schedule_outbox(&self) -> String {
        self.of_deployment("schedule-outbox")
    }

    /// The global limits (a hash: function -> MessagePack [`crate::limits::Limit`]):
    /// `{prefix}:limits`.
    pub fn limits(&self) -> String {
        self.of_deployment("limits")
    }

    /// The token bucket of rate-limited `function` (the time its next token is due, µs of
    /// Redis's clock): `{prefix}:limit-bucket:{function}`.
    pub fn limit_bucket(&self, function: &str) -> String {
        self.of_deployment(&format!("limit-bucket:{function}"))
    }

    /// The concurrency leases of `function` (a sorted set: lease id scored by its expiry, Unix
    /// ms of Redis's clock): `{prefix}:limit-leases:{function}`.
    pub fn limit_leases(&self, function: &str) -> String {
        self.of_deployment(&format!("limit-leases:{function}"))
    }

    /// The hedge copies published (a hash: function -> copies, decimal), the extra runs hedged
    /// execution cost ([`crate::hedge`]): `{prefix}:hedges`.
    pub fn hedges(&self) -> String {
        self.of_deployment("hedges")
    }

    /// The run times workers measured (a hash: function -> average run time in nanoseconds,
    /// decimal), from which clients size batches ([`crate::batch`]): `{prefix}:pace`.
    pub fn pace(&self) -> String {
        self.of_deployment("pace")
    }

    /// The channel on which workers announce stored results (keys only): `{prefix}:done`.
    pub fn done_channel(&self) -> String {
        format!("{}:done", self.prefix)
    }

    /// The channel on which workers send the client `to` the outcomes of the tasks it calls
    /// ([`crate::reply`]): `{prefix}:reply:{to}`.
    pub fn reply_channel(&self, to: &crate::reply::ReplyTo) -> String {
        format!("{}:reply:{}", self.prefix, to.as_str())
    }

    /// The sorted set of revoked tasks (`client.cancel(..).force()`): member the task key,
    /// score when the revocation expires (Unix milliseconds): `{prefix}:revoked` (see
    /// [`crate::revocations`]).
    pub fn revoked(&self) -> String {
        self.of_deployment("revoked")
    }

    /// The channel on which new revocations are announced to workers (a MessagePack
    /// [`crate::revocations::Revoked`]): `{prefix}:revocations`.
    pub fn revoked_channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }

    /// The channel nobody listens to that a wait for replicas publishes to first (see
    /// [`crate::Store`]'s waits): `{prefix}:replicated`.
    pub fn replication_mark(&self) -> String {
        format!("{}:replicated", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_keys() {
        assert!(TaskKey::new("inc-00ff").is_ok());
        assert!(TaskKey::new("").is_err());
        assert!(TaskKey::new("a b").is_err());
        assert!(TaskKey::new("x".repeat(MAX_KEY_LEN + 1)).is_err());
        let unique = TaskKey::unique("inc");
        assert!(TaskKey::new(unique.as_str()).is_ok());
        assert_ne!(unique, TaskKey::unique("inc"));
        let (name, id) = unique.as_str().split_once('-').unwrap();
        assert_eq!(name, "inc");
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        let odd = TaskKey::unique(&format!("my task/{}", "x".repeat(MAX_KEY_LEN)));
        assert_eq!(odd.as_str().len(), MAX_KEY_LEN);
        assert!(odd.as_str().starts_with("mytaskxxx"));
    }

    #[test]
    fn builds_prefixed_names() {
        let keys = Keys::new("p");
        let key = TaskKey::new("inc-1").unwrap();
        assert_eq!(keys.result(&key), "p:result:inc-1");
        assert_eq!(keys.done_channel(), "p:done");
        let to = crate::reply::ReplyTo::parse("c-1").unwrap();
        assert_eq!(keys.reply_channel(&to), "p:reply:c-1");
        assert_eq!(keys.task(&key), "p:task:inc-1");
        assert_eq!(keys.pending(&key), "p:pending:inc-1");
        assert_eq!(keys.published(&key), "p:published:inc-1");
        assert_eq!(keys.dependents(&key), "p:dependents:inc-1");
        assert_eq!(keys.deliveries(&key), "p:deliveries:inc-1");
        assert_eq!(keys.worker("w-1"), "p:worker:w-1");
        assert_eq!(keys.workers(), "p:workers");
        assert_eq!(keys.limits(), "p:limits");
        assert_eq!(keys.limit_bucket("send"), "p:limit-bucket:send");
        assert_eq!(keys.limit_leases("send"), "p:limit-leases:send");
        assert!(!keys.is_clustered());
    }

    #[test]
    fn clustered_names_carry_hash_tags() {
        let keys = Keys::clustered("p");
        let key = TaskKey::new("inc-1").unwrap();
        assert_eq!(keys.result(&key), "p:result:{inc-1}");
        assert_eq!(keys.dependents(&key), "p:dependents:{inc-1}");
        assert_eq!(keys.published(&key), "p:published:{inc-1}");
        assert_eq!(keys.deliveries(&key), "p:deliveries:{inc-1}");
        assert_eq!(keys.worker("w-1"), "{p}:worker:w-1");
        assert_eq!(keys.workers(), "{p}:workers");
        assert_eq!(keys.done_channel(), "p:done");
        let to = crate::reply::ReplyTo::parse("c-1").unwrap();
        assert_eq!(keys.reply_channel(&to), "p:reply:c-1");
        assert!(keys.result(&key).starts_with(&keys.result_pattern_prefix()));
    }

    #[test]
    fn decoding_rejects_bad_keys() {
        let bytes = rmp_serde::to_vec(&"bad key").unwrap();
        assert!(rmp_serde::from_slice::<TaskKey>(&bytes).is_err());
    }
}
