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
//!
//! Batching must not cost latency when one task is in flight: a handler whose outcome would be
//! alone (no store under way, nothing waiting for the writer) stores it itself, settles it and
//! acknowledges ([`Direct::store`]), saving the hand-off to the writer's task; under load the
//! writer's batches take over, since a store is then always under way.

mod settle;
mod store;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rask_common::{Settings, Store, TaskKey};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::continuation::Continuation;
use crate::error::Error;
use crate::fatal::Fatal;
use crate::release::{ConfirmChannel, Publisher, Releaser};
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
    /// The client to send the outcome to once it is stored (`call`, see
    /// [`rask_common::reply`]); `None` for the calls of a batch message and released tasks.
    pub(crate) reply: Option<rask_common::reply::ReplyTo>,
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

/// What the writer and the handlers storing in place share: the context, the releaser of
/// dependents and the count of stores under way.
pub(crate) struct Direct {
    context: Arc<Context>,
    releaser: tokio::sync::Mutex<Releaser>,
    /// Stores under way: the writer's batches and the stores in place.
    storing: AtomicUsize,
    /// Whether the last batch stored released dependents: the next one is then stored as graph
    /// tasks, its release in the pipeline that stores it (`store.rs`).
    released: AtomicBool,
}

/// The writer stopped: Redis refused the configuration (raised on [`Context::fatal`]).
struct Stopped;

impl Direct {
    /// The shared part of a writer with `context`, publishing released dependents with
    /// `releaser`.
    pub(crate) fn new(context: Context, releaser: Releaser) -> Arc<Self> {
        Arc::new(Direct {
            context: Arc::new(context),
            releaser: tokio::sync::Mutex::new(releaser),
            storing: AtomicUsize::new(0),
            released: AtomicBool::new(false),
        })
    }

    /// Stores and settles `finished` in the calling task if it would be alone in a batch: no
    /// store is under way and nothing waits in `queue` (the writer's channel). Else gives it
    /// back, to be sent to the writer. Stores, releases, publishes dependents and acknowledges
    /// exactly as the writer does for a batch of one.
    pub(crate) async fn store(
        &self,
        finished: Finished,
        queue: &mpsc::Sender<Finished>,
    ) -> Option<Finished> {
        if queue.capacity() < queue.max_capacity()
            || self
                .storing
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Some(finished);
        }
        let last = finished.last;
        let events = self.context.events.take();
        let stored = self.store_group(vec![finished], last, events).await;
        self.storing.fetch_sub(1, Ordering::AcqRel);
        if let Ok(Some((stored, publisher))) = stored {
            settle::settle(self.context.clone(), stored, publisher, last).await;
        }
        None
    }

    /// Stores `group` (finished tasks that are all `last` or none) with `events`; returns
    /// what to settle, `None` if the group was requeued (its dependents cannot be published
    /// now), or [`Stopped`] (raised on the context's `fatal`).
    async fn store_group(
        &self,
        group: Vec<Finished>,
        last: bool,
        events: Vec<rask_common::events::Event>,
    ) -> Result<Option<(store::Stored, Option<Publisher>)>, Stopped> {
        let context = &self.context;
        let recording = (context.events.recorder(), events);
        let graph = self.released.load(Ordering::Relaxed);
        let stored = match store::store(&context.store, group, recording, graph).await {
            Ok(stored) => stored,
            Err(source) => {
                let what = "storing results";
                context.fatal.raise(Error::StoreRefused { what, source });
                return Err(Stopped);
            }
        };
        self.released
            .store(!stored.ready.is_empty(), Ordering::Relaxed);
        if stored.ready.is_empty() {
            return Ok(Some((stored, None)));
        }
        let publisher = self.releaser.lock().await.publisher().await;
        match publisher {
            Ok(publisher) => Ok(Some((stored, Some(publisher)))),
            Err(e) => {
                tracing::warn!(error = %e, tasks = stored.done.len(), last, "cannot publish ready dependents; requeueing the batch");
                settle::requeue(stored.done).await;
                settle::dead_letter(context, stored.refused).await;
                Ok(None)
            }
        }
    }
}

/// Runs until every sender is dropped and everything received is stored and acknowledged, or
/// until Redis refuses the configuration (then the error is raised on `context.fatal` and what
/// is not acknowledged goes back to the queue when the channel closes).
pub(crate) async fn run(direct: Arc<Direct>, mut finished: mpsc::Receiver<Finished>) {
    let context = direct.context.clone();
    let max_batch = context.settings.result_batch;
    let mut settling = JoinSet::new();
    let mut batch: Vec<Finished> = Vec::with_capacity(max_batch);
    'batches: while finished.recv_many(&mut batch, max_batch).await > 0 {
        direct.storing.fetch_add(1, Ordering::AcqRel);
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
            let events = std::mem::take(&mut events);
            let (stored, publisher) = match direct.store_group(group, last, events).await {
                Ok(Some(settle)) => settle,
                Ok(None) => continue,
                Err(Stopped) => {
                    direct.storing.fetch_sub(1, Ordering::AcqRel);
                    break 'batches;
                }
            };
            // Settle (publish dependents, then ack) while the next batch is being stored.
            while settling.len() >= SETTLING_BATCHES {
                settling.join_next().await;
            }
            settling.spawn(settle::settle(context.clone(), stored, publisher, last));
        }
        direct.storing.fetch_sub(1, Ordering::AcqRel);
    }
    while settling.join_next().await.is_some() {}
}
