//! Resource admission: a task that needs resources (its message's `resources`, e.g. `gpu=1`)
//! runs only while this worker has that much free of its own (its `resources` setting), besides
//! a concurrency permit. A task that needs nothing passes straight through ([`gate`] is not
//! even called: one emptiness check per task).
//!
//! - It fits and is free: it runs at once, holding its slots ([`Held`]).
//! - It fits but is not free now: it gives its concurrency permit back while it waits for the
//!   slots, so that tasks needing nothing (or other resources) run meanwhile, then takes a
//!   permit again. What waits is bounded by the prefetch, as every delivery is. If the worker
//!   stops meanwhile, it leaves the delivery unacknowledged: it returns to the queue when the
//!   channel closes, as prefetched deliveries do.
//! - It needs more than this worker has in all: if another live worker of the queue has
//!   enough ([`Census`]), the task is handed on: republished (confirmed) through the delay
//!   ladder after a pause that doubles with each hand-off (50 ms to 2 s, counted in the
//!   message's `handoffs`), then acknowledged. So it is neither a failed delivery (not counted
//!   against `max_deliveries`) nor a busy loop. If no live worker has enough, it fails with
//!   `ResourceUnavailable` naming the resource, the amount needed and the most any live
//!   worker has.
//!
//! The slots a run holds are given back when its body ends, on every path (`current.rs`).

mod current;
mod placement;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use lapin::message::Delivery;
use rask_common::resources::format_amount;
use rask_common::{FailureKind, TaskFailure, TaskMessage};
use tokio::sync::OwnedSemaphorePermit;

pub use current::held_slots;
pub(crate) use current::holding;
pub(crate) use placement::Census;
use placement::{Placement, Shortfall};
pub(crate) use slots::{Capacity, Held, Holding};

use crate::error::Error;
use crate::send_back::send_back;
use crate::worker::Shared;

/// First and longest pause before a handed-on task is delivered again.
const HANDOFF_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// What to do with a task that needs resources.
pub(crate) enum Gate {
    /// Run it now, holding these slots and a concurrency permit.
    Run(Held, OwnedSemaphorePermit),
    /// Store this failure on it: no live worker has what it needs.
    Fail(TaskFailure),
    /// Nothing more to do: it was handed on to another worker, or the worker stops (or Redis
    /// refused reading the registry: the worker stops) and the delivery goes back to the
    /// queue when the channel closes.
    Done,
}

/// Admits `message`, which needs resources (see the module docs), delivered as `delivery` and
/// holding `permit` so far.
pub(crate) async fn gate(
    shared: &Shared,
    message: &TaskMessage,
    delivery: &Delivery,
    permit: OwnedSemaphorePermit,
) -> Gate {
    let needs = &message.resources;
    let capacity = &shared.capacity;
    if capacity.total().lacks(needs).is_some() {
        drop(permit);
        return elsewhere(shared, message, delivery).await;
    }
    if let Some(held) = capacity.try_take(needs) {
        return Gate::Run(held, permit);
    }
    // Wait without the permit, so that tasks needing nothing run meanwhile.
    drop(permit);
    let stopping = &shared.stopping;
    let held = tokio::select! {
        held = capacity.take(needs) => held,
        () = stopping.cancelled() => return Gate::Done,
    };
    tokio::select! {
        permit = shared.permits.clone().acquire_owned() => {
            Gate::Run(held, permit.expect("the semaphore is never closed"))
        }
        () = stopping.cancelled() => Gate::Done,
    }
}

/// For a task needing more than this worker has: hands it on, or says why it cannot run.
async fn elsewhere(shared: &Shared, message: &TaskMessage, delivery: &Delivery) -> Gate {
    let own = shared.capacity.total();
    let pool = message.pool.clone().unwrap_or_default();
    let placed = crate::retry::until_ok("reading the worker registry", || {
        shared
            .census
            .place(&shared.store, &pool, own, &message.resources)
    })
    .await;
    match placed {
        Ok(Placement::Elsewhere) => {
            hand_on(shared, message, delivery).await;
            Gate::Done
        }
        Ok(Placement::Nowhere(shortfall)) => Gate::Fail(unavailable(shared, message, &shortfall)),
        Err(source) => {
            let what = "reading the worker registry";
            shared.fatal.raise(Error::StoreRefused { what, source });
            Gate::Done
        }
    }
}

/// The `ResourceUnavailable` failure of `message`.
fn unavailable(shared: &Shared, message: &TaskMessage, short: &Shortfall) -> TaskFailure {
    let (queue, name) = (&shared.settings.queue, &short.resource);
    let text = format!(
        "needs {name}={} but the most any live worker of queue {queue} has is {name}={} \
         (the task needs {}): start a worker with --resources {name}={}, or lower the task's \
         needs",
        format_amount(short.needed),
        format_amount(short.most),
        message.resources,
        format_amount(short.needed),
    );
    TaskFailure::of(message, FailureKind::ResourceUnavailable, text, &shared.id)
}

/// The pause before the `handoffs`-th hand-off of a task is delivered again.
fn pause(handoffs: u32) -> Duration {
    HANDOFF_PAUSE
        .0
        .saturating_mul(1 << handoffs.min(16))
        .min(HANDOFF_PAUSE.1)
}

/// Republishes `message` (one more hand-off) through the delay ladder of its pool, confirmed,
/// then acknowledges `delivery`; requeues it instead if publishing fails.
async fn hand_on(shared: &Shared, message: &TaskMessage, delivery: &Delivery) {
    let next = TaskMessage {
        handoffs: message.handoffs.saturating_add(1),
        ..message.clone()
    };
    let delay = pause(message.handoffs);
    let settings = shared.pools.settings_for(message.pool.as_ref());
    let what = "hand the task on";
    if send_back(&shared.confirms, &settings, &next, delay, delivery, what).await {
        tracing::debug!(
            key = %message.key,
            needs = %message.resources,
            handoffs = next.handoffs,
            ?delay,
            "this worker lacks the task's resources; handed on to another worker"
        );
    }
}

/// A worker's resources as shared by its task handlers and its heartbeat.
pub(crate) fn capacity(settings: &rask_common::Settings) -> Arc<Capacity> {
    Arc::new(Capacity::new(settings.resources.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_offs_wait_longer_each_time_up_to_a_bound() {
        assert_eq!(pause(0), Duration::from_millis(50));
        assert_eq!(pause(1), Duration::from_millis(100));
        assert_eq!(pause(5), Duration::from_millis(1600));
        assert_eq!(pause(6), Duration::from_secs(2));
        assert_eq!(pause(u32::MAX), Duration::from_secs(2));
    }
}
