//! Running a batch message ([`rask_common::batch`]): many calls of one function in one
//! delivery, run one after the other in the delivery's concurrency slot.
//!
//! - Each call runs as the task it would be alone ([`TaskMessage::for_call`]): its own key,
//!   time limit, revocation (force cancel), outcome and failure, counted in the metrics as a
//!   task.
//! - With task events on, a batch whose calls' keys are of one group
//!   ([`rask_common::call_keys`]) is one run in one slot, recorded as one batch record with each
//!   call's end (`events.rs`); other batches record each call as a run of its own.
//! - Every outcome goes to the result writer with the one delivery ([`Finished::more`]): one
//!   pipeline stores them all, then the delivery is acknowledged once.
//! - A call that fails with a retryable error while its policy allows another attempt leaves
//!   the batch: its next attempt is published alone, as a plain task message through the delay
//!   ladder (confirmed), before the batch is acknowledged; the other calls' outcomes are stored
//!   as usual. If that publish fails, the whole batch goes back to the queue (its redelivery
//!   reruns only what has no outcome).
//! - A redelivered batch (its worker died, or it was requeued) first reads the calls' stored
//!   outcomes (one `MGET`) and counts the redelivery under the batch key: calls with an outcome
//!   do not run again (their outcome is stored again, a no-op that releases their graph
//!   dependents once more); the others run, or, once the batch reached `max_deliveries`, fail
//!   with `DeliveryLimit` (a copy of the batch goes to the dead-letter queue).
//! - A batch of a function or pool under a global limit, or whose calls need resources, is not
//!   run as a batch: each call is published again alone (confirmed) to its pool's task queue and
//!   the batch is acknowledged, so that limits and resources apply per task as they always do.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use rask_common::broker::Destination;
use rask_common::call_keys;
use rask_common::message::Call;
use rask_common::settings::QueueType;
use rask_common::{broker, FailureKind, Outcome, TaskFailure, TaskKey, TaskMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::copy_to_dead_letters;
use crate::error::Error;
use crate::events::{BatchRun, CallStart};
use crate::execute::{execute, time_limit};
use crate::overrun::Cancel;
use crate::release::{self, PublishError};
use crate::retries::{self, Retry};
use crate::retry;
use crate::worker::{Shared, Slot};
use crate::writer::Finished;

/// Runs the batch `message` of `delivery` in `slot` (see the module docs).
pub(crate) async fn handle(shared: &Shared, message: TaskMessage, delivery: Delivery, slot: Slot) {
    let limited = shared.limits.of(&message.function).is_some()
        || shared.limits.of_pool(message.pool.as_ref()).is_some();
    if limited || !message.resources.is_empty() {
        return unbatch(shared, message, delivery).await;
    }
    let batch_key = message.key.clone();
    let (template, calls) = message.into_calls();
    let Some(earlier) = earlier_deliveries(shared, &delivery, &batch_key, &calls).await else {
        return; // Redis refused; the worker stops and the delivery goes back to the queue
    };
    let limit_reached = earlier.limit_reached.is_some();
    if let Some(reason) = &earlier.limit_reached {
        let s = shared.pools.of_queue(delivery.routing_key.as_str());
        copy_to_dead_letters(&shared.confirms, s, &shared.id, &delivery, reason).await;
        shared
            .metrics
            .dead_lettered(crate::metrics::DeadLetterCause::DeliveryLimit);
    }
    let mut outcomes: Vec<(TaskKey, Vec<u8>)> = Vec::with_capacity(calls.len());
    let mut retries: Vec<Retry> = Vec::new();
    // One record for the whole batch when its calls' keys are of one group (`events.rs`).
    let mut recording = call_keys::group_of(&calls)
        .and_then(|group| shared.events.start_batch(&template, group, calls.len()));
    for (index, (call, stored)) in calls.into_iter().zip(earlier.outcomes).enumerate() {
        if let Some(bytes) = stored {
            outcomes.push((call.key, bytes));
            continue;
        }
        let message = template.for_call(call);
        let outcome = match &earlier.limit_reached {
            Some(reason) => Outcome::Failure(TaskFailure {
                attempts: message.attempt + 1,
                ..TaskFailure::of(
                    &message,
                    FailureKind::DeliveryLimit,
                    reason.clone(),
                    &shared.id,
                )
            }),
            None => {
                match run_call(shared, &message, recording.as_mut().map(|r| (r, index))).await {
                    Ran::Done(outcome) => outcome,
                    Ran::Retry(retry) => {
                        retries.push(*retry);
                        continue;
                    }
                }
            }
        };
        if let Outcome::Failure(f) = &outcome {
            tracing::info!(key = %f.key, task = %f.task, kind = ?f.kind, message = %f.message, batch = %batch_key, "task failed");
        }
        match outcome.encode() {
            Ok(bytes) => outcomes.push((message.key, bytes)),
            Err(e) => {
                // Cannot happen for outcomes this worker makes; the call is redelivered with
                // the batch rather than lost.
                tracing::error!(key = %message.key, error = %e, "outcome does not encode; requeueing the batch");
                return requeue(&delivery).await;
            }
        }
    }
    if let Err(e) = publish_retries(shared, retries).await {
        tracing::warn!(batch = %batch_key, error = %e, "cannot schedule a retry; requeueing the batch");
        return requeue(&delivery).await;
    }
    if let Some(recording) = recording {
        recording.end();
    }
    drop(slot);
    let mut outcomes = outcomes.into_iter();
    let Some((key, outcome)) = outcomes.next() else {
        // Every call left the batch as a retry: nothing to store.
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            tracing::warn!(batch = %batch_key, error = %e, "ack failed; the batch will be redelivered");
        }
        return;
    };
    let finished = Finished {
        key,
        outcome,
        ticket: crate::ticket::Ticket::Delivery(delivery),
        last: limit_reached,
        more: outcomes.collect(),
        reply: None,
    };
    if shared.finished.send(finished).await.is_err() {
        tracing::error!(batch = %batch_key, "result writer stopped; the batch will be redelivered");
    }
}

/// How a call's run ended.
enum Ran {
    /// With this outcome, to store.
    Done(Outcome),
    /// With a retryable failure its policy allows another attempt for (boxed: a retry is rare,
    /// and its message is large beside an outcome).
    Retry(Box<Retry>),
}

/// Runs one call of a batch as `handle` in `worker.rs` runs a task without limits, resources
/// or inputs: revoked calls fail `Cancelled`, a revocation while it runs stops it. Its end is
/// recorded in `batch`'s run at its index, if given, else as a run of its own.
async fn run_call(
    shared: &Shared,
    message: &TaskMessage,
    batch: Option<(&mut BatchRun<'_>, usize)>,
) -> Ran {
    if shared.revocations.is_revoked(&message.key) {
        tracing::info!(key = %message.key, "revoked task not run");
        let text = "revoked by a client (force cancel) before it ran";
        let failure = TaskFailure::of(message, FailureKind::Cancelled, text, &shared.id);
        return Ran::Done(Outcome::Failure(failure));
    }
    let run = shared.metrics.start(&message.function);
    // Each call is a run in the task states and events (`events.rs`): in its batch's record,
    // or alone.
    let (recording, start) = match &batch {
        Some(_) => (None, Some(CallStart::now())),
        None => (shared.events.start(message), None),
    };
    let limit = time_limit(message, &shared.settings);
    let cancel = Cancel {
        token: CancellationToken::new(),
        grace: shared.settings.cancel_grace,
    };
    let context = || {
        shared
            .task_context(message, None)
            .with_cancellation(cancel.token.clone())
    };
    let mut retryable = false;
    // Each call its own span, all children of the batch's trace context.
    let span = crate::spans::run(&shared.settings, &shared.id, message);
    let outcome = {
        let executing = execute(
            &shared.registry,
            shared.metrics.overruns(),
            &shared.id,
            message,
            &context,
            limit,
            &cancel,
            None,
            &mut retryable,
        );
        crate::worker::until_revoked(shared, &message.key, &cancel, executing)
            .instrument(span.clone())
            .await
    };
    match retries::next_attempt(message, retryable) {
        Some(retry) => {
            run.retried();
            crate::spans::retried(&span);
            if let (Some((batch, index)), Some(start)) = (batch, start) {
                batch.call_ended(index, start, &outcome, true);
            }
            if let Some(recording) = recording {
                recording.retried(&outcome);
            }
            Ran::Retry(Box::new(retry))
        }
        None => {
            let outcome = shared.result_limit.apply(outcome, message, &shared.id);
            run.finished(&outcome);
            crate::spans::finished(&span, &outcome);
            if let (Some((batch, index)), Some(start)) = (batch, start) {
                batch.call_ended(index, start, &outcome, false);
            }
            if let Some(recording) = recording {
                recording.finished(&outcome);
            }
            Ran::Done(outcome)
        }
    }
}

/// What earlier deliveries of a batch left.
struct Earlier {
    /// Each call's stored outcome, in order (`None`: none yet; all `None` on a first delivery).
    outcomes: Vec<Option<Vec<u8>>>,
    /// Why the calls without an outcome must not run again: the batch reached
    /// `max_deliveries`.
    limit_reached: Option<String>,
}

/// For a redelivered batch, counts the redelivery and reads its calls' stored outcomes (see the
/// module docs); nothing for a first delivery. `None` when Redis refuses (the fatal error is
/// raised: the worker stops).
async fn earlier_deliveries(
    shared: &Shared,
    delivery: &Delivery,
    batch_key: &TaskKey,
    calls: &[Call],
) -> Option<Earlier> {
    if !delivery.redelivered {
        return Some(Earlier {
            outcomes: vec![None; calls.len()],
            limit_reached: None,
        });
    }
    let count = match shared.settings.queue_type {
        QueueType::Classic => {
            let counted = retry::until_ok("counting a redelivery", || {
                shared.store.count_redelivery(batch_key)
            })
            .await;
            match counted {
                Ok((count, _)) => count,
                Err(source) => {
                    let what = "counting redeliveries";
                    shared.fatal.raise(Error::StoreRefused { what, source });
                    return None;
                }
            }
        }
        QueueType::Quorum => broker::quorum_delivery_count(&delivery.properties).max(1),
    };
    let keys: Vec<TaskKey> = calls.iter().map(|c| c.key.clone()).collect();
    let outcomes = retry::until_ok("reading outcomes", || shared.store.get_outcomes(&keys)).await;
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(source) => {
            let what = "reading outcomes";
            shared.fatal.raise(Error::StoreRefused { what, source });
            return None;
        }
    };
    let stored = outcomes.iter().filter(|o| o.is_some()).count();
    tracing::info!(batch = %batch_key, count, calls = calls.len(), stored, "redelivered batch: running only the calls without an outcome");
    let max = shared.settings.max_deliveries;
    let limit_reached = (max != 0 && count >= u64::from(max)).then(|| {
        format!(
            "delivered {count} times in batch {batch_key} without an outcome \
             (max_deliveries = {max}): its worker crashed or vanished each time"
        )
    });
    Some(Earlier {
        outcomes,
        limit_reached,
    })
}

/// Publishes each retry alone through its pool's delay ladder, confirmed.
///
/// # Errors
/// The first [`PublishError`].
async fn publish_retries(shared: &Shared, retries: Vec<Retry>) -> Result<(), PublishError> {
    if retries.is_empty() {
        return Ok(());
    }
    let channel = shared.confirms.get().await?;
    for retry in retries {
        let (message, delay) = retry.into_parts();
        let settings = shared.pools.settings_for(message.pool.as_ref());
        let to = Destination::after(&settings, delay).map_err(PublishError::Delay)?;
        release::publish(&channel, &to, &message).await?;
        tracing::info!(key = %message.key, task = %message.function, attempt = message.attempt + 1, ?delay, "retry scheduled (out of its batch)");
    }
    Ok(())
}

/// Publishes each call of `message` alone to its pool's task queue (confirmed), then
/// acknowledges the batch; requeues it if a publish fails.
async fn unbatch(shared: &Shared, message: TaskMessage, delivery: Delivery) {
    let batch_key = message.key.clone();
    let (template, calls) = message.into_calls();
    let published = async {
        let channel = shared.confirms.get().await?;
        let settings = shared.pools.settings_for(template.pool.as_ref());
        let to = Destination::tasks(&settings);
        for call in calls {
            release::publish(&channel, &to, &template.for_call(call)).await?;
        }
        Ok::<(), PublishError>(())
    }
    .await;
    match published {
        Ok(()) => {
            tracing::info!(batch = %batch_key, "batch under a limit or needing resources: its calls were published one by one");
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(batch = %batch_key, error = %e, "ack failed; the batch will be redelivered");
            }
        }
        Err(e) => {
            tracing::warn!(batch = %batch_key, error = %e, "cannot publish the calls of a batch one by one; requeueing it");
            requeue(&delivery).await;
        }
    }
}

/// Publishes the average run time of each plain function this worker ran
/// ([`crate::pace::Pace`], [`rask_common::batch::publish_pace`]) every `interval`, for clients
/// to size batches by; stops when the returned handle is dropped. A failed write is logged and
/// tried again at the next tick.
pub(crate) fn publish_pace(
    store: rask_common::Store,
    registry: crate::Registry,
    interval: std::time::Duration,
) -> tokio_util::task::AbortOnDropHandle<()> {
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let averages = registry.pace().averages();
            if let Err(e) = rask_common::batch::publish_pace(&store, &averages).await {
                tracing::debug!(error = %e, "cannot publish the functions' run times");
            }
        }
    }))
}

/// Rejects `delivery` with requeue.
async fn requeue(delivery: &Delivery) {
    if let Err(e) = delivery.reject(BasicRejectOptions { requeue: true }).await {
        tracing::warn!(error = %e, "reject failed; the batch will be redelivered");
    }
}
