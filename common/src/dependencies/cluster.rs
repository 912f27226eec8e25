//! Graph bookkeeping on a Redis Cluster, where a script may only touch keys of one hash slot
//! and each task's keys live in the slot of its own key ([`crate::keys::Keys::clustered`]).
//!
//! The single-Redis scripts check and update a task and its inputs at once; here the same
//! records are kept by steps that each stay in one slot, ordered so that no dependent is
//! released early or forgotten:
//!
//! - **Register** task `T` waiting for inputs `D…`: (1) in `T`'s slot, unless `T`'s result is
//!   stored or `T` is marked published beside an existing record (see [`super`]): the first time
//!   (deleting a marker left without a record), write its pending set with *every* input (so
//!   nothing can release it yet) and then its record; when the record exists already, keep the
//!   pending set as it is (it only ever lost inputs that are stored); (2) in each `D`'s slot,
//!   atomically: if `D`'s result is stored report it, else add `T` to `D`'s dependents; (3) in
//!   `T`'s slot, remove the inputs found stored from the pending set; `T` is ready when it empties.
//!   An input stored after step 2 finds `T` among its dependents. Steps 2 and 3 run on every
//!   registration of a task with inputs pending, so registering again (a retry after a failure
//!   between the steps or a lost reply, or another producer's identical graph) completes what an
//!   earlier one left undone, and never adds back an input that was released.
//! - **Store and release** outcomes `K…`: (1) store them, write-once, and delete their published
//!   markers (in the same pipeline, each in its own slot); (2) once stored, read each `K`'s
//!   dependents (so a registration's step 2 either saw the result or is seen here); (3) in each
//!   dependent's slot, remove the stored inputs from its pending set and return its record when
//!   that empties and it has no result, marking it published; (4) announce. Step 3 of
//!   registering removes inputs the same way but marks nothing: the producer marks what it
//!   publishes once the broker has confirmed it.
//!
//! Both sides may find a dependent ready at once and publish it twice: harmless, results are
//! write-once (as on a single Redis). Every step is idempotent, so a failed call is repeated.
//! Scripts take any number of inputs: Lua's `unpack` fails beyond about 8000 values, so they
//! pass them to Redis 1000 at a time.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::Script;

use super::Registration;
use crate::error::Result;
use crate::keys::TaskKey;
use crate::message::TaskMessage;
use crate::store::Store;

/// Step 1 of registering. KEYS: the task's result, record, pending set and published marker.
/// ARGV: its message, the TTL in ms, the record's TTL in ms (lineage), then its inputs. The first registration deletes a marker
/// left without a record, writes the pending set with every input and then the record (so that
/// a record always has its whole pending set); a later one (a retry, or another producer)
/// keeps the pending set as releases left it, and only renews the TTLs (the record's, not the
/// marker's). Returns 0 (its result is stored, or it is marked published), 1 (inputs pending:
/// go on with step 2) or 2 (no input pending: ready).
static REGISTER_OWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[4])
  for i = 4, #ARGV, 1000 do
    redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  if #ARGV > 3 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  if #ARGV == 3 then return 2 end
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
if #ARGV == 3 or redis.call('SCARD', KEYS[3]) == 0 then return 2 end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
",
    )
});

/// Step 2 of registering, in an input's slot. KEYS: the input's result and dependents set.
/// ARGV: the waiting task's key, the TTL in ms. Returns 1 if the input is stored, else 0 after
/// adding the task to the input's dependents.
static LINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
",
    )
});

/// Removes stored inputs from a waiting task's pending set, in the task's slot. KEYS: its
/// pending set, result, record and published marker. ARGV: `1` to mark the task published when
/// it is returned (a release, whose caller publishes it) or `0` (a registration, whose producer
/// marks it once the broker confirmed it), then the stored inputs (any number: they are removed
/// 1000 at a time, as Lua's `unpack` fails beyond about 8000 values). Returns its record if
/// nothing is pending and it has no result (marked or not), else false.
static UNPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 2, #ARGV, 1000 do
  redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  local message = redis.call('GET', KEYS[3])
  if message and ARGV[1] == '1' then
    local ttl = redis.call('PTTL', KEYS[3])
    if ttl > 0 then redis.call('SET', KEYS[4], '1', 'PX', ttl) end
  end
  return message
end
return false
",
    )
});

/// Marks one published task, in its slot: [`super::MARK`] for one task. KEYS: its result,
/// record and published marker. Returns 1 if the marker was set, else 0.
static MARK_OWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then return 0 end
redis.call('SET', KEYS[3], '1', 'PX', ttl)
return 1
",
    )
});

/// Whether [`UNPEND`] marks the tasks it returns as published.
#[derive(Clone, Copy)]
enum Mark {
    /// A release: its caller publishes what is returned before acknowledging.
    Published,
    /// A registration: its producer marks what it published once the broker confirmed it.
    No,
}

impl Store {
    /// [`Store::register_tasks`] on a cluster (see the module docs): three pipelines.
    pub(super) async fn register_tasks_by_slot(
        &self,
        tasks: &[TaskMessage],
    ) -> Result<Vec<Registration>> {
        let keys = self.keys();
        let ttl_ms = self.ttl_ms();
        let mut own = redis::pipe();
        own.load_script(&REGISTER_OWN).ignore();
        for task in tasks {
            let mut inv = REGISTER_OWN.prepare_invoke();
            inv.key(keys.result(&task.key))
                .key(keys.task(&task.key))
                .key(keys.pending(&task.key))
                .key(keys.published(&task.key))
                .arg(task.encode()?)
                .arg(ttl_ms)
                .arg(self.lineage_ms());
            for dep in &task.deps {
                inv.arg(dep.as_str());
            }
            own.invoke_script(&inv);
        }
        let codes: Vec<u8> = own.query_async(&mut self.connection()).await?;
        let mut found: Vec<Registration> = codes
            .iter()
            .map(|code| match code {
                0 => Registration::Known,
                1 => Registration::Waiting,
                _ => Registration::Ready,
            })
            .collect();

        let waiting: Vec<(usize, &TaskKey)> = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| found[*i] == Registration::Waiting)
            .flat_map(|(i, task)| task.deps.iter().map(move |dep| (i, dep)))
            .collect();
        if waiting.is_empty() {
            return Ok(found);
        }
        let mut link = redis::pipe();
        link.load_script(&LINK).ignore();
        for (i, dep) in &waiting {
            let mut inv = LINK.prepare_invoke();
            inv.key(keys.result(dep))
                .key(keys.dependents(dep))
                .arg(tasks[*i].key.as_str())
                .arg(ttl_ms);
            link.invoke_script(&inv);
        }
        let stored: Vec<u8> = link.query_async(&mut self.connection()).await?;
        let mut stored_inputs: BTreeMap<usize, Vec<&TaskKey>> = BTreeMap::new();
        for ((i, dep), stored) in waiting.into_iter().zip(stored) {
            if stored == 1 {
                stored_inputs.entry(i).or_default().push(dep);
            }
        }
        let unpend: Vec<(usize, Vec<&TaskKey>)> = stored_inputs.into_iter().collect();
        let ready = self.unpend(
            unpend
                .iter()
                .map(|(i, deps)| (&tasks[*i].key, deps.as_slice())),
            Mark::No,
        );
        for ((i, _), body) in unpend.iter().zip(ready.await?) {
            if body.is_some() {
                found[*i] = Registration::Ready;
            }
        }
        Ok(found)
    }

    /// [`Store::mark_published`] on a cluster, for one chunk of tasks: one pipeline.
    pub(super) async fn mark_published_by_slot(&self, tasks: &[TaskKey]) -> Result<()> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.load_script(&MARK_OWN).ignore();
        for key in tasks {
            let mut inv = MARK_OWN.prepare_invoke();
            inv.key(keys.result(key))
                .key(keys.task(key))
                .key(keys.published(key));
            pipe.invoke_script(&inv).ignore();
        }
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }

    /// [`Store::store_and_release`] on a cluster (see the module docs), for one chunk of
    /// outcomes: four pipelines, the first also sending `replies` ([`crate::reply`]). Returns
    /// the records of the dependents released (marked published).
    pub(super) async fn store_and_release_by_slot(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
        replies: Vec<redis::Cmd>,
    ) -> Result<Vec<Vec<u8>>> {
        let mut store = self.outcomes_pipeline(outcomes);
        // After each result, in its slot: a stored result needs no marker, and one left would
        // outlive it.
        for (key, _) in outcomes {
            store.cmd("DEL").arg(self.keys().published(key)).ignore();
        }
        // In the result's slot too (the script's key), after it is stored.
        for reply in replies {
            store.add_command(reply).ignore();
        }
        store.query_async::<()>(&mut self.connection()).await?;
        let mut members = redis::pipe();
        for (key, _) in outcomes {
            members.cmd("SMEMBERS").arg(self.keys().dependents(key));
        }
        let dependents: Vec<Vec<String>> = members.query_async(&mut self.connection()).await?;
        let mut inputs: BTreeMap<TaskKey, Vec<&TaskKey>> = BTreeMap::new();
        for ((key, _), dependents) in outcomes.iter().zip(dependents) {
            for dependent in dependents {
                match TaskKey::new(dependent) {
                    Ok(dependent) => inputs.entry(dependent).or_default().push(key),
                    Err(e) => tracing::warn!(error = %e, "skipping a bad dependent key"),
                }
            }
        }
        let ready = self
            .unpend(
                inputs.iter().map(|(task, deps)| (task, deps.as_slice())),
                Mark::Published,
            )
            .await?;
        self.replicate().await?;
        let mut announce = redis::pipe();
        self.announce(&mut announce, outcomes)?;
        announce.query_async::<()>(&mut self.connection()).await?;
        Ok(ready.into_iter().flatten().collect())
    }

    /// Runs [`UNPEND`] for each waiting task and its stored inputs; returns the records of
    /// those that became ready, in order (`None` for the others), marked as `mark` says.
    async fn unpend<'a>(
        &self,
        tasks: impl Iterator<Item = (&'a TaskKey, &'a [&'a TaskKey])>,
        mark: Mark,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.load_script(&UNPEND).ignore();
        let mut any = false;
        for (task, inputs) in tasks {
            let mut inv = UNPEND.prepare_invoke();
            inv.key(keys.pending(task))
                .key(keys.result(task))
                .key(keys.task(task))
                .key(keys.published(task))
                .arg(match mark {
                    Mark::Published => "1",
                    Mark::No => "0",
                });
            for input in inputs {
                inv.arg(input.as_str());
            }
            pipe.invoke_script(&inv);
            any = true;
        }
        if !any {
            return Ok(Vec::new());
        }
        Ok(pipe.query_async(&mut self.connection()).await?)
    }
}
