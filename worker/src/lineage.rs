//! Graph tasks whose inputs are gone (expired or released): the inputs whose messages are
//! still stored are published again and the task waits for them as a record, instead of
//! failing; only an input whose message is gone too fails the task (`DependencyFailed`, naming
//! it). The steps and why they are safe: [`rask_common::dependencies::lineage`].

use rask_common::broker::Destination;
use rask_common::dependencies::lineage::{Relink, MAX_REBUILDS};
use rask_common::dependencies::ReadyTask;
use rask_common::{FailureKind, Outcome, TaskFailure, TaskKey, TaskMessage};

use crate::release;
use crate::retry;
use crate::worker::Shared;

/// What became of a graph task with inputs missing.
pub(crate) enum Recovery {
    /// It waits as a record for its inputs, published again: acknowledge its delivery (without
    /// an outcome); the release of its last input publishes it again.
    Waiting,
    /// Its missing inputs are stored now: read them again.
    Stored,
    /// An input cannot be rebuilt: store this failure.
    Failed(Outcome),
    /// Publishing an input failed for a cause that may pass: requeue the delivery.
    Requeue,
}

/// Rebuilds the `missing` inputs of `message` where their messages are stored (see the module
/// docs).
///
/// # Errors
/// The store's error if it refuses for a reason retrying cannot fix.
pub(crate) async fn recover(
    shared: &Shared,
    message: &TaskMessage,
    missing: &[TaskKey],
) -> rask_common::Result<Recovery> {
    let store = &shared.store;
    let key = &message.key;
    let body = message.encode()?;
    retry::until_ok("parking a graph task", || {
        store.wait_again(key, &body, missing)
    })
    .await?;
    let found = retry::until_ok("relinking inputs", || store.relink(key, missing)).await?;
    let mut stored = Vec::new();
    let mut rebuild = Vec::new();
    let mut waiting = false;
    for (input, relink) in missing.iter().zip(found) {
        let cannot = match relink {
            Relink::Stored => {
                stored.push(input.clone());
                continue;
            }
            Relink::OnItsWay => {
                waiting = true;
                continue;
            }
            Relink::Rebuild(record) => match ReadyTask::from_body(record) {
                Ok(ready) => {
                    rebuild.push(ready);
                    continue;
                }
                Err(bad) => format!(
                    "input {input} has no stored result and its stored message does not decode: {}",
                    bad.reason
                ),
            },
            Relink::Gone => format!(
                "input {input} has no stored result and its message is gone too (expired or \
                 released, and older than lineage_ttl): it cannot be recomputed"
            ),
            Relink::Exhausted => format!(
                "input {input} has no stored result: it was recomputed {MAX_REBUILDS} times \
                 from its message and its result is gone again"
            ),
        };
        let failure = TaskFailure::of(message, FailureKind::DependencyFailed, cannot, &shared.id);
        return Ok(Recovery::Failed(Outcome::Failure(failure)));
    }
    retry::until_ok("unparking a graph task", || store.unwait(key, &stored)).await?;
    if rebuild.is_empty() && !waiting {
        return Ok(Recovery::Stored);
    }
    for ready in &rebuild {
        let to = Destination::tasks(&shared.pools.settings_for(ready.pool.as_ref()));
        let published = match shared.confirms.get().await {
            Ok(channel) => release::publish_ready(&channel, &to, ready).await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::warn!(key = %key, input = %ready.key, error = %e, "publishing a missing input again failed; requeueing the task");
            return Ok(Recovery::Requeue);
        }
    }
    let rebuilt: Vec<TaskKey> = rebuild.into_iter().map(|r| r.key).collect();
    if !rebuilt.is_empty() {
        tracing::info!(key = %key, inputs = ?rebuilt, "inputs of a graph task were gone; recomputing them from their messages");
        if let Err(e) = store.mark_published(&rebuilt).await {
            tracing::warn!(error = %e, "could not mark rebuilt inputs published; a task needing them may publish them again");
        }
    }
    Ok(Recovery::Waiting)
}
