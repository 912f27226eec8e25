//! Local continuation: a graph task released by outcomes this worker stored runs here, in a free
//! concurrency slot, instead of going through the broker (a publish, a confirm, a delivery and
//! an ack saved per task; in a reduction tree, every task but the leaves).
//!
//! The writer asks [`Continuation::split`] which of the dependents a stored batch released to
//! keep: each needs a first delivery behind it (see [`Ticket::carries_on`]), must fit this
//! worker as a delivered task would (its pool served, no resources, no global limit on its
//! function or pool, the function known, not a batch), and needs a concurrency slot: a free one
//! now, or, for a function known to be quick (a plain function whose average run is under
//! `pace::QUICK`, which runs inline), the next one free, as long as fewer than the prefetch
//! window wait for one. Anything else is published as before, so that a worker busy with slow
//! tasks leaves what it releases to idle workers, while quick ones (where a publish, a delivery
//! and an ack cost more than the run) stay here. The
//! kept ones run with a [`crate::ticket::Hold`] on the batch's deliveries instead of a delivery
//! of their own, so those deliveries are acknowledged only once every task they carry is
//! settled (see `ticket.rs`): a worker killed at any point leaves them unacknowledged, and
//! their redelivery releases (and publishes) the continued tasks again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use rask_common::dependencies::ReadyTask;
use rask_common::TaskMessage;
use tokio_util::task::TaskTracker;

use crate::ticket::{Carrier, Ticket};
use crate::worker::{Shared, Slot};

/// Which released tasks run here, and where they are spawned.
pub(crate) struct Continuation {
    /// The `local_continuation` setting.
    enabled: bool,
    /// What tasks share; set once the worker has built it (the writer starts before it).
    /// Weak, so that the writer does not keep alive the sender of its own channel.
    shared: OnceLock<Weak<Shared>>,
    /// The worker loop's tracker: a stopping worker waits for continued tasks too.
    tracker: TaskTracker,
    /// Continued tasks waiting for a slot.
    waiting: Arc<AtomicUsize>,
    /// Most continued tasks waiting for a slot at once (the prefetch window).
    max_waiting: usize,
}

/// A released task to run here, with its slot (or a place among those waiting for one).
pub(crate) struct Continued {
    message: TaskMessage,
    slot: Option<Slot>,
    shared: Arc<Shared>,
}

impl Continuation {
    /// Continues released tasks when `enabled`, spawning them on `tracker`; at most
    /// `max_waiting` of them wait for a slot at once.
    pub(crate) fn new(enabled: bool, tracker: TaskTracker, max_waiting: usize) -> Self {
        Continuation {
            enabled,
            shared: OnceLock::new(),
            tracker,
            waiting: Arc::default(),
            max_waiting,
        }
    }

    /// Gives it what tasks share, once built.
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.shared.set(Arc::downgrade(shared));
    }

    /// Splits the tasks `ready` released by a stored batch into those to run here (each holding
    /// a free slot) and those to publish. `first`: the batch holds first deliveries only and is
    /// not at its delivery limit; otherwise every task is published.
    pub(crate) fn split(
        &self,
        ready: Vec<ReadyTask>,
        first: bool,
    ) -> (Vec<Continued>, Vec<ReadyTask>) {
        let shared = match self.shared.get().and_then(Weak::upgrade) {
            Some(shared) if self.enabled && first && !ready.is_empty() => shared,
            _ => return (Vec::new(), ready),
        };
        if shared.stopping.is_cancelled() {
            return (Vec::new(), ready);
        }
        let mut continued = Vec::new();
        let mut publish = Vec::new();
        for task in ready {
            let message = match task.message() {
                Ok(message) if fits(&shared, &message) => message,
                // An undecodable record goes the way of any delivery (dead-lettered).
                _ => {
                    publish.push(task);
                    continue;
                }
            };
            let slot = match shared.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(Slot::new(permit, shared.seceding.clone())),
                Err(_) if self.may_wait(&shared, &message) => None,
                Err(_) => {
                    publish.push(task);
                    continue;
                }
            };
            continued.push(Continued {
                message,
                slot,
                shared: shared.clone(),
            });
        }
        (continued, publish)
    }

    /// Runs `continued`, each holding `carrier` (the deliveries that released it) until it is
    /// settled.
    pub(crate) fn start(&self, continued: Vec<Continued>, carrier: &Arc<Carrier>) {
        for Continued {
            message,
            slot,
            shared,
        } in continued
        {
            let ticket = Ticket::Carried(carrier.hold());
            let waiting = self.waiting.clone();
            self.tracker.spawn(async move {
                let slot = match slot {
                    Some(slot) => slot,
                    None => {
                        let permit = shared.permits.clone().acquire_owned().await;
                        waiting.fetch_sub(1, Ordering::Relaxed);
                        let permit = permit.expect("the semaphore is never closed");
                        Slot::new(permit, shared.seceding.clone())
                    }
                };
                Box::pin(crate::worker::continue_task(&shared, message, slot, ticket)).await;
            });
        }
    }
}

impl Continuation {
    /// Whether `message` may wait here for a slot (taking a place among those waiting): its
    /// function is known to be quick, and fewer than `max_waiting` wait.
    fn may_wait(&self, shared: &Shared, message: &TaskMessage) -> bool {
        shared.registry.pace().is_quick(&message.function)
            && self
                .waiting
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.max_waiting).then_some(n + 1)
                })
                .is_ok()
    }
}

/// Whether `message` can run here as a delivered task would, with nothing to wait for or hand
/// on: a function this worker knows, its pool served, no resources, no global limit, not a
/// batch.
fn fits(shared: &Shared, message: &TaskMessage) -> bool {
    let pool = message.pool.clone().unwrap_or_default();
    !message.is_batch()
        && message.resources.is_empty()
        && shared.registry.knows(&message.function)
        && shared.pools.served().iter().any(|(p, _)| *p == pool)
        && shared.limits.of_pool(message.pool.as_ref()).is_none()
        && shared.limits.of(&message.function).is_none()
}
