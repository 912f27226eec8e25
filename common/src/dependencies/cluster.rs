//! Graph bookkeeping on a Redis Cluster, where a script may only touch keys of one hash slot
//! and each task's keys live in the slot of its own key ([`crate::keys::Keys::clustered`]).
//!
//! The single-Redis scripts check and update a task and its inputs at once; here the same
//! records are kept by steps that each stay in one slot, ordered so that no dependent is
//! released early or forgotten:
//!
//! - **Register** task `T` waiting for inputs `D…`: (1) in `T`'s slot, unless `T`'s result is
//!   stored: the first time, write its pending set with *every* input (so nothing can release
//!   it yet) and then its record; when the record exists already, keep the pending set as it
//!   is (it only ever lost inputs that are stored); (2) in each `D`'s slot, atomically: if
//!   `D`'s result is stored report it, else add `T` to `D`'s dependents; (3) in `T`'s slot,
//!   remove the inputs found stored from the pending set; `T` is ready when it empties. An
//!   input stored after step 2 finds `T` among its dependents. Steps 2 and 3 run on every
//!   registration of a task with inputs pending, so registering again (a retry after a failure
//!   between the steps or a lost reply, or another producer's identical graph) completes what
//!   an earlier one left undone, and never adds back an input that was released.
//! - **Store and release** outcomes `K…`: (1) store them, write-once; (2) once stored, read
//!   each `K`'s dependents (so a registration's step 2 either saw the result or is seen here);
//!   (3) in each dependent's slot, remove the stored inputs from its pending set and return its
//!   record when that empties and it has no result; (4) announce.
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

/// Step 1 of registering. KEYS: the task's result, record and pending set. ARGV: its message,
/// the TTL in ms, then its inputs. The first registration writes the pending set with every
/// input and then the record (so that a record always has its whole pending set); a later one
/// (a retry, or another producer) keeps the pending set as releases left it, and only renews
/// the TTLs. Returns 0 (its result is stored), 1 (inputs pending: go on with step 2) or 2 (no
/// input pending: ready).
static REGISTER_OWN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  for i = 3, #ARGV, 1000 do
    redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  if #ARGV > 2 then redis.call('PEXPIRE', KEYS[3], ARGV[2]) end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  if #ARGV == 2 then return 2 end
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if #ARGV == 2 or redis.call('SCARD', KEYS[3]) == 0 then return 2 end
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
/// pending set, result and record. ARGV: the stored inputs (any number: they are removed 1000
/// at a time, as Lua's `unpack` fails beyond about 8000 values). Returns its record if nothing
/// is pending and it has no result, else false.
static UNPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #ARGV, 1000 do
  redis.call('SREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('GET', KEYS[3])
end
return false
",
    )
});

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
                .arg(task.encode()?)
                .arg(ttl_ms);
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
        );
        for ((i, _), body) in unpend.iter().zip(ready.await?) {
            if body.is_some() {
                found[*i] = Registration::Ready;
            }
        }
        Ok(found)
    }

    /// [`Store::store_and_release`] on a cluster (see the module docs), for one chunk of
    /// outcomes: four pipelines. Returns the records of the dependents released.
    pub(super) async fn store_and_release_by_slot(
        &self,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<Vec<Vec<u8>>> {
        self.outcomes_pipeline(outcomes)
            .query_async::<()>(&mut self.connection())
            .await?;
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
            .unpend(inputs.iter().map(|(task, deps)| (task, deps.as_slice())))
            .await?;
        self.replicate().await?;
        let mut announce = redis::pipe();
        self.announce(&mut announce, outcomes)?;
        announce.query_async::<()>(&mut self.connection()).await?;
        Ok(ready.into_iter().flatten().collect())
    }

    /// Runs [`UNPEND`] for each waiting task and its stored inputs; returns the records of
    /// those that became ready, in order (`None` for the others).
    async fn unpend<'a>(
        &self,
        tasks: impl Iterator<Item = (&'a TaskKey, &'a [&'a TaskKey])>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let keys = self.keys();
        let mut pipe = redis::pipe();
        pipe.load_script(&UNPEND).ignore();
        let mut any = false;
        for (task, inputs) in tasks {
            let mut inv = UNPEND.prepare_invoke();
            inv.key(keys.pending(task))
                .key(keys.result(task))
                .key(keys.task(task));
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
