//! Storing a batch of outcomes so that one that Redis refuses cannot hold the others: the batch
//! goes in one pipeline; if Redis refuses it for what it holds (a script error on one task's
//! graph records, say), it is split in halves, each stored on its own, down to the refused
//! outcome alone, whose delivery is dead-lettered with Redis's reason (a batch message's
//! outcomes stay together: Redis refusing one of them dead-letters the whole batch). A batch of
//! `n` outcomes with one refused costs about `2 log2 n` more round trips, on this failure path
//! only.

use lapin::message::Delivery;
use rask_common::dependencies::ReadyTask;
use rask_common::events::{Event, Recorder};
use rask_common::{ErrorKind, Store, TaskKey};

use super::Finished;
use crate::retry;

/// A batch stored as far as Redis allows.
#[derive(Default)]
pub(super) struct Stored {
    /// Stored: acknowledge once `ready` is published.
    pub(super) done: Vec<Finished>,
    /// Refused for good, with the reason: dead-letter each.
    pub(super) refused: Vec<(Delivery, String)>,
    /// The dependents released by what was stored, to publish before acknowledging.
    pub(super) ready: Vec<ReadyTask>,
}

/// Part of a batch: the finished tasks and their outcomes (moved out of them), in order; a
/// batch message's outcomes (`Finished::more`) follow its first, and stay in the same group.
struct Group {
    finished: Vec<Finished>,
    outcomes: Vec<(TaskKey, Vec<u8>)>,
    /// How many outcomes each of `finished` has (1 unless a batch message).
    counts: Vec<usize>,
}

impl Group {
    fn new(mut finished: Vec<Finished>) -> Self {
        let mut outcomes = Vec::with_capacity(finished.len());
        let mut counts = Vec::with_capacity(finished.len());
        for f in &mut finished {
            counts.push(1 + f.more.len());
            outcomes.push((f.key.clone(), std::mem::take(&mut f.outcome)));
            outcomes.append(&mut f.more);
        }
        Group {
            finished,
            outcomes,
            counts,
        }
    }

    /// Splits off the second half (of the finished tasks, each with all its outcomes).
    fn split(&mut self) -> Group {
        let mid = self.finished.len() / 2;
        let at = self.counts[..mid].iter().sum();
        Group {
            finished: self.finished.split_off(mid),
            outcomes: self.outcomes.split_off(at),
            counts: self.counts.split_off(mid),
        }
    }
}

/// Stores `batch` and releases its dependents (see the module docs), retrying transient errors.
///
/// # Errors
/// An [`ErrorKind::Configuration`] error (Redis refuses every write of this worker: a replica,
/// missing ACL permissions): nothing more can be stored.
///
/// The task events of `recording` go in the first pipeline tried (only: a batch Redis refuses
/// is split and stored without them, so that they never hold a result).
pub(super) async fn store(
    store: &Store,
    batch: Vec<Finished>,
    recording: (&Recorder, Vec<Event>),
) -> rask_common::Result<Stored> {
    let mut stored = Stored::default();
    let mut todo = vec![Group::new(batch)];
    let (recorder, mut events) = recording;
    while let Some(mut group) = todo.pop() {
        let attempt = retry::until_ok("storing results", || {
            store.store_and_release_recording(&group.outcomes, recorder, &events)
        })
        .await;
        events.clear();
        match attempt {
            Ok(ready) => {
                stored.ready.extend(ready);
                stored.done.extend(group.finished);
            }
            Err(e) if e.kind() == ErrorKind::Configuration => return Err(e),
            Err(e) if group.finished.len() > 1 => {
                let tasks = group.finished.len();
                tracing::warn!(error = %e, tasks, "Redis refused a batch of outcomes; storing its halves apart");
                let second = group.split();
                todo.push(second);
                todo.push(group);
            }
            Err(e) => {
                let finished = group.finished.pop().expect("a group of one");
                let reason = refusal_reason(store, &finished.key, &e).await;
                tracing::error!(key = %finished.key, reason, "dead-lettering a task whose outcome Redis refuses");
                stored.refused.push((finished.delivery, reason));
            }
        }
    }
    Ok(stored)
}

/// Why the outcome of task `key` could not be stored: if it is stored all the same (a
/// pipeline is not a transaction), the fault is in releasing its graph dependents.
async fn refusal_reason(store: &Store, key: &TaskKey, error: &rask_common::Error) -> String {
    let stored = store.get_outcomes(std::slice::from_ref(key)).await;
    if matches!(stored.as_deref(), Ok([Some(_)])) {
        format!("its outcome is stored, but Redis refused to release its graph dependents: {error}")
    } else {
        format!("Redis refused to store its outcome: {error}")
    }
}
