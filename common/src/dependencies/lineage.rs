//! Lineage: recomputing a graph task's input whose result is gone (expired or released) from
//! the input's own message, still stored as its record ([`Keys::task`], kept for `lineage_ttl`).
//!
//! A worker that finds inputs of a graph task missing parks the task as a waiting record again
//! and re-publishes the inputs that can be rebuilt, in three steps, each in one hash slot (so
//! they run alike on a Redis Cluster):
//!
//! 1. [`Store::wait_again`], in the task's slot: the missing inputs go back into its pending set
//!    and its record is written if it is gone. Before the inputs are linked, so that an input
//!    stored right after step 2 finds the task pending on it.
//! 2. [`Store::relink`], in each input's slot, atomically: an input whose result is stored
//!    (meanwhile) is reported [`Relink::Stored`]; one without a record cannot be rebuilt
//!    ([`Relink::Gone`]); otherwise the task joins its dependents, and the input is
//!    [`Relink::OnItsWay`] when it is marked published or waits for inputs of its own, else its
//!    rebuilds are counted ([`Keys::rebuilds`]) and its record returned to be published
//!    ([`Relink::Rebuild`]), or [`Relink::Exhausted`] past [`MAX_REBUILDS`].
//! 3. The worker publishes the records to rebuild (confirmed), marks them published
//!    ([`Store::mark_published`]), and acknowledges the task's delivery without an outcome; the
//!    release of its last rebuilt input publishes it again. Inputs reported stored are removed
//!    from its pending set ([`Store::unwait`]).
//!
//! The marker is set only once the broker confirmed the publish (as a producer does), so a
//! worker that dies between the steps leaves nothing that waits for ever: the task's delivery
//! comes back and the steps run again (an input may then run twice: results are write-once).

use std::sync::LazyLock;

use redis::Script;

use super::ReadyTask;
use crate::error::Result;
#[cfg(doc)]
use crate::keys::Keys;
use crate::keys::TaskKey;
use crate::store::Store;

/// Most times one input is rebuilt within its record's life; past it, tasks needing it fail
/// (its result keeps vanishing: a `result_ttl` shorter than the graph takes, say).
pub const MAX_REBUILDS: u32 = 3;

/// Step 1. KEYS: the task's pending set and record. ARGV: the TTL of the set in ms, the
/// record's TTL in ms, the task's message, then the missing inputs.
static WAIT_AGAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 4, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2])
return 0
",
    )
});

/// Step 2. KEYS: the input's result, record, dependents set, published marker, pending set
/// and rebuild counter. ARGV: the waiting task's key (empty: link nothing, see
/// [`Store::rebuild_lost`]), the TTL in ms, the most rebuilds.
/// Returns 0 (stored), 1 (gone), 2 (on its way), 3 (exhausted) or its record (rebuild).
static RELINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local record = redis.call('GET', KEYS[2])
if not record then return 1 end
if ARGV[1] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('SCARD', KEYS[5]) > 0 then return 2 end
local rebuilds = redis.call('INCR', KEYS[6])
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[6], ttl) end
if rebuilds > tonumber(ARGV[3]) then return 3 end
return record
",
    )
});

/// What step 2 found for one missing input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relink {
    /// Its result is stored (it was stored meanwhile): read it.
    Stored,
    /// It has no record either: it cannot be rebuilt.
    Gone,
    /// It is queued, running, or waiting for inputs of its own: its release publishes the task.
    OnItsWay,
    /// It was rebuilt [`MAX_REBUILDS`] times already and is missing again.
    Exhausted,
    /// Publish this record of it (then mark it published): it runs again.
    Rebuild(Vec<u8>),
}

impl Store {
    /// Step 1 (see the module docs): task `key` (message `message`) waits again for `missing`.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails (call again: the step is idempotent).
    pub async fn wait_again(
        &self,
        key: &TaskKey,
        message: &[u8],
        missing: &[TaskKey],
    ) -> Result<()> {
        let keys = self.keys();
        let mut inv = WAIT_AGAIN.prepare_invoke();
        inv.key(keys.pending(key))
            .key(keys.task(key))
            .arg(self.ttl_ms())
            .arg(self.lineage_ms())
            .arg(message);
        for input in missing {
            inv.arg(input.as_str());
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&WAIT_AGAIN).ignore();
        pipe.invoke_script(&inv).ignore();
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }

    /// Step 2 (see the module docs) for each of `missing`, inputs of task `key`, in one
    /// pipeline; in order.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails (call again: only a rebuild count may grow).
    pub async fn relink(&self, key: &TaskKey, missing: &[TaskKey]) -> Result<Vec<Relink>> {
        self.relink_as(key.as_str(), missing).await
    }

    /// For a producer whose new graph waits for `inputs` known only by key (futures of earlier
    /// graphs), which its registration linked it to: those whose result is gone but whose
    /// message is kept, not marked published and not waiting for inputs of their own, have
    /// their rebuilds counted and are returned, to be published (then marked) by the caller,
    /// so that a graph over a released or expired result recomputes it instead of waiting
    /// for a task nobody runs.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn rebuild_lost(&self, inputs: &[TaskKey]) -> Result<Vec<ReadyTask>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.relink_as("", inputs).await?;
        Ok(found
            .into_iter()
            .filter_map(|relink| match relink {
                Relink::Rebuild(record) => ReadyTask::from_body(record).ok(),
                _ => None,
            })
            .collect())
    }

    /// [`Store::relink`] for the task `key` (empty: link nothing).
    async fn relink_as(&self, key: &str, missing: &[TaskKey]) -> Result<Vec<Relink>> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.load_script(&RELINK).ignore();
        for input in missing {
            let mut inv = RELINK.prepare_invoke();
            inv.key(keys.result(input))
                .key(keys.task(input))
                .key(keys.dependents(input))
                .key(keys.published(input))
                .key(keys.pending(input))
                .key(keys.rebuilds(input))
                .arg(key)
                .arg(self.ttl_ms())
                .arg(MAX_REBUILDS);
            pipe.invoke_script(&inv);
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.connection()).await?;
        Ok(replies
            .into_iter()
            .map(|reply| match reply {
                redis::Value::Int(0) => Relink::Stored,
                redis::Value::Int(2) => Relink::OnItsWay,
                redis::Value::Int(3) => Relink::Exhausted,
                redis::Value::BulkString(record) => Relink::Rebuild(record),
                _ => Relink::Gone,
            })
            .collect())
    }

    /// Removes `stored` from the pending set of task `key` (inputs found stored in step 2).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn unwait(&self, key: &TaskKey, stored: &[TaskKey]) -> Result<()> {
        if stored.is_empty() {
            return Ok(());
        }
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys().pending(key));
        for input in stored {
            srem.arg(input.as_str());
        }
        srem.query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }
}
