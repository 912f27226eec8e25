//! Task-graph bookkeeping in Redis, done by atomic Lua scripts so that no scheduler is needed.
//!
//! A graph task whose inputs are not all stored waits as a record: its message at
//! [`Keys::task`], the keys it still waits for in the set [`Keys::pending`], and its key in the
//! set [`Keys::dependents`] of each of those inputs. A worker stores a batch of outcomes with
//! [`Store::store_and_release`], whose release script (in the same pipeline) removes the stored
//! keys from their dependents' pending sets and returns the messages of those that have nothing
//! pending and no result yet; the worker publishes them before acknowledging. Releasing is
//! idempotent (`SREM` of a removed member changes nothing, and a ready dependent without a result
//! is returned again), so a redelivered task releases its dependents again; a dependent
//! published twice runs twice, harmlessly, since results are write-once.
//!
//! Registering ([`Store::register_tasks`]) is idempotent as well: only a stored result makes a
//! task [`Registration::Known`]; a task registered before answers `Ready` or `Waiting` again,
//! and its links are made again, so a registration whose reply was lost, or that failed part
//! way, is completed by registering again (as `persist` does when it retries).
//!
//! A Redis Cluster cannot run these scripts (their keys span hash slots): there [`cluster`]
//! keeps the same records by steps that each stay in one slot.

mod cluster;

use std::sync::LazyLock;

use redis::Script;

use crate::error::Result;
#[cfg(doc)]
use crate::keys::Keys;
use crate::keys::TaskKey;
use crate::message::TaskMessage;
use crate::store::Store;

/// Most scripts sent in one pipeline.
const PIPELINE_CHUNK: usize = 1000;

/// Registers one graph task, idempotently: registering it again (a retry whose first reply was
/// lost, or another producer's identical graph) redoes every step and answers as the first time
/// would now. KEYS: its result, task record and pending set, then for each dependency its
/// result and dependents set. ARGV: its key, its message, the TTL in ms, then the dependency
/// keys. Returns 0 (its result is stored: nothing to do), 1 (waiting) or 2 (ready: the caller
/// publishes it).
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
local pending = 0
for i = 1, #ARGV - 3 do
  if redis.call('EXISTS', KEYS[2 + 2 * i]) == 0 then
    local dependents = KEYS[3 + 2 * i]
    redis.call('SADD', dependents, ARGV[1])
    redis.call('PEXPIRE', dependents, ARGV[3])
    redis.call('SADD', KEYS[3], ARGV[3 + i])
    pending = pending + 1
  else
    redis.call('SREM', KEYS[3], ARGV[3 + i])
  end
end
if pending == 0 then return 2 end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
",
    )
});

/// Releases the dependents of stored outcomes. ARGV: the key prefix, then the stored keys.
/// Returns the messages of the dependents that became (or still are) ready.
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// The source of [`RELEASE`] (loaded again when Redis answers `NOSCRIPT` in a pipeline).
const RELEASE_LUA: &str = r"
local prefix = ARGV[1]
local ready = {}
for i = 2, #ARGV do
  local dependents = redis.call('SMEMBERS', prefix .. ':dependents:' .. ARGV[i])
  for _, d in ipairs(dependents) do
    local pending = prefix .. ':pending:' .. d
    redis.call('SREM', pending, ARGV[i])
    if redis.call('SCARD', pending) == 0
        and redis.call('EXISTS', prefix .. ':result:' .. d) == 0 then
      local message = redis.call('GET', prefix .. ':task:' .. d)
      if message then table.insert(ready, message) end
    end
  end
end
return ready
";

/// What registering a graph task found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Its result is stored: nothing to do. A task registered before but without a result
    /// answers `Waiting` or `Ready` again, so that a registration can always be retried.
    Known,
    /// It waits for inputs; a worker publishes it when the last one is stored.
    Waiting,
    /// Every input is stored and it has no result: the caller must publish it now (even if
    /// an earlier registration, or a worker, published it already: a task published twice may
    /// run twice, and its first outcome stays).
    Ready,
}

impl Store {
    /// Registers graph tasks (each message with its `deps`), in one pipeline per 1000 tasks,
    /// each atomically; returns what each needs, in order, once `redis_wait_replicas` replicas
    /// hold them. Records and sets live for the TTL.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails; tasks registered before the failure stay (call
    /// again: registering is idempotent).
    pub async fn register_tasks(&self, tasks: &[TaskMessage]) -> Result<Vec<Registration>> {
        let keys = self.keys();
        let ttl_ms = self.ttl_ms();
        let mut found = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(PIPELINE_CHUNK) {
            if keys.is_clustered() {
                found.extend(self.register_tasks_by_slot(chunk).await?);
                continue;
            }
            let mut invocations = Vec::with_capacity(chunk.len());
            for task in chunk {
                let mut inv = REGISTER.prepare_invoke();
                inv.key(keys.result(&task.key))
                    .key(keys.task(&task.key))
                    .key(keys.pending(&task.key))
                    .arg(task.key.as_str())
                    .arg(task.encode()?)
                    .arg(ttl_ms);
                for dep in &task.deps {
                    inv.key(keys.result(dep))
                        .key(keys.dependents(dep))
                        .arg(dep.as_str());
                }
                invocations.push(inv);
            }
            let mut pipe = redis::pipe();
            pipe.load_script(&REGISTER).ignore();
            for inv in &invocations {
                pipe.invoke_script(inv);
            }
            let codes: Vec<u8> = pipe.query_async(&mut self.connection()).await?;
            found.extend(codes.into_iter().map(|code| match code {
                0 => Registration::Known,
                1 => Registration::Waiting,
                _ => Registration::Ready,
            }));
        }
        self.replicate().await?;
        Ok(found)
    }

    /// Stores `outcomes` write-once, announces them and releases their dependents (the release
    /// script), in that order in one pipeline per 1000 outcomes: one round trip for a worker's
    /// batch (on a cluster, a few: see [`cluster`]); then waits for `redis_wait_replicas`
    /// replicas, if any. Returns the messages of the dependents that are ready to run, without
    /// duplicates; publish them before acknowledging.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails (call again: storing and releasing are idempotent).
    pub async fn store_and_release(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<Vec<TaskMessage>> {
        // In chunks, so that no release script keeps Redis from serving others for long.
        let mut bodies = Vec::new();
        for chunk in outcomes.chunks(PIPELINE_CHUNK) {
            if self.keys().is_clustered() {
                bodies.extend(self.store_and_release_by_slot(chunk).await?);
            } else {
                bodies.extend(self.store_and_release_chunk(chunk).await?);
                self.replicate().await?;
            }
        }
        Ok(decode_ready(bodies))
    }

    /// [`Store::store_and_release`] for at most [`PIPELINE_CHUNK`] outcomes on a single Redis:
    /// the records of the dependents released.
    async fn store_and_release_chunk(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<Vec<Vec<u8>>> {
        // Announced before the release script runs: waiters learn of the results without
        // waiting for the dependents' bookkeeping.
        let mut pipe = self.outcomes_pipeline(outcomes);
        self.announce(&mut pipe, outcomes)?;
        pipe.cmd("EVALSHA")
            .arg(RELEASE.get_hash())
            .arg(0)
            .arg(self.keys().prefix());
        for (key, _) in outcomes {
            pipe.arg(key.as_str());
        }
        let bodies: (Vec<Vec<u8>>,) = match pipe.query_async(&mut self.connection()).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(RELEASE_LUA)
                    .query_async::<String>(&mut self.connection())
                    .await?;
                pipe.query_async(&mut self.connection()).await?
            }
            other => other?,
        };
        Ok(bodies.0)
    }
}

/// The ready dependents' task records as messages, without duplicates.
fn decode_ready(bodies: Vec<Vec<u8>>) -> Vec<TaskMessage> {
    let mut seen = std::collections::HashSet::new();
    let mut ready = Vec::with_capacity(bodies.len());
    for body in bodies {
        match TaskMessage::decode(&body) {
            Ok(message) if seen.insert(message.key.clone()) => ready.push(message),
            Ok(_) => {}
            Err(e) => tracing::warn!(reason = %e.reason, "skipping an undecodable task record"),
        }
    }
    ready
}
