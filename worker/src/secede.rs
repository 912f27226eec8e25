//! Tasks that wait for the tasks they launched ([`rask_common::TaskContext::secede`]): while a
//! task waits it gives its concurrency slot back, and the worker widens its prefetch window, so
//! that a tree of nested tasks deeper than the worker's concurrency or prefetch never
//! deadlocks.
//!
//! Concurrency: a task that secedes adds a permit to the worker's semaphore (the loop starts
//! another task at once); rejoining acquires one and forgets it (the task waits for a free slot).
//! The task's own permit is returned when it finishes, as for any task. A task stopped while it
//! waited (time limit) leaves a slot owed, paid by forgetting the next permit returned.
//!
//! Prefetch: a parked task still holds its delivery (it is acknowledged only once its result
//! is stored), so with `prefetch` parked tasks the broker would send the worker nothing more,
//! not even the children they wait for. So parked tasks do not count against the window: when
//! the number of parked tasks exceeds the extra window, the worker loop opens another consumer
//! on each task queue with a prefetch that covers them ([`Window`]), doubling the extra window
//! each time (a few consumers, however many tasks park). The extra consumers stay until the
//! connection ends: their deliveries remain unacknowledged on the channel until their tasks
//! finish, and cancelling a consumer with buffered deliveries would strand them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::{BoxStream, SelectAll};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use rask_common::context::{BoxFuture, Secession};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::resources::Holding;

/// The deliveries of every consumer of a connection: `Err(queue)` when a queue's main consumer
/// ended.
pub(crate) type Deliveries =
    SelectAll<BoxStream<'static, Result<Result<Delivery, lapin::Error>, String>>>;

/// The concurrency slots of one connection, and its tasks that gave theirs back.
pub(crate) struct Seceding {
    permits: Arc<Semaphore>,
    /// Tasks seceded and not yet back.
    parked: AtomicUsize,
    /// Slots owed by tasks stopped while seceded.
    owed: AtomicUsize,
    /// Wakes the worker loop when more tasks park (to widen the window).
    parking: Notify,
}

impl Seceding {
    /// Secession from `permits`, the worker's concurrency.
    pub(crate) fn new(permits: Arc<Semaphore>) -> Self {
        Seceding {
            permits,
            parked: AtomicUsize::new(0),
            owed: AtomicUsize::new(0),
            parking: Notify::new(),
        }
    }

    /// Returns the permit of a finished task to the semaphore, unless a slot is owed: then the
    /// permit is forgotten instead (the slot paid back).
    pub(crate) fn release(&self, permit: OwnedSemaphorePermit) {
        let paid = self.owed.load(Ordering::Relaxed) > 0
            && self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        if paid {
            permit.forget();
        }
    }

    /// Completes when a task parked since the last call (at once if one did).
    pub(crate) async fn parked_more(&self) {
        self.parking.notified().await;
    }

    /// Tasks parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }
}

impl Secession for Seceding {
    fn secede(&self) {
        self.parked.fetch_add(1, Ordering::AcqRel);
        self.permits.add_permits(1);
        self.parking.notify_one();
    }

    fn rejoin(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.permits
                .acquire()
                .await
                .expect("the semaphore is never closed")
                .forget();
            self.parked.fetch_sub(1, Ordering::AcqRel);
        })
    }

    fn abandon(&self) {
        self.parked.fetch_sub(1, Ordering::AcqRel);
        self.owed.fetch_add(1, Ordering::AcqRel);
    }
}

/// The secession of a task that holds resource slots: while it waits for tasks it launched it
/// gives its slots back too (they may need the same resources), and before it goes on it takes
/// back the very same slots, then a concurrency slot.
pub(crate) struct WithResources {
    pub(crate) seceding: Arc<Seceding>,
    pub(crate) holding: Arc<Holding>,
}

impl Secession for WithResources {
    fn secede(&self) {
        self.holding.lend();
        self.seceding.secede();
    }

    fn rejoin(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.holding.reclaim().await;
            self.seceding.rejoin().await;
        })
    }

    fn abandon(&self) {
        // The slots stay lent: the run's last handle on them gives nothing back twice.
        self.seceding.abandon();
    }
}

/// The extra prefetch window of one connection, for parked tasks: consumers added on demand.
pub(crate) struct Window {
    /// The prefetch of each added consumer, summed per queue.
    extra: usize,
    /// The smallest step: the per-queue prefetch of the main consumers.
    step: usize,
    /// The tags of the added consumers, to cancel them on shutdown.
    tags: Vec<String>,
}

impl Window {
    /// No extra window yet; it grows by at least `step` (the main consumers' prefetch).
    pub(crate) fn new(step: u16) -> Self {
        Window {
            extra: 0,
            step: usize::from(step.max(1)),
            tags: Vec::new(),
        }
    }

    /// The extra window per queue.
    #[cfg(test)]
    fn extra(&self) -> usize {
        self.extra
    }

    /// The extra window to have for `parked` tasks, if it must grow: at least `parked` (each
    /// queue's window beyond its parked tasks stays at least the main prefetch), at least
    /// double the current one, at least one step.
    fn target(&self, parked: usize) -> Option<usize> {
        (parked > self.extra).then(|| parked.max(self.extra * 2).max(self.step))
    }

    /// Widens the window to cover the tasks `seceding` has parked, if it does not yet: one more
    /// consumer on each of `queues` (on `channel`, tagged after `worker`), added to
    /// `deliveries`.
    ///
    /// # Errors
    /// The broker's, if it refuses the consumer (the connection is then lost).
    pub(crate) async fn widen(
        &mut self,
        seceding: &Seceding,
        channel: &Channel,
        queues: &[String],
        worker: &str,
        deliveries: &mut Deliveries,
    ) -> Result<(), lapin::Error> {
        let Some(target) = self.target(seceding.parked()) else {
            return Ok(());
        };
        let prefetch = u16::try_from(target - self.extra).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        for queue in queues {
            let tag = format!("{worker}.parked{}", self.tags.len());
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            self.tags.push(tag);
            deliveries.push(consumer.map(Ok).boxed());
        }
        // Consumers made later on this channel get the main prefetch again.
        let step = u16::try_from(self.step).unwrap_or(u16::MAX);
        channel.basic_qos(step, BasicQosOptions::default()).await?;
        self.extra += usize::from(prefetch);
        tracing::info!(
            parked = seceding.parked(),
            extra_prefetch = self.extra,
            "widened the prefetch window for tasks waiting on tasks they launched"
        );
        Ok(())
    }

    /// Cancels the added consumers (when the worker stops consuming).
    pub(crate) async fn cancel(&self, channel: &Channel) {
        for tag in &self.tags {
            if let Err(e) = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(error = %e, "could not cancel a consumer");
            }
        }
    }
}

/// A context outside any worker run (for tests of the functions that run tasks).
#[cfg(test)]
pub(crate) fn test_context() -> rask_common::TaskContext {
    use rask_common::context::{States, WorkerContext};
    let worker = WorkerContext::new("w", rask_common::Settings::default(), States::new());
    rask_common::TaskContext::new(
        rask_common::TaskKey::new("test-1").expect("a valid key"),
        0,
        Arc::new(worker),
        <dyn Secession>::none(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seceding_lends_the_slot_and_rejoining_takes_it_back() {
        let permits = Arc::new(Semaphore::new(1));
        let seceding = Seceding::new(permits.clone());
        let mine = permits.clone().acquire_owned().await.unwrap();
        seceding.secede();
        assert_eq!((permits.available_permits(), seceding.parked()), (1, 1));
        let other = permits.clone().acquire_owned().await.unwrap();
        // Back only once the other task is done.
        let mut rejoin = seceding.rejoin();
        assert!(futures::poll!(&mut rejoin).is_pending());
        drop(other);
        rejoin.await;
        assert_eq!((permits.available_permits(), seceding.parked()), (0, 0));
        seceding.release(mine);
        assert_eq!(permits.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_task_stopped_while_seceded_pays_its_slot_back() {
        let permits = Arc::new(Semaphore::new(1));
        let seceding = Seceding::new(permits.clone());
        let mine = permits.clone().acquire_owned().await.unwrap();
        seceding.secede();
        seceding.abandon();
        seceding.release(mine);
        // The permit lent stays; the task's own was forgotten: one slot, as before.
        assert_eq!((permits.available_permits(), seceding.parked()), (1, 0));
        let next = permits.clone().acquire_owned().await.unwrap();
        seceding.release(next);
        assert_eq!(permits.available_permits(), 1);
    }

    #[test]
    fn the_window_covers_parked_tasks_and_doubles() {
        let mut window = Window::new(16);
        assert_eq!(window.target(0), None);
        assert_eq!(window.target(1), Some(16));
        window.extra = 16;
        assert_eq!(window.target(16), None);
        assert_eq!(window.target(17), Some(32));
        assert_eq!(window.target(100), Some(100));
        assert_eq!(window.extra(), 16);
    }
}
