//! The worker loop: consume deliveries, run each under a concurrency permit, hand outcomes to the
//! result writer or schedule a retry, dead-letter what will not run; on shutdown stop consuming
//! and drain.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::FusedFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use rask_common::{broker, Outcome, Settings, Store, TaskKey};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admit::{admit, Admission};
use crate::error::{Error, Result};
use crate::execute::{execute, time_limit};
use crate::fatal::Fatal;
use crate::ops::Health;
use crate::registry::Registry;
use crate::release::{ConfirmChannel, Releaser};
use crate::resources::{self, Capacity, Census, Gate};
use crate::result_limit::ResultLimit;
use crate::writer::{self, Finished};
use crate::{inputs, retries};

/// First and largest pause between attempts to reconnect.
const RECONNECT: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(5),
);

/// A stateless worker: all its state is in RabbitMQ and Redis.
pub struct Worker {
    settings: Settings,
    registry: Registry,
    id: String,
    metrics: Arc<crate::metrics::Metrics>,
    /// The index (in [`Settings::amqp_nodes`]) of the RabbitMQ node to try first when
    /// connecting: the one after the node of the last connection once that one is lost.
    next_node: AtomicUsize,
    /// Whether the store's configuration was checked for risks (once, on the first connection).
    store_checked: AtomicBool,
    /// Its resources (the `resources` setting) and what runs hold of them, across connections.
    capacity: Arc<Capacity>,
}

/// What every task handler shares.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) registry: Registry,
    /// This worker's id.
    pub(crate) id: String,
    /// For dead-letter copies and retries.
    pub(crate) confirms: Arc<ConfirmChannel>,
    pub(crate) store: Store,
    /// To the result writer.
    pub(crate) finished: mpsc::Sender<Finished>,
    /// Task counters (`metrics.rs`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Checks task messages' signatures when `signing_keys` is set (built once per connection).
    pub(crate) signer: Option<rask_common::signing::Signer>,
    /// Raised by whatever finds an error that stops the worker (e.g. Redis refusing writes).
    pub(crate) fatal: Arc<Fatal>,
    /// The largest result stored (read from Redis once per connection).
    pub(crate) result_limit: ResultLimit,
    /// The concurrency permits (a task waiting for resources gives its own back meanwhile).
    pub(crate) permits: Arc<Semaphore>,
    /// This worker's resources and what runs hold of them.
    pub(crate) capacity: Arc<Capacity>,
    /// The live workers' resources, for tasks that need more than this worker has.
    pub(crate) census: Census,
    /// Cancelled once the loop stops consuming: tasks still waiting for resources give up
    /// (their deliveries return to the queue when the channel closes).
    pub(crate) stopping: CancellationToken,
}

impl Worker {
    /// A worker running `registry`'s functions with `settings`, under a fresh unique id
    /// (`{host}-{pid}-{random}`).
    pub fn new(settings: Settings, registry: Registry) -> Self {
        let host =
            hostname::get().map_or_else(|_| "host".into(), |h| h.to_string_lossy().into_owned());
        let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let id = format!("{host}-{}-{random}", std::process::id());
        Worker {
            metrics: Arc::new(crate::metrics::Metrics::new(
                registry.names(),
                settings.effective_max_overrun_threads(),
            )),
            capacity: resources::capacity(&settings),
            settings,
            registry,
            id,
            next_node: AtomicUsize::new(0),
            store_checked: AtomicBool::new(false),
        }
    }

    /// This worker's unique id (reported in every failure it stores).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Connects, declares the topology and serves tasks until `shutdown` completes; then stops
    /// consuming, finishes the tasks in flight (for at most `shutdown_grace`), stores and
    /// acknowledges them, and returns. Tasks still running after the grace period are not
    /// acknowledged: closing the channel returns them to the queue. A binary should exit when
    /// this returns rather than wait for such tasks' threads.
    ///
    /// When the connection to RabbitMQ or Redis fails (a broker restart, say), the worker drains
    /// what it runs, then connects again with backoff (100 ms doubling to 5 s, logged) and goes
    /// on consuming; only a failure that reconnecting cannot fix ends it
    /// ([`Error::is_permanent`]). With several RabbitMQ nodes (`amqp_urls`) it connects to the
    /// first that answers, and after losing one tries the nodes after it first and the lost one
    /// last. Its `/health` answers 200 only while it consumes.
    ///
    /// When the threads of plain functions that ran past their time limit reach
    /// `max_overrun_threads`, the worker stops as if `shutdown` completed and returns
    /// [`Error::Overruns`]: a binary should exit then, ending those threads.
    ///
    /// # Errors
    /// [`Error`] if the settings are refused (e.g. the queue exists with other arguments, a
    /// login is refused, Redis is a replica): [`Error::kind`] is then
    /// [`rask_common::ErrorKind::Configuration`] and [`Error::exit_code`] is
    /// [`crate::EXIT_CONFIG`]; or [`Error::Overruns`].
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut pause = RECONNECT.0;
        let ops = crate::ops::Ops::start(
            &self.settings,
            &self.registry,
            &self.id,
            self.metrics.clone(),
            self.capacity.clone(),
        )
        .await?;
        let health = ops.health();
        let overruns = self.metrics.overruns().clone();
        let exhausted = overruns.exhausted().clone();
        let shutdown = ops
            .until(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = exhausted.cancelled() => {}
                }
            })
            .fuse();
        tokio::pin!(shutdown);
        let stopped = || {
            if overruns.exhausted().is_cancelled() {
                Err(Error::Overruns {
                    running: overruns.running(),
                    max: overruns.max(),
                })
            } else {
                Ok(())
            }
        };
        loop {
            match self.serve(shutdown.as_mut(), &health).await {
                Ok(()) => return stopped(),
                Err(e) if !e.is_permanent() && !shutdown.is_terminated() => {
                    tracing::warn!(error = %e, retry_in = ?pause, "connection lost; reconnecting");
                    self.metrics.reconnected();
                    tokio::select! {
                        () = &mut shutdown => return stopped(),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RECONNECT.1);
                }
                Err(e) => {
                    tracing::error!(error = %e, kind = ?e.kind(), "stopping: reconnecting cannot fix this");
                    return Err(e);
                }
            }
        }
    }

    /// One connection's worth of [`Worker::run`]: returns `Ok` once `shutdown` completed and the
    /// worker drained, or the error that ended the connection.
    async fn serve(
        &self,
        shutdown: std::pin::Pin<&mut futures::future::Fuse<impl Future<Output = ()> + Send>>,
        health: &Arc<Health>,
    ) -> Result<()> {
        let settings = self.settings.clone();
        let registry = self.registry.clone();
        let id = self.id.clone();
        let store = Store::connect(&settings)
            .await?
            .with_replica_wait_counts(self.metrics.replica_waits());
        if !self.store_checked.swap(true, Ordering::Relaxed) {
            store.warn_about_risks().await;
        }
        let result_limit = ResultLimit::read(&store, &settings).await;
        let first = self.next_node.load(Ordering::Relaxed);
        let (connection, node) =
            broker::connect_from(&settings, &format!("rask-worker {id}"), first).await?;
        // Whatever ends this connection, the next one starts with the node after this one.
        self.next_node.store(node + 1, Ordering::Relaxed);
        let connection = Arc::new(connection);
        let channel = broker::declare_topology(&connection, &settings).await?;
        let prefetch = settings.effective_prefetch();
        let shards = settings.task_queues();
        // The prefetch count applies per consumer: one consumer per shard shares it.
        let per_shard = prefetch.div_ceil(u16::try_from(shards.len()).unwrap_or(u16::MAX));
        channel
            .basic_qos(per_shard.max(1), BasicQosOptions::default())
            .await?;
        let confirms = Arc::new(ConfirmChannel::open(connection.clone()).await?);
        let mut consumers = Vec::with_capacity(shards.len());
        for (i, shard) in shards.iter().enumerate() {
            let consumer = channel
                .basic_consume(
                    shard.as_str().into(),
                    consumer_tag(&id, i).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| rask_common::refusal::consuming(e, shard))?;
            // Each shard's stream ends with its name, so that a cancelled consumer is noticed.
            let shard = shard.clone();
            consumers.push(
                consumer
                    .map(Ok)
                    .chain(futures::stream::once(async move { Err(shard) }))
                    .boxed(),
            );
        }
        let mut consumer = futures::stream::select_all(consumers);

        let releaser = Releaser::new(connection.clone(), settings.clone()).await?;
        let fatal = Arc::new(Fatal::default());
        let (finished, finished_rx) = mpsc::channel(usize::from(prefetch).max(1) * 2);
        let context = writer::Context {
            store: store.clone(),
            settings: settings.clone(),
            worker: id.clone(),
            confirms: confirms.clone(),
            fatal: fatal.clone(),
        };
        let writer = tokio::spawn(writer::run(context, finished_rx, releaser));
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let tracker = TaskTracker::new();
        tracing::info!(
            worker = %id,
            queue = %settings.queue,
            shards = shards.len(),
            concurrency = settings.concurrency,
            prefetch,
            functions = %registry.names().join(","),
            "worker ready"
        );
        let stopping = CancellationToken::new();
        let shared = Arc::new(Shared {
            signer: rask_common::signing::Signer::from_settings(&settings),
            census: Census::new(&settings, &id),
            permits: permits.clone(),
            capacity: self.capacity.clone(),
            stopping: stopping.clone(),
            settings,
            registry,
            id,
            metrics: self.metrics.clone(),
            confirms,
            store,
            finished,
            fatal: fatal.clone(),
            result_limit,
        });

        let mut shutdown = shutdown;
        let consuming = health.consuming();
        // `Err(None)`: an error was raised on `fatal` (taken below).
        let outcome: std::result::Result<(), Option<Error>> = loop {
            let permit = tokio::select! {
                () = &mut shutdown => break Ok(()),
                () = fatal.raised() => break Err(None),
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let delivery = tokio::select! {
                () = &mut shutdown => break Ok(()),
                () = fatal.raised() => break Err(None),
                delivery = consumer.next() => delivery,
            };
            match delivery {
                Some(Ok(Ok(delivery))) => {
                    let shared = shared.clone();
                    // Boxed: the task cell (moved on spawn and on completion) stays small
                    // while the state of a whole delivery lives in one heap allocation.
                    tracker.spawn(async move {
                        Box::pin(handle(&shared, delivery, permit)).await;
                    });
                }
                Some(Ok(Err(e))) => break Err(Some(Error::Consuming(e))),
                Some(Err(shard)) => break Err(Some(Error::ConsumerCancelled(shard))),
                None => {
                    let queue = shared.settings.queue.clone();
                    break Err(Some(Error::ConsumerCancelled(queue)));
                }
            }
        };
        drop(consuming);
        stopping.cancel();

        tracing::info!(worker = %shared.id, in_flight = tracker.len(), "stopping: finishing tasks in flight");
        for i in 0..shards.len() {
            if let Err(e) = channel
                .basic_cancel(
                    consumer_tag(&shared.id, i).as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await
            {
                tracing::warn!(error = %e, "could not cancel the consumer");
            }
        }
        let grace = shared.settings.shutdown_grace;
        tracker.close();
        let drained = tokio::time::timeout(grace, async move {
            tracker.wait().await;
            drop(shared);
            writer.await
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the result writer panicked"),
            Err(_) => tracing::warn!(
                ?grace,
                "grace period over: tasks still running go back to the queue unacknowledged"
            ),
        }
        // Deliveries prefetched but never started go back to the queue when the channel closes.
        let _ = channel.close(200, "worker stopping".into()).await;
        let _ = connection.close(200, "worker stopping".into()).await;
        tracing::info!("worker stopped");
        // A fatal error raised while draining (the writer storing the last batch) wins too.
        match (outcome, fatal.take()) {
            (_, Some(raised)) => Err(raised),
            (Err(Some(e)), None) => Err(e),
            (Ok(()) | Err(None), None) => Ok(()),
        }
    }
}

/// The consumer tag of worker `id` on shard `index`: the id itself on shard 0 (as before shards
/// existed), `{id}.{index}` on the others.
fn consumer_tag(id: &str, index: usize) -> String {
    match index {
        0 => id.to_owned(),
        i => format!("{id}.{i}"),
    }
}

/// One delivery, start to end: admitted (or dead-lettered), its resources taken (or handed on),
/// inputs read, run under its time limit, then retried through the broker or finished (its
/// outcome stored, then acknowledged). Holds `permit` (a concurrency slot) throughout, except
/// while it waits for resources.
async fn handle(shared: &Shared, delivery: Delivery, permit: OwnedSemaphorePermit) {
    let message = match admit(shared, &delivery).await {
        Admission::Run(message) => message,
        Admission::Refuse(key, failure) => {
            return finish(shared, key, Outcome::Failure(failure), delivery).await
        }
        Admission::Stored { key, outcome, last } => {
            let finished = Finished {
                key,
                outcome,
                delivery,
                last,
            };
            return store(shared, finished).await;
        }
        Admission::Settled | Admission::Abandoned => return,
    };
    // Tasks that need no resources pay for this check only.
    let (held, _permit) = if message.resources.is_empty() {
        (None, permit)
    } else {
        match resources::gate(shared, &message, &delivery, permit).await {
            Gate::Run(held, permit) => (Some(held), permit),
            Gate::Fail(failure) => {
                return finish(shared, message.key, Outcome::Failure(failure), delivery).await
            }
            Gate::Done => return,
        }
    };
    let mut retryable = false;
    let run = shared.metrics.start(&message.function);
    let outcome = match inputs::resolve(&shared.store, &shared.id, &message).await {
        Ok(ready) => {
            let limit = time_limit(&message, &shared.settings);
            let overruns = shared.metrics.overruns();
            execute(
                &shared.registry,
                overruns,
                &shared.id,
                &ready,
                limit,
                held,
                &mut retryable,
            )
            .await
        }
        Err(inputs::Unresolved::Failed(outcome)) => outcome,
        Err(inputs::Unresolved::Refused(source)) => {
            let what = "reading inputs";
            return shared.fatal.raise(Error::StoreRefused { what, source });
        }
    };
    match retries::next_attempt(&message, retryable) {
        Some(retry) => {
            run.retried();
            retries::schedule(&shared.confirms, &shared.settings, retry, delivery).await
        }
        None => {
            let outcome = shared.result_limit.apply(outcome, &message, &shared.id);
            run.finished(&outcome);
            finish(shared, message.key, outcome, delivery).await
        }
    }
}

/// Hands `outcome` to the result writer, which stores it, releases its dependents and then
/// acknowledges `delivery`.
async fn finish(shared: &Shared, key: TaskKey, outcome: Outcome, delivery: Delivery) {
    if let Outcome::Failure(f) = &outcome {
        tracing::info!(key = %f.key, task = %f.task, kind = ?f.kind, message = %f.message, "task failed");
    }
    let encoded = match outcome.encode() {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "outcome does not encode; dead-lettering");
            if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                tracing::warn!(error = %e, "could not reject; the task will be redelivered");
            }
            return;
        }
    };
    let finished = Finished {
        key,
        outcome: encoded,
        delivery,
        last: false,
    };
    store(shared, finished).await;
}

/// Hands an encoded outcome to the result writer (see [`finish`]).
async fn store(shared: &Shared, finished: Finished) {
    if shared.finished.send(finished).await.is_err() {
        tracing::error!("result writer stopped; the task will be redelivered");
    }
}
