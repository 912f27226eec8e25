//! Task-graph bookkeeping in Redis, done by atomic Lua scripts so that no scheduler is needed.
//!
//! A graph task whose inputs are not all stored waits as a record: its message at
//! [`Keys::task`], the keys it still waits for in the set [`Keys::pending`], and its key in the
//! set [`Keys::dependents`] of each of those inputs. A worker stores a batch of outcomes with
//! [`Store::store_and_release`], whose release script (in the pipeline that stores a batch of
//! graph tasks, [`Batch::Graph`]; for other batches only when the pipeline that stores the batch
//! finds that some of its keys have dependents) removes the stored keys from their dependents'
//! pending sets and returns the messages of those that have nothing pending and no result yet;
//! the worker publishes them before acknowledging. Releasing is
//! idempotent (`SREM` of a removed member changes nothing, and a ready dependent without a result
//! is returned again), so a redelivered task releases its dependents again; a dependent
//! published twice runs twice, harmlessly, since results are write-once.
//!
//! Registering ([`Store::register_tasks`]) is idempotent as well: a task registered before
//! answers `Ready` or `Waiting` again, and its links are made again, so a registration whose
//! reply was lost, or that failed part way, is completed by registering again (as `persist`
//! does when it retries). Only two things make a task [`Registration::Known`] (nothing to
//! publish): its stored result, or its **published marker** ([`Keys::published`]), which says
//! that its message is in the broker's hands, or about to be. Whoever publishes a ready graph
//! task sets it: the producer, for the tasks it found ready, once the broker has confirmed them
//! ([`Store::mark_published`], one round trip per `persist`; a registration retried before that
//! still finds them ready, so a lost reply never leaves a task unpublished), and the release
//! script, for each dependent it returns (the caller publishes it before acknowledging its
//! input; if it dies first, the input is redelivered and released again, and the release
//! returns a ready dependent without a result whether or not it is marked). So identical
//! graphs persisted one after the other, by any producers, run their shared tasks once; only
//! a registration between a publish and its marker publishes again (harmless: results are
//! write-once).
//!
//! A marker must never vouch for a result that will not come, or a later `persist` would wait
//! for ever. The rule: a marker lives only while its task has a record and no result. It is set
//! only then (the marking scripts check the result and copy the record's remaining TTL, so it
//! never outlives the record), it is deleted when the task's result is stored (by the release
//! script, or on a cluster in the pipeline that stores the result) and by everything that
//! deletes the record (`release`, `purge`), and registering treats a marker beside a record it
//! had to write anew as absent, deleting it. A result that expires or is released therefore
//! never leaves a marker behind, whatever the TTLs of the processes. A marker may still outlive
//! the message it vouches for when the message is lost outside rask (a queue deleted or purged
//! by hand, a message no worker's signature check accepts): registering then answers `Known` until
//! the marker expires (`result_ttl` after it was set: registering renews the record's TTL, never
//! the marker's), or until `rask purge`.
//!
//! A Redis Cluster cannot run these scripts (their keys span hash slots): there [`cluster`]
//! keeps the same records by steps that each stay in one slot.

mod cluster;
pub mod lineage;
mod ready;

use std::sync::LazyLock;

use redis::Script;

use crate::error::Result;
#[cfg(doc)]
use crate::keys::Keys;
use crate::keys::TaskKey;
use crate::message::TaskMessage;
use crate::reply::ReplyTo;
use crate::store::Store;

pub use ready::ReadyTask;

/// Most scripts sent in one pipeline.
const PIPELINE_CHUNK: usize = 1000;

/// Most graph tasks registered by one script call (several calls go in one pipeline): one
/// call per task would cost Redis more than the registering itself (a script call's set-up is
/// most of a small task's), and a call for many more would keep Redis from serving others for
/// long.
const REGISTER_CHUNK: usize = 200;

/// Registers graph tasks, each idempotently: registering a task again (a retry whose first reply
/// was lost, or another producer's identical graph) redoes every step and answers as the first
/// time would now. ARGV: the key prefix, the TTL in ms, the records' TTL in ms (lineage), then
/// for each task its key, its message,
/// its number of dependencies and their keys. Returns for each task, in order, 0 (its result is
/// stored, or it is published: nothing to do), 1 (waiting) or 2 (ready: the caller publishes
/// it). A marker counts only beside a record that existed before: when the record is written
/// anew, a marker left there is deleted. The record's TTL is renewed, the marker's is not (so
/// that a marker whose message was lost expires however often the task is registered). Key
/// names are built from the prefix, as a single Redis allows (on a cluster: [`cluster`]).
static REGISTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local prefix = ARGV[1]
local ttl = ARGV[2]
local record_ttl = ARGV[3]
local codes = {}
local i = 4
while i <= #ARGV do
  local key = ARGV[i]
  local first_dep = i + 3
  local last_dep = first_dep + tonumber(ARGV[i + 2]) - 1
  local record = prefix .. ':task:' .. key
  local published = prefix .. ':published:' .. key
  local code = 1
  if redis.call('EXISTS', prefix .. ':result:' .. key) == 1 then
    code = 0
  elseif redis.call('SET', record, ARGV[i + 1], 'NX', 'PX', record_ttl) then
    redis.call('DEL', published)
  else
    redis.call('PEXPIRE', record, record_ttl)
    if redis.call('EXISTS', published) == 1 then code = 0 end
  end
  if code == 1 then
    local pending = {}
    local stored = {}
    for d = first_dep, last_dep do
      local dep = ARGV[d]
      if redis.call('EXISTS', prefix .. ':result:' .. dep) == 0 then
        local dependents = prefix .. ':dependents:' .. dep
        redis.call('SADD', dependents, key)
        redis.call('PEXPIRE', dependents, ttl)
        pending[#pending + 1] = dep
      else
        stored[#stored + 1] = dep
      end
    end
    -- The pending set in one command per 1000 inputs, not one per input (Lua's unpack
    -- fails beyond about 8000 values).
    local pending_set = prefix .. ':pending:' .. key
    for s = 1, #stored, 1000 do
      redis.call('SREM', pending_set, unpack(stored, s, math.min(s + 999, #stored)))
    end
    if #pending == 0 then
      code = 2
    else
      for p = 1, #pending, 1000 do
        redis.call('SADD', pending_set, unpack(pending, p, math.min(p + 999, #pending)))
      end
      redis.call('PEXPIRE', pending_set, ttl)
    end
  end
  codes[#codes + 1] = code
  i = last_dep + 1
end
return codes
",
    )
});

/// Marks published graph tasks. ARGV: the key prefix, then their keys. Sets each one's marker,
/// with its record's remaining TTL, only while it has a record and no result (so that a marker
/// never outlives its record, nor the result it vouches for). One script for many tasks: a
/// script per task would cost Redis more than the marking itself. (On a cluster, one per task:
/// [`cluster`].)
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local prefix = ARGV[1]
for i = 2, #ARGV do
  if redis.call('EXISTS', prefix .. ':result:' .. ARGV[i]) == 0 then
    local ttl = redis.call('PTTL', prefix .. ':task:' .. ARGV[i])
    if ttl > 0 then
      redis.call('SET', prefix .. ':published:' .. ARGV[i], '1', 'PX', ttl)
    end
  end
end
return 0
",
    )
});

/// Releases the dependents of stored outcomes: the one release script, for a writer's batch
/// (depth 0) and for a redelivery (deeper, see [`Store::release_again`]). ARGV: the key prefix,
/// the depth, then the stored keys. For each stored key: deletes its published marker (its
/// result is stored), removes it from its dependents' pending sets, and returns the record of
/// each dependent with nothing pending and no result, marking it published (the caller
/// publishes it before acknowledging; a ready dependent is returned whether or not it is
/// marked, so that a caller that died before publishing is replaced by the redelivery). Then,
/// at most ARGV[2] levels down, the same for each dependent found with a result already (and
/// nothing pending): for a redelivered task whose outcome is stored, the worker that stored it
/// may have run its dependents itself (local continuation) and died before their dependents
/// were released, which no delivery of their own would do again. Each dependent is returned
/// once.
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// The source of [`RELEASE`] (loaded again when Redis answers `NOSCRIPT` in a pipeline).
const RELEASE_LUA: &str = r"
local prefix = ARGV[1]
local depth = tonumber(ARGV[2])
local ready = {}
local seen = {}
local level = {}
for i = 3, #ARGV do
  if not seen[ARGV[i]] then
    seen[ARGV[i]] = true
    level[#level + 1] = ARGV[i]
  end
end
while #level > 0 and depth >= 0 do
  local below = {}
  for _, key in ipairs(level) do
    redis.call('DEL', prefix .. ':published:' .. key)
    local dependents = redis.call('SMEMBERS', prefix .. ':dependents:' .. key)
    for _, d in ipairs(dependents) do
      local pending = prefix .. ':pending:' .. d
      redis.call('SREM', pending, key)
      if not seen[d] and redis.call('SCARD', pending) == 0 then
        seen[d] = true
        if redis.call('EXISTS', prefix .. ':result:' .. d) == 1 then
          below[#below + 1] = d
        else
          local record = prefix .. ':task:' .. d
          local message = redis.call('GET', record)
          if message then
            local ttl = redis.call('PTTL', record)
            if ttl > 0 then redis.call('SET', prefix .. ':published:' .. d, '1', 'PX', ttl) end
            table.insert(ready, message)
          end
        end
      end
    end
  end
  level = below
  depth = depth - 1
end
return ready
";

/// What a batch of outcomes to store is known to hold, which says when its release runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Anything (most outcomes have no dependents): the pipeline that stores the batch reads
    /// the union of its keys' dependents sets, and only when that is not empty does a second
    /// round trip run the release script (a script costs Redis more than a command).
    Unknown,
    /// Graph tasks, which mostly have dependents (tasks a worker ran as the continuation of
    /// outcomes it stored, say): the release script runs in the pipeline that stores the
    /// batch, after the results: one round trip, no union read first.
    Graph,
}

/// What registering a graph task found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Its result is stored, or its message is marked published (by the producer that
    /// published it, once confirmed, or by the worker that released it): nothing to do. A
    /// task registered before but neither stored nor marked answers `Waiting` or `Ready`
    /// again, so that a registration can always be retried.
    Known,
    /// It waits for inputs; a worker publishes it when the last one is stored.
    Waiting,
    /// Every input is stored, it has no result and is not marked published: the caller must
    /// publish it now (even if an earlier registration found it ready: its caller may have
    /// died before publishing), and then mark it with [`Store::mark_published`].
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
            let mut invocations = Vec::with_capacity(chunk.len().div_ceil(REGISTER_CHUNK));
            for tasks in chunk.chunks(REGISTER_CHUNK) {
                let mut inv = REGISTER.prepare_invoke();
                inv.arg(keys.prefix()).arg(ttl_ms).arg(self.lineage_ms());
                for task in tasks {
                    inv.arg(task.key.as_str())
                        .arg(task.encode()?)
                        .arg(task.deps.len());
                    for dep in &task.deps {
                        inv.arg(dep.as_str());
                    }
                }
                invocations.push(inv);
            }
            let mut pipe = redis::pipe();
            pipe.load_script(&REGISTER).ignore();
            for inv in &invocations {
                pipe.invoke_script(inv);
            }
            let codes: Vec<Vec<u8>> = pipe.query_async(&mut self.connection()).await?;
            found.extend(codes.into_iter().flatten().map(|code| match code {
                0 => Registration::Known,
                1 => Registration::Waiting,
                _ => Registration::Ready,
            }));
        }
        self.replicate().await?;
        Ok(found)
    }

    /// Marks graph tasks as published ([`Keys::published`]), once the broker has confirmed
    /// their messages, so that registering them again answers [`Registration::Known`] instead
    /// of publishing them again: one round trip per 1000 tasks. A task whose result is stored
    /// already, or that has no record (released or purged meanwhile), is not marked.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails. Nothing is lost then: an unmarked task is only
    /// published again if it is registered again before its result is stored.
    pub async fn mark_published(&self, tasks: &[TaskKey]) -> Result<()> {
        for chunk in tasks.chunks(PIPELINE_CHUNK) {
            if self.keys().is_clustered() {
                self.mark_published_by_slot(chunk).await?;
                continue;
            }
            let mut inv = MARK.prepare_invoke();
            inv.arg(self.keys().prefix());
            for key in chunk {
                inv.arg(key.as_str());
            }
            let mut pipe = redis::pipe();
            pipe.load_script(&MARK).ignore();
            pipe.invoke_script(&inv).ignore();
            pipe.query_async::<()>(&mut self.connection()).await?;
        }
        Ok(())
    }

    /// Stores `outcomes` write-once, announces them and releases their dependents (the release
    /// script), in that order: one round trip for a worker's batch when it has no dependents,
    /// two when it has (on a cluster, a few: see [`cluster`]), per 1000 outcomes; then waits
    /// for `redis_wait_replicas` replicas, if any. Returns the dependents that are ready to run,
    /// without duplicates, as their stored records (published as they are, not decoded and
    /// encoded again); publish them before acknowledging.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails (call again: storing and releasing are idempotent).
    pub async fn store_and_release(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<Vec<ReadyTask>> {
        self.store_and_release_with(outcomes, &[], Batch::Unknown, Vec::new())
            .await
    }

    /// [`Store::store_and_release`] for a `batch` of what kind, writing `events` (task events,
    /// see [`crate::events`]) in the first pipeline with `recorder` (on a Redis Cluster, in a
    /// pipeline of their own), and sending the outcomes of `replies` (keys of `outcomes`, each
    /// with the client that waits for it) to their clients ([`crate::reply`]) right after they
    /// are stored. A [`Batch::Graph`] is stored and released in one round trip.
    ///
    /// # Errors
    /// As [`Store::store_and_release`].
    pub async fn store_and_release_recording(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
        replies: &[(TaskKey, ReplyTo)],
        batch: Batch,
        recorder: &crate::events::Recorder,
        events: &[crate::events::Event],
    ) -> Result<Vec<ReadyTask>> {
        if self.keys().is_clustered() {
            // Events are not worth failing a batch of results for.
            if let Err(e) = recorder.write(self, events).await {
                tracing::warn!(error = %e, events = events.len(), "could not record task events");
            }
            return self
                .store_and_release_with(outcomes, replies, batch, Vec::new())
                .await;
        }
        self.store_and_release_with(outcomes, replies, batch, recorder.commands(events))
            .await
    }

    /// [`Store::store_and_release`] of a `batch` sending `replies`, with `extra` commands
    /// (replies ignored) in the first pipeline of a single Redis.
    async fn store_and_release_with(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
        replies: &[(TaskKey, ReplyTo)],
        batch: Batch,
        mut extra: Vec<redis::Cmd>,
    ) -> Result<Vec<ReadyTask>> {
        // In chunks, so that no release script keeps Redis from serving others for long.
        let mut bodies = Vec::new();
        for chunk in outcomes.chunks(PIPELINE_CHUNK) {
            let replies = self.reply_commands(chunk, replies);
            if self.keys().is_clustered() {
                bodies.extend(self.store_and_release_by_slot(chunk, replies).await?);
            } else {
                let extra = std::mem::take(&mut extra);
                bodies.extend(
                    self.store_and_release_chunk(chunk, batch, replies, extra)
                        .await?,
                );
                self.replicate().await?;
            }
        }
        Ok(decode_ready(bodies))
    }

    /// The commands that send the outcomes of `replies` stored by `chunk` ([`crate::reply`]).
    fn reply_commands(
        &self,
        chunk: &[(TaskKey, Vec<u8>)],
        replies: &[(TaskKey, ReplyTo)],
    ) -> Vec<redis::Cmd> {
        replies
            .iter()
            .filter(|(key, _)| chunk.iter().any(|(stored, _)| stored == key))
            .map(|(key, to)| crate::reply::command(self.keys(), key, to))
            .collect()
    }

    /// [`Store::store_and_release`] for at most [`PIPELINE_CHUNK`] outcomes on a single Redis:
    /// the records of the dependents released.
    ///
    /// One pipeline stores and announces the outcomes, and then, for a [`Batch::Graph`], runs
    /// the release script; for a [`Batch::Unknown`], it deletes the published markers and reads
    /// the union of the stored keys' dependents sets instead (plain commands: most results have
    /// no dependents, and a script costs Redis more than a command), and only when that union
    /// is not empty does a second round trip run the release script. No dependent can slip
    /// between the two: a registration links itself to an input only while the input has no
    /// result (atomically, in its script), and the union is read after the results are written,
    /// so it holds every dependent linked before them, and none links after them.
    async fn store_and_release_chunk(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
        batch: Batch,
        replies: Vec<redis::Cmd>,
        extra: Vec<redis::Cmd>,
    ) -> Result<Vec<Vec<u8>>> {
        let keys = self.keys();
        // Replied to and announced in the same round trip: waiters learn of the results
        // without waiting for the dependents' bookkeeping; a reply first, so that its client
        // has the outcome before the announcement would make it read it.
        let mut pipe = self.outcomes_pipeline(outcomes);
        for reply in replies {
            pipe.add_command(reply).ignore();
        }
        self.announce(&mut pipe, outcomes)?;
        for cmd in extra {
            pipe.add_command(cmd).ignore();
        }
        let mut release = redis::cmd("EVALSHA");
        release
            .arg(RELEASE.get_hash())
            .arg(0)
            .arg(keys.prefix())
            .arg(0);
        for (key, _) in outcomes {
            release.arg(key.as_str());
        }
        if batch == Batch::Graph {
            pipe.add_command(release.clone());
            return match pipe.query_async(&mut self.connection()).await {
                Ok((bodies,)) => Ok(bodies),
                // The results are stored all the same (a pipeline is not a transaction).
                Err(e) if is_no_script(&e) => self.release_loading(&release).await,
                Err(e) => Err(e.into()),
            };
        }
        pipe.cmd("DEL");
        for (key, _) in outcomes {
            pipe.arg(keys.published(key));
        }
        pipe.ignore();
        pipe.cmd("SUNION");
        for (key, _) in outcomes {
            pipe.arg(keys.dependents(key));
        }
        let (dependents,): (Vec<Vec<u8>>,) = pipe.query_async(&mut self.connection()).await?;
        if dependents.is_empty() {
            return Ok(Vec::new());
        }
        match release.query_async(&mut self.connection()).await {
            Err(e) if is_no_script(&e) => self.release_loading(&release).await,
            other => Ok(other?),
        }
    }

    /// Runs the `release` script call after loading [`RELEASE`] (Redis answered `NOSCRIPT`:
    /// restarted, or its scripts flushed).
    async fn release_loading(&self, release: &redis::Cmd) -> Result<Vec<Vec<u8>>> {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(RELEASE_LUA)
            .query_async::<String>(&mut self.connection())
            .await?;
        Ok(release.query_async(&mut self.connection()).await?)
    }
}

/// Whether Redis answered `NOSCRIPT` (the script is not loaded).
fn is_no_script(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

impl Store {
    /// Releases the dependents of `keys` (whose outcomes are stored) again, and, through those
    /// that have a result already, their dependents, down to `depth` levels below `keys`;
    /// returns those ready to run (nothing pending, no result), as their stored records, marked
    /// published. For redelivered tasks: the worker that stored their outcomes may have run
    /// their dependents itself and died before releasing what those released in turn. On a
    /// Redis Cluster, where workers never run released tasks themselves, nothing (the plain
    /// release of the stored batch does all).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails (call again: releasing is idempotent).
    pub async fn release_again(&self, keys: &[TaskKey], depth: usize) -> Result<Vec<ReadyTask>> {
        if keys.is_empty() || self.keys().is_clustered() {
            return Ok(Vec::new());
        }
        let mut bodies = Vec::new();
        for chunk in keys.chunks(PIPELINE_CHUNK) {
            let mut inv = RELEASE.prepare_invoke();
            inv.arg(self.keys().prefix()).arg(depth);
            for key in chunk {
                inv.arg(key.as_str());
            }
            let found: Vec<Vec<u8>> = inv.invoke_async(&mut self.connection()).await?;
            bodies.extend(found);
        }
        Ok(decode_ready(bodies))
    }
}

/// The ready dependents' task records, their heads read, without duplicates.
fn decode_ready(bodies: Vec<Vec<u8>>) -> Vec<ReadyTask> {
    let mut seen = std::collections::HashSet::new();
    let mut ready = Vec::with_capacity(bodies.len());
    for body in bodies {
        match ReadyTask::from_body(body) {
            Ok(task) if seen.insert(task.key.clone()) => ready.push(task),
            Ok(_) => {}
            Err(e) => tracing::warn!(reason = %e.reason, "skipping an undecodable task record"),
        }
    }
    ready
}
