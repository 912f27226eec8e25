//! Redis: storing outcomes write-once and reading them back in batches.
//!
//! Outcomes live at [`Keys::result`] with the configured TTL; each batch of stored outcomes is
//! announced on [`Keys::done_channel`] with the keys only (a MessagePack array of strings), never
//! the payload, so a waiter that misses an announcement loses time, not data. (The outcomes of
//! tasks a client waits for with `call` are also sent to it: [`crate::reply`].)
//!
//! A `rediss://` URL connects over TLS, trusting `tls_ca_file` (instead of the system's roots)
//! and presenting `tls_cert_file`/`tls_key_file` when set. With `redis_cluster_urls` the store is a
//! Redis Cluster: see [`crate::keys::Keys::clustered`] for how keys keep scripts in one slot.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::keys::{Keys, TaskKey};
pub use crate::replica_waits::ReplicaWaitCounts;
use crate::replica_waits::ReplicaWaits;
use crate::settings::Settings;
pub use crate::store_conn::{ClusterLink, Connection, Node};

/// Most keys read by one MGET (several MGETs go in one pipeline).
const MGET_CHUNK: usize = 256;
/// The longest wait for replicas (see [`Settings::redis_wait_replicas`]).
const REPLICA_WAIT: Duration = Duration::from_millis(250);

/// A Redis client for `redis_url` of `settings`, with their TLS files for a `rediss://` URL.
///
/// # Errors
/// [`crate::Error::Store`] for a bad URL or bad certificates; [`crate::Error::TlsFile`] if a
/// TLS file of the settings cannot be read.
pub fn client(settings: &Settings) -> Result<redis::Client> {
    crate::store_conn::client(settings, &settings.redis_url)
}

/// Redis clients for subscribing to the completion channel of `settings`' store, in order of
/// preference: the Redis of `redis_url`, or each node of `redis_cluster_urls` (a Redis Cluster
/// forwards every `PUBLISH` to all its nodes, so any node serves; a subscriber whose node goes
/// away moves to the next), with the settings' TLS files for `rediss://` URLs.
///
/// # Errors
/// [`crate::Error::Store`] for a bad URL or bad certificates; [`crate::Error::TlsFile`] if a
/// TLS file of the settings cannot be read.
pub fn subscription_clients(settings: &Settings) -> Result<Vec<redis::Client>> {
    settings
        .redis_nodes()
        .into_iter()
        .map(|url| crate::store_conn::client(settings, url))
        .collect()
}

/// A cheap-to-clone handle on the result store (reconnects by itself): one Redis, or a Redis
/// Cluster when `redis_cluster_urls` is set.
#[derive(Clone)]
pub struct Store {
    conn: Connection,
    /// The connection waits for replicas run on (see [`Store::replicate`]).
    waits: Connection,
    keys: Keys,
    ttl: Duration,
    /// How long graph task records live: the longer of `lineage_ttl` and `result_ttl`.
    lineage: Duration,
    replica_waits: ReplicaWaits,
}

impl Store {
    /// Connects to the Redis (or Redis Cluster) of `settings`.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis cannot be reached; [`crate::Error::TlsFile`] if a TLS
    /// file of the settings cannot be read.
    pub async fn connect(settings: &Settings) -> Result<Self> {
        let conn = Connection::connect(settings).await?;
        let (keys, waits) = match conn {
            Connection::Single(_) => {
                let waits = if settings.redis_wait_replicas > 0 {
                    Connection::connect(settings).await?
                } else {
                    conn.clone()
                };
                (Keys::new(settings.key_prefix.clone()), waits)
            }
            Connection::Cluster(_) => (Keys::clustered(settings.key_prefix.clone()), conn.clone()),
        };
        Ok(Store {
            conn,
            waits,
            keys,
            ttl: settings.result_ttl,
            lineage: settings.lineage_ttl.max(settings.result_ttl),
            replica_waits: ReplicaWaits::new(settings.redis_wait_replicas),
        })
    }

    /// This store, counting its short and skipped waits for replicas into `counts` (so that
    /// one count spans the stores a process makes, e.g. a worker on each reconnection).
    pub fn with_replica_wait_counts(mut self, counts: Arc<ReplicaWaitCounts>) -> Self {
        self.replica_waits = self.replica_waits.counting_into(counts);
        self
    }

    /// The counts of waits for replicas that fell short or were skipped.
    pub fn replica_wait_counts(&self) -> &Arc<ReplicaWaitCounts> {
        self.replica_waits.counts()
    }

    /// The key builder of this deployment.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection to the store (a cheap clone of the store's own), for commands of one's
    /// own; on a Redis Cluster it routes each command to the node of its key.
    pub fn connection(&self) -> Connection {
        self.conn.clone()
    }

    /// Waits until [`Settings::redis_wait_replicas`] replicas hold what was written so far (at
    /// most [`REPLICA_WAIT`]); nothing to do when it is `0`. On a single Redis the wait runs
    /// on a connection of its own, so that it holds up no other command of the process (Redis
    /// answers nothing else on a connection blocked in `WAIT`); since `WAIT` counts only the
    /// writes of its own connection, it first publishes to [`Keys::replication_mark`] (a write
    /// replicas receive, after every write answered before it). On a Redis Cluster it runs on
    /// the shared connection, where the writes were made: a cluster has no such write that
    /// reaches every primary's replicas. A wait that falls short pauses waits for a while,
    /// counted and logged (see [`crate::replica_waits`]).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub(crate) async fn replicate(&self) -> Result<()> {
        let Some(replicas) = self.replica_waits.to_wait() else {
            return Ok(());
        };
        let reached = self
            .waits
            .wait_for_replicas(replicas, REPLICA_WAIT, &self.keys.replication_mark())
            .await?;
        self.replica_waits.reached(reached);
        Ok(())
    }

    /// The TTL of everything stored, in milliseconds.
    pub(crate) fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The TTL of graph task records (lineage), in milliseconds.
    pub(crate) fn lineage_ms(&self) -> u64 {
        u64::try_from(self.lineage.as_millis()).unwrap_or(u64::MAX)
    }

    /// A pipeline that stores `outcomes` write-once with the TTL (replies ignored).
    pub(crate) fn outcomes_pipeline(&self, outcomes: &[(TaskKey, Vec<u8>)]) -> redis::Pipeline {
        let ttl_ms = self.ttl_ms();
        let mut pipe = redis::pipe();
        for (key, bytes) in outcomes {
            pipe.cmd("SET")
                .arg(self.keys.result(key))
                .arg(bytes.as_slice())
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        pipe
    }

    /// Adds the announcement of `outcomes` (their keys only) to `pipe` (reply ignored).
    pub(crate) fn announce(
        &self,
        pipe: &mut redis::Pipeline,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<()> {
        let announced: Vec<&str> = outcomes.iter().map(|(k, _)| k.as_str()).collect();
        pipe.cmd("PUBLISH")
            .arg(self.keys.done_channel())
            .arg(rmp_serde::to_vec(&announced)?)
            .ignore();
        Ok(())
    }

    /// Reads the stored outcomes of `keys`, in order (`None` where nothing is stored yet).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn get_outcomes(&self, keys: &[TaskKey]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chunk in keys.chunks(MGET_CHUNK) {
            let names: Vec<String> = chunk.iter().map(|k| self.keys.result(k)).collect();
            pipe.cmd("MGET").arg(names);
        }
        let chunks: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// Stores `bytes` as arguments passed by reference under [`Keys::argument`] of `digest`
    /// (their digest, [`crate::reference::Reference`]), kept for the result TTL: written only
    /// if absent (content-addressed: the same bytes are the same value), the TTL renewed either
    /// way; then waits for replicas as a result write does (`redis_wait_replicas`), so that the
    /// bytes are as safe as the message that will name them.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn put_argument(
        &self,
        digest: &crate::reference::Digest,
        bytes: &[u8],
    ) -> Result<()> {
        let key = self.keys.argument(digest);
        let ttl_ms = self.ttl_ms();
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(bytes)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        self.replicate().await
    }

    /// Reads arguments passed by reference (`None` if they are gone: expired or purged).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn get_argument(&self, digest: &crate::reference::Digest) -> Result<Option<Vec<u8>>> {
        Ok(redis::cmd("GET")
            .arg(self.keys.argument(digest))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    /// Counts one more redelivery of the message of `key` (`INCR` of [`Keys::deliveries`], kept
    /// for the result TTL) and reads whether the task already has a stored outcome, in one round
    /// trip: returns the redeliveries counted so far, this one included, and that flag.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn count_redelivery(&self, key: &TaskKey) -> Result<(u64, bool)> {
        let counter = self.keys.deliveries(key);
        let (count, stored): (u64, bool) = redis::pipe()
            .cmd("INCR")
            .arg(&counter)
            .cmd("PEXPIRE")
            .arg(&counter)
            .arg(self.ttl_ms())
            .ignore()
            .cmd("EXISTS")
            .arg(self.keys.result(key))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((count, stored))
    }

    /// Deletes the stored outcomes of `keys`, their published markers and delivery counters (so
    /// that a graph submitted again runs them again); returns how many outcomes existed. Their
    /// graph task records stay, for `lineage_ttl`: a graph task that needs one of these results
    /// later has it recomputed from its message ([`crate::dependencies::lineage`]); `purge`
    /// deletes them. Their state records stay until their time bucket expires.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn delete(&self, keys: &[TaskKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.result(k)).collect();
        let records: Vec<String> = keys
            .iter()
            .flat_map(|k| [self.keys.published(k), self.keys.deliveries(k)])
            .collect();
        let (deleted,): (u64,) = redis::pipe()
            .cmd("DEL")
            .arg(names)
            .cmd("DEL")
            .arg(records)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(deleted)
    }

    /// Deletes every result of this deployment's prefix, its graph bookkeeping (task records,
    /// published markers, pending and dependents sets), delivery counters and arguments passed
    /// by reference, by SCAN; returns how
    /// many results.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn purge(&self) -> Result<u64> {
        let deleted = self
            .scan_delete(&format!("{}*", self.keys.result_pattern_prefix()))
            .await?;
        for pattern in self.keys.graph_patterns() {
            self.scan_delete(&pattern).await?;
        }
        self.scan_delete(&format!("{}:deliveries:*", self.keys.prefix()))
            .await?;
        for kind in ["states", "queued"] {
            let bucket = self.keys.states(0);
            let pattern = bucket.replace("states:0", &format!("{kind}:*"));
            self.scan_delete(&pattern).await?;
        }
        redis::cmd("DEL")
            .arg(self.keys.events())
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        self.scan_delete(&self.keys.argument_pattern()).await?;
        Ok(deleted)
    }

    /// Deletes every key matching `pattern`, by SCAN (of every primary of a cluster); returns
    /// how many.
    async fn scan_delete(&self, pattern: &str) -> Result<u64> {
        let mut deleted = 0;
        for node in self.conn.primaries().await? {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) = self.conn.query_on(&node, scan).await?;
                if !batch.is_empty() {
                    deleted += redis::cmd("DEL")
                        .arg(batch)
                        .query_async::<u64>(&mut self.conn.clone())
                        .await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}
