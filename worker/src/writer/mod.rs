//! The result writer: stores finished outcomes in batches (one Redis pipeline per batch),
//! releases and publishes the graph tasks waiting for them, then acknowledges their deliveries.
//! A delivery is acknowledged only after its outcome is stored and its ready dependents are
//! published.
//!
//! Errors are told apart by whether trying again can help ([`rask_common::ErrorKind`]):
//! - transient (Redis unreachable, loading, failing over): the writer retries the batch with
//!   backoff and acknowledges nothing meanwhile;
//! - refused for what one outcome is (a script error on one task's graph records, say): the
//!   batch is split in halves until the refused outcome is alone, so that it holds no other,
//!   and that one's delivery is dead-lettered with Redis's reason (`store.rs`). (Values over
//!   Redis's `proto-max-bulk-len` never reach it: see `result_limit.rs`.)
//! - a configuration Redis refuses (a replica, missing ACL permissions): the worker stops
//!   (`Fatal`), since every batch would fail alike; unacknowledged deliveries go back to the
//!   queue.
//!
//! Publishing released dependents (`settle.rs`) is told apart the same way: a dependent the
//! broker refuses for good fails with a stored `Unpublishable` failure; any other failure
//! requeues the batch, whose redeliveries are counted against `max_deliveries` (`admit.rs`).

mod settle;
mod store;

use std::sync::Arc;

use rask_common::{Settings, Store, TaskKey};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::continuation::Continuation;
use crate::error::Error;
use crate::fatal::Fatal;
use crate::release::{ConfirmChannel, Releaser};
use crate::ticket::Ticket;

/// A finished task: its encoded outcome and the delivery to acknowledge once it is stored.
pub(crate) struct Finished {
    pub(crate) key: TaskKey,
    pub(crate) outcome: Vec<u8>,
    /// Settled (acknowledged) once the outcome is stored: the task's delivery, copied to the
    /// dead-letter queue if Redis refuses it for good, or for a continued task the deliveries
    /// that released it (`ticket.rs`).
    pub(crate) ticket: Ticket,
    /// The delivery limit is reached: dependents that cannot be published now fail instead of
    /// the delivery being requeued once more.
    pub(crate) last: bool,
    /// The other outcomes of a batch message (`batch.rs`), stored with this one, in the same
    /// pipeline, before the one delivery is acknowledged. Empty for a single task.
    pub(crate) more: Vec<(TaskKey, Vec<u8>)>,
}

/// What settling stored batches needs, shared by the batches settling at once.
pub(crate) struct Context {
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    /// This worker's id (reported in the failures it stores and in dead letters).
    pub(crate) worker: String,
    /// For dead-letter copies.
    pub(crate) confirms: Arc<ConfirmChannel>,
    /// Raised when Redis refuses the configuration.
    pub(crate) fatal: Arc<Fatal>,
    /// The pools served: a dead-letter copy goes to its delivery's pool.
    pub(crate) pools: Arc<crate::pools::Pools>,
    /// The task events to write with each batch (dead letters, `events.rs`).
    pub(crate) events: Arc<crate::events::Events>,
    /// Counts the dead letters of refused outcomes (`metrics.rs`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Which released dependents run here rather than through the broker.
    pub(crate) continuation: Arc<Continuation>,
}

/// Stored batches that may be settling (publishing dependents, acking) at once.
const SETTLING_BATCHES: usize = 4;

/// Runs until every sender is dropped and everything received is stored and acknowledged, or
/// until Redis refuses the configuration (then the error is raised on `context.fatal` and what
/// is not acknowledged goes back to the queue when the channel closes).
pub(crate) async fn run(
    context: Context,
    mut finished: mpsc::Receiver<Finished>,
    mut releaser: Releaser,
) {
    let context = Arc::new(context);
    let max_batch = context.settings.result_batch;
    let mut settling = JoinSet::new();
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
    'batches: while finished.recv_many(&mut batch, max_batch).await > 0 {
        let received = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        // Last deliveries settle apart, so that only their own dependents may fail for a
        // transient cause.
        let (last, normal): (Vec<Finished>, Vec<Finished>) =
            received.into_iter().partition(|f| f.last);
        // Dead letters' events go to Redis in the batch's pipeline (see `store.rs`).
        let mut events = context.events.take();
        for (group, last) in [(normal, false), (last, true)] {
            if group.is_empty() {
                continue;
            }
            let recording = (context.events.recorder(), std::mem::take(&mut events));
            let stored = match store::store(&context.store, group, recording).await {
                Ok(stored) => stored,
                Err(source) => {
                    let what = "storing results";
                    context.fatal.raise(Error::StoreRefused { what, source });
                    break 'batches;
                }
            };
            let publisher = if stored.ready.is_empty() {
                None
            } else {
                match releaser.publisher().await {
                    Ok(publisher) => Some(publisher),
                    Err(e) => {
                        tracing::warn!(error = %e, tasks = stored.done.len(), "cannot publish ready dependents; requeueing the batch");
                        settle::requeue(stored.done).await;
                        settle::dead_letter(&context, stored.refused).await;
                        continue;
                    }
                }
            };
            // Settle (publish dependents, then ack) while the next batch is being stored.
            while settling.len() >= SETTLING_BATCHES {
                settling.join_next().await;
            }
            settling.spawn(settle::settle(context.clone(), stored, publisher, last));
        }
    }
    while settling.join_next().await.is_some() {}
}
