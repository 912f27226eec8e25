//! Settling a stored batch: publish the dependents it released (confirmed), then acknowledge
//! its deliveries; dead-letter, with the reason, those whose outcome Redis refused for good.
//!
//! A dependent the broker refuses for good (over its `max_message_size`, unroutable: found by
//! publishing each failed dependent again alone, since a refusal closes the channel and fails
//! everything in flight on it) can never run: an `Unpublishable` failure naming it and the
//! cause is stored for it instead, which releases its own dependents in turn (they fail with
//! `DependencyFailed` when they run), and the batch is acknowledged. Any other failure to
//! publish (a lost channel, a nack) requeues the batch: redelivered, its outcomes are already
//! stored and its dependents are released again; those redeliveries count against
//! `max_deliveries`, and on the last one every dependent that still cannot be published fails.

use std::sync::Arc;

use rask_common::dependencies::ReadyTask;
use rask_common::{ErrorKind, FailureKind, Outcome, TaskFailure};

use super::store::Stored;
use super::{Context, Finished};
use crate::dead_letter::{copy_to_dead_letters, settle_unkeyed};
use crate::error::Error;
use crate::release::{PublishError, Publisher};
use crate::retry;
use crate::ticket::{Carrier, Ticket};

/// Publishes a stored batch's ready dependents, then acks the batch and dead-letters what Redis
/// refused; requeues the batch instead if a dependent could not be published for a cause that
/// may pass (unless `last`: the delivery limit is reached, and such dependents fail).
///
/// Dependents this worker can run now (a free slot, see `continuation.rs`) are not published:
/// they run here, and the batch's deliveries are acknowledged only once each of them is settled.
pub(super) async fn settle(
    context: Arc<Context>,
    stored: Stored,
    publisher: Option<Publisher>,
    last: bool,
) {
    let Stored {
        done,
        refused,
        ready,
    } = stored;
    let first = !last && done.iter().all(|f| f.ticket.carries_on());
    let (continued, ready) = context.continuation.split(ready, first);
    if let Some(mut publisher) = publisher {
        if let Err(e) = release(&context, &mut publisher, ready, last).await {
            // The dependents kept to run here are not started (their slots are freed): the
            // redelivered batch releases them again.
            tracing::warn!(error = %e, tasks = done.len(), "publishing ready dependents failed; requeueing the batch");
            requeue(done).await;
            dead_letter(&context, refused).await;
            return;
        }
    }
    dead_letter(&context, refused).await;
    if !continued.is_empty() {
        // Acknowledged (or requeued) once every continued task is settled.
        let carrier = Carrier::new(done.into_iter().map(|f| f.ticket).collect());
        context.continuation.start(continued, &carrier);
        return;
    }
    let acks = done.into_iter().map(|f| async move {
        // A failed ack (the channel is gone) means a redelivery, made harmless by the stored
        // outcome (write-once).
        f.ticket.ack().await;
    });
    futures::future::join_all(acks).await;
}

/// Publishes `ready`; those the broker refuses for good (all that fail, when `last`) fail
/// instead, and the dependents their failures release are published in turn.
///
/// # Errors
/// The first [`PublishError`] that may pass (the caller requeues the batch).
async fn release(
    context: &Context,
    publisher: &mut Publisher,
    mut ready: Vec<ReadyTask>,
    last: bool,
) -> Result<(), PublishError> {
    while !ready.is_empty() {
        let mut unpublishable = Vec::new();
        for (message, _) in publisher.publish(ready).await {
            match publisher.publish_alone(&message).await {
                Ok(()) => {}
                Err(e) if e.is_permanent() || last => unpublishable.push((message, e)),
                Err(e) => return Err(e),
            }
        }
        ready = fail(context, unpublishable).await;
    }
    Ok(())
}

/// Stores an `Unpublishable` failure for each dependent that cannot be published; returns the
/// dependents those failures release.
async fn fail(context: &Context, unpublishable: Vec<(ReadyTask, PublishError)>) -> Vec<ReadyTask> {
    if unpublishable.is_empty() {
        return Vec::new();
    }
    let mut outcomes = Vec::with_capacity(unpublishable.len());
    for (message, cause) in unpublishable {
        let (task, key) = (&message.function, &message.key);
        let text = if cause.is_permanent() {
            format!("task {task} (key {key}) was ready to run, but the broker refused it: {cause}")
        } else {
            format!(
                "task {task} (key {key}) was ready to run, but publishing it failed until the \
                 task that released it reached max_deliveries: {cause}"
            )
        };
        tracing::error!(key = %message.key, error = %cause, "a ready dependent cannot be published; failing it");
        let kind = FailureKind::Unpublishable;
        let failure = match message.message() {
            Ok(whole) => TaskFailure::of(&whole, kind, text, &context.worker),
            Err(_) => TaskFailure::new(kind, text, task.clone(), key.clone(), &context.worker),
        };
        match Outcome::Failure(failure).encode() {
            Ok(encoded) => outcomes.push((message.key, encoded)),
            Err(e) => {
                tracing::error!(key = %message.key, error = %e, "the failure does not encode")
            }
        }
    }
    let stored = retry::until_ok("storing failures of unpublishable tasks", || {
        context.store.store_and_release(&outcomes)
    })
    .await;
    match stored {
        Ok(ready) => ready,
        Err(source) if source.kind() == ErrorKind::Configuration => {
            let what = "storing failures of unpublishable tasks";
            context.fatal.raise(Error::StoreRefused { what, source });
            Vec::new()
        }
        Err(e) => {
            tracing::error!(error = %e, tasks = outcomes.len(), "Redis refused the failures of unpublishable tasks");
            Vec::new()
        }
    }
}

/// Rejects every delivery of `batch` with requeue.
pub(super) async fn requeue(batch: Vec<Finished>) {
    let rejects = batch.into_iter().map(|f| f.ticket.requeue());
    futures::future::join_all(rejects).await;
}

/// Copies each refused delivery to the dead-letter queue with its reason, then acks it (or
/// rejects it without requeue if the copy was not confirmed). A continued task has no delivery
/// to copy: the deliveries that released it are requeued instead, and their redelivery
/// publishes it, to be dead-lettered as a delivery if Redis refuses it again.
pub(super) async fn dead_letter(context: &Context, refused: Vec<(Ticket, String)>) {
    for (ticket, reason) in refused {
        let Some(delivery) = ticket.delivery() else {
            ticket.requeue().await;
            continue;
        };
        let s = context.pools.of_queue(delivery.routing_key.as_str());
        let worker = &context.worker;
        let copied = copy_to_dead_letters(&context.confirms, s, worker, delivery, &reason).await;
        context
            .metrics
            .dead_lettered(crate::metrics::DeadLetterCause::StoreRefused);
        settle_unkeyed(delivery, copied).await;
    }
}
