//! The result writer: stores finished outcomes in batches (one Redis pipeline per batch),
//! releases and publishes the graph tasks waiting for them, then acknowledges their deliveries.
//! A delivery is acknowledged only after its outcome is stored and its ready dependents are
//! published; while Redis is unreachable the writer retries with backoff and acknowledges
//! nothing.

use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Acker;
use rask_common::{Store, TaskKey, TaskMessage};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::release::{Publisher, Releaser};
use crate::retry;

/// A finished task: its encoded outcome and the delivery to acknowledge once it is stored.
pub(crate) struct Finished {
    pub(crate) key: TaskKey,
    pub(crate) outcome: Vec<u8>,
    pub(crate) acker: Acker,
}

/// Stored batches that may be settling (publishing dependents, acking) at once.
const SETTLING_BATCHES: usize = 4;

/// Runs until every sender is dropped and everything received is stored and acknowledged.
pub(crate) async fn run(
    store: Store,
    mut finished: mpsc::Receiver<Finished>,
    max_batch: usize,
    mut releaser: Releaser,
) {
    let mut settling = JoinSet::new();
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
    while finished.recv_many(&mut batch, max_batch).await > 0 {
        let items: Vec<(TaskKey, Vec<u8>)> = batch
            .iter_mut()
            .map(|f| (f.key.clone(), std::mem::take(&mut f.outcome)))
            .collect();
        let ready = retry::until_ok("storing results", || store.store_and_release(&items)).await;
        let done = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        let publisher = if ready.is_empty() {
            None
        } else {
            match releaser.publisher().await {
                Ok(publisher) => Some(publisher),
                Err(e) => {
                    tracing::warn!(error = %e, tasks = done.len(), "cannot publish ready dependents; requeueing the batch");
                    requeue(done).await;
                    continue;
                }
            }
        };
        // Settle (publish dependents, then ack) while the next batch is being stored.
        while settling.len() >= SETTLING_BATCHES {
            settling.join_next().await;
        }
        settling.spawn(settle(done, ready, publisher));
    }
    while settling.join_next().await.is_some() {}
}

/// Publishes a stored batch's ready dependents (confirmed), then acks the batch; if a dependent
/// cannot be published, requeues the batch instead (redelivery stores nothing new, since results
/// are write-once, but releases the dependents again).
async fn settle(batch: Vec<Finished>, ready: Vec<TaskMessage>, publisher: Option<Publisher>) {
    if let Some(publisher) = publisher {
        if let Err(e) = publisher.publish(&ready).await {
            tracing::warn!(error = %e, tasks = batch.len(), "publishing ready dependents failed; requeueing the batch");
            requeue(batch).await;
            return;
        }
    }
    let acks = batch.into_iter().map(|f| async move {
        if let Err(e) = f.acker.ack(BasicAckOptions::default()).await {
            // The channel is gone: the broker redelivers the message, and the stored
            // outcome makes the rerun harmless (write-once).
            tracing::warn!(key = %f.key, error = %e, "ack failed; the task will be redelivered");
        }
    });
    futures::future::join_all(acks).await;
}

/// Rejects every delivery of `batch` with requeue.
async fn requeue(batch: Vec<Finished>) {
    let rejects = batch.into_iter().map(|f| async move {
        if let Err(e) = f.acker.reject(BasicRejectOptions { requeue: true }).await {
            tracing::warn!(key = %f.key, error = %e, "reject failed; the task will be redelivered");
        }
    });
    futures::future::join_all(rejects).await;
}
