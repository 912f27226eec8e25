//! Storing a batch of outcomes so that one that Redis refuses cannot hold the others: the batch
//! goes in one pipeline; if Redis refuses it for what it holds (a script error on one task's
//! graph records, say), it is split in halves, each stored on its own, down to the refused
//! outcome alone, whose delivery is dead-lettered with Redis's reason (a batch message's
//! outcomes stay together: Redis refusing one of them dead-letters the whole batch). A batch of
//! `n` outcomes with one refused costs about `2 log2 n` more round trips, on this failure path
//! only.

use std::collections::HashSet;

use rask_common::dependencies::{Batch, ReadyTask};
use rask_common::events::{Event, Recorder};
use rask_common::reply::ReplyTo;
use rask_common::{ErrorKind, Store, TaskKey};

use super::Finished;
use crate::retry;
use crate::ticket::Ticket;

/// A batch stored as far as Redis allows.
#[derive(Default)]
pub(super) struct Stored {
    /// Stored: acknowledge once `ready` is published.
    pub(super) done: Vec<Finished>,
    /// Refused for good, with the reason: dead-letter each.
    pub(super) refused: Vec<(Ticket, String)>,
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

    /// What the group holds, which says when its release runs: graph tasks when `graph` (the
    /// batch before released dependents) or when any of them ran as a continuation (released
    /// by outcomes this worker stored), since most such tasks have dependents: the release then
    /// runs in the pipeline that stores them. Either way is right for any batch; this only
    /// saves a round trip where dependents are likely, and a script call where they are not.
    fn kind(&self, graph: bool) -> Batch {
        if graph
            || self
                .finished
                .iter()
                .any(|f| matches!(f.ticket, Ticket::Carried(_)))
        {
            Batch::Graph
        } else {
            Batch::Unknown
        }
    }

    /// The tasks whose outcomes go to a waiting client as well, with that client.
    fn replies(&self) -> Vec<(TaskKey, ReplyTo)> {
        self.finished
            .iter()
            .filter_map(|f| Some((f.key.clone(), f.reply.clone()?)))
            .collect()
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
///
/// `graph`: the batch stored before released dependents (a graph is running), so that this one
/// is stored as graph tasks (see [`Batch`]) even if none of its tasks ran as a continuation.
pub(super) async fn store(
    store: &Store,
    batch: Vec<Finished>,
    recording: (&Recorder, Vec<Event>),
    graph: bool,
) -> rask_common::Result<Stored> {
    let mut stored = Stored::default();
    // The keys of each redelivered task (a batch message's calls too), by its first.
    let redelivered: Vec<(TaskKey, Vec<TaskKey>)> = batch
        .iter()
        .filter(|f| f.ticket.delivery().is_some_and(|d| d.redelivered))
        .map(|f| {
            let keys = std::iter::once(&f.key).chain(f.more.iter().map(|(key, _)| key));
            (f.key.clone(), keys.cloned().collect())
        })
        .collect();
    let mut todo = vec![Group::new(batch)];
    let (recorder, mut events) = recording;
    while let Some(mut group) = todo.pop() {
        let kind = group.kind(graph);
        let replies = group.replies();
        let attempt = retry::until_ok("storing results", || {
            store.store_and_release_recording(&group.outcomes, &replies, kind, recorder, &events)
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
                stored.refused.push((finished.ticket, reason));
            }
        }
    }
    if !redelivered.is_empty() {
        // Only what was stored: releasing a key without a result would release too early.
        let done: HashSet<&TaskKey> = stored.done.iter().map(|f| &f.key).collect();
        let keys: Vec<TaskKey> = redelivered
            .into_iter()
            .filter(|(first, _)| done.contains(first))
            .flat_map(|(_, keys)| keys)
            .collect();
        again(store, &keys, &mut stored).await?;
    }
    Ok(stored)
}

/// Releases the dependents of the redelivered tasks of `stored` again through stored results
/// ([`Store::release_again`], as deep as tasks continue here: see `ticket.rs`), adding those
/// found ready to `stored.ready`: a worker that died after running released tasks itself left
/// what they released in turn to the redelivery of the task that released them.
async fn again(store: &Store, keys: &[TaskKey], stored: &mut Stored) -> rask_common::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let depth = crate::ticket::MAX_DEPTH + 1;
    let found = retry::until_ok("releasing dependents again", || {
        store.release_again(keys, depth)
    })
    .await;
    match found {
        Ok(found) => {
            let mut known: HashSet<TaskKey> = stored.ready.iter().map(|r| r.key.clone()).collect();
            let fresh = found.into_iter().filter(|r| known.insert(r.key.clone()));
            stored.ready.extend(fresh);
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::Configuration => Err(e),
        // Refused for what the records hold: the plain release of these keys went through.
        Err(e) => {
            tracing::error!(error = %e, tasks = keys.len(), "Redis refused to release dependents again");
            Ok(())
        }
    }
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
