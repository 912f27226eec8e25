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
use rask_common::context::WorkerContext;
use rask_common::reply::ReplyTo;
use rask_common::{
    broker, FailureKind, Outcome, Settings, Store, TaskContext, TaskFailure, TaskKey, TaskMessage,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

use crate::admit::{admit, Admission};
use crate::continuation::Continuation;
use crate::error::{Error, Result};
use crate::execute::{execute, time_limit};
use crate::fatal::Fatal;
use crate::limits::{self, Limits};
use crate::ops::Health;
use crate::overrun::Cancel;
use crate::pools::Pools;
use crate::registry::Registry;
use crate::release::{ConfirmChannel, Releaser};
use crate::resources::{self, Capacity, Census, Gate};
use crate::resources::{Held, Holding};
use crate::result_limit::ResultLimit;
use crate::revocations::Revocations;
use crate::scheduler;
use crate::secede::{Deliveries, Seceding, Window, WithResources};
use crate::ticket::Ticket;
use crate::writer::{self, Finished};
use crate::{inputs, references, retries, spans};

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
    /// The tasks revoked by force cancels (kept across connections).
    revocations: Arc<Revocations>,
    /// Its resources (the `resources` setting) and what runs hold of them, across connections.
    capacity: Arc<Capacity>,
    /// The global limits per function, held in memory (kept across connections).
    limits: Arc<Limits>,
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
    /// The blob store of `blob_url`, if set: arguments and results over `blob_threshold`.
    pub(crate) blobs: Option<rask_common::blobs::Blobs>,
    /// Reads the inputs of the graph tasks held, in batches.
    pub(crate) inputs: inputs::InputReader,
    /// To the result writer.
    pub(crate) finished: mpsc::Sender<Finished>,
    /// Stores an outcome in place when the writer would batch it alone (`writer/mod.rs`).
    pub(crate) writer: Arc<writer::Direct>,
    /// Task counters (`metrics.rs`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Checks task messages' signatures when `signing_keys` is set (built once per connection).
    pub(crate) signer: Option<rask_common::signing::Signer>,
    /// Raised by whatever finds an error that stops the worker (e.g. Redis refusing writes).
    pub(crate) fatal: Arc<Fatal>,
    /// The largest result stored (read from Redis once per connection).
    pub(crate) result_limit: ResultLimit,
    /// The tasks revoked by force cancels: dropped at admission, stopped while running.
    pub(crate) revocations: Arc<Revocations>,
    /// The pools served, for the queues of retries and dead letters.
    pub(crate) pools: Arc<Pools>,
    /// What the worker lends tasks that take a context: its id, settings, states (per process).
    pub(crate) context: Arc<WorkerContext>,
    /// The concurrency slots, and the tasks that gave theirs back while they wait.
    pub(crate) seceding: Arc<Seceding>,
    /// The concurrency permits (a task waiting for resources gives its own back meanwhile).
    pub(crate) permits: Arc<Semaphore>,
    /// This worker's resources and what runs hold of them.
    pub(crate) capacity: Arc<Capacity>,
    /// The live workers' resources, for tasks that need more than this worker has.
    pub(crate) census: Census,
    /// The global limits per function (checked in memory; only limited functions pay a
    /// round trip).
    pub(crate) limits: Arc<Limits>,
    /// Cancelled once the loop stops consuming: tasks still waiting for resources give up
    /// (their deliveries return to the queue when the channel closes).
    pub(crate) stopping: CancellationToken,
    /// Task states and events (`events.rs`), written with the result batches.
    pub(crate) events: Arc<crate::events::Events>,
}

impl Shared {
    /// The context of the run of `message` (built only for a function that takes one), which
    /// holds the resource slots `holding` if any (lent out while it secedes); the caller gives
    /// it the run's cancellation token and slot indices.
    pub(crate) fn task_context(
        &self,
        message: &TaskMessage,
        holding: Option<&Arc<Holding>>,
    ) -> TaskContext {
        let secession: Arc<dyn rask_common::context::Secession> = match holding {
            Some(holding) => Arc::new(WithResources {
                seceding: self.seceding.clone(),
                holding: holding.clone(),
            }),
            None => self.seceding.clone(),
        };
        TaskContext::new(
            message.key.clone(),
            message.attempt,
            self.context.clone(),
            secession,
        )
    }
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
            limits: Arc::new(Limits::new(&settings)),
            settings,
            registry,
            id,
            next_node: AtomicUsize::new(0),
            store_checked: AtomicBool::new(false),
            revocations: Arc::default(),
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
    /// Before anything else, the worker builds its state ([`Registry::with_state`]), once.
    ///
    /// # Errors
    /// [`Error`] if the settings are refused (e.g. the queue exists with other arguments, a
    /// login is refused, Redis is a replica) or the worker state cannot be built
    /// ([`Error::State`], [`Error::MissingState`]): [`Error::kind`] is then
    /// [`rask_common::ErrorKind::Configuration`] and [`Error::exit_code`] is
    /// [`crate::EXIT_CONFIG`]; or [`Error::Overruns`].
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let metrics = self.metrics.clone();
        let built = move |state| metrics.state_built(state);
        let states = self.registry.build_states(built).await.inspect_err(|e| {
            tracing::error!(error = %e, "stopping: the worker state cannot be built");
        })?;
        let context = Arc::new(WorkerContext::new(
            self.id.as_str(),
            self.settings.clone(),
            states,
        ));
        let mut pause = RECONNECT.0;
        let ops = crate::ops::Ops::start(
            &self.settings,
            &self.registry,
            &context,
            &self.id,
            self.metrics.clone(),
            self.capacity.clone(),
        )
        .await?;
        let health = ops.health();
        // Dropped (and so stopped) whenever `run` returns.
        let _revocations = AbortOnDropHandle::new(tokio::spawn(crate::revocations::listen(
            self.settings.clone(),
            self.revocations.clone(),
        )));
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
            match self.serve(shutdown.as_mut(), &health, &context).await {
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
        worker_context: &Arc<WorkerContext>,
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
        let blobs = rask_common::blobs::Blobs::from_settings(&settings)?;
        // Before consuming: a task revoked before this worker started is never run.
        self.revocations.load(&store).await?;
        // Likewise: a limit set before this worker started applies from its first delivery.
        self.limits.load(&store).await?;
        let _limits = crate::limits::refresh(store.clone(), self.limits.clone());
        // The functions' run times, for clients sizing batches (`batch.rs`).
        let _pace = crate::batch::publish_pace(
            store.clone(),
            registry.clone(),
            settings.heartbeat_interval,
        );
        let first = self.next_node.load(Ordering::Relaxed);
        let (connection, node) =
            broker::connect_from(&settings, &format!("rask-worker {id}"), first).await?;
        // Whatever ends this connection, the next one starts with the node after this one.
        self.next_node.store(node + 1, Ordering::Relaxed);
        let connection = Arc::new(connection);
        let pools = Arc::new(Pools::new(&settings));
        // Every served pool's topology; the first pool's channel consumes every shard.
        let mut channel = None;
        for (_, own) in pools.served() {
            let declared = broker::declare_topology(&connection, own).await?;
            match &channel {
                None => channel = Some(declared),
                Some(_) => {
                    let _ = declared.close(200, "pool declared".into()).await;
                }
            }
        }
        let channel = channel.expect("settings validation requires a pool");
        let prefetch = settings.effective_prefetch();
        let shards: Vec<String> = pools
            .served()
            .iter()
            .flat_map(|(_, own)| own.task_queues())
            .collect();
        // The prefetch count applies per consumer: one consumer per shard shares it.
        let per_shard = prefetch.div_ceil(u16::try_from(shards.len()).unwrap_or(u16::MAX));
        channel
            .basic_qos(per_shard.max(1), BasicQosOptions::default())
            .await?;
        let confirms = Arc::new(ConfirmChannel::open(connection.clone()).await?);
        // Periodic tasks: checked while this connection serves, stopped with it.
        let _schedules = settings
            .schedules
            .then(|| scheduler::spawn(settings.clone(), store.clone(), confirms.clone()));
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
        let mut consumer: Deliveries = futures::stream::select_all(consumers);

        let releaser = Releaser::new(connection.clone(), pools.clone()).await?;
        let fatal = Arc::new(Fatal::default());
        let (finished, finished_rx) = mpsc::channel(usize::from(prefetch).max(1) * 2);
        let events = Arc::new(crate::events::Events::new(&store, &settings, &id));
        let tracker = TaskTracker::new();
        // Not on a Redis Cluster: releasing again through stored results (what a redelivery
        // needs after a continuation, `ticket.rs`) is a script over many slots.
        let continuation = Arc::new(Continuation::new(
            settings.local_continuation && !store.keys().is_clustered(),
            tracker.clone(),
            usize::from(prefetch),
        ));
        let context = writer::Context {
            continuation: continuation.clone(),
            events: events.clone(),
            store: store.clone(),
            settings: settings.clone(),
            worker: id.clone(),
            confirms: confirms.clone(),
            fatal: fatal.clone(),
            pools: pools.clone(),
            metrics: self.metrics.clone(),
        };
        let direct = writer::Direct::new(context, releaser);
        let writer = tokio::spawn(writer::run(direct.clone(), finished_rx));
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let seceding = Arc::new(Seceding::new(permits.clone()));
        let mut window = Window::new(per_shard);
        tracing::info!(
            worker = %id,
            queue = %settings.queue,
            pools = %pools.served().iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(","),
            shards = shards.len(),
            concurrency = settings.concurrency,
            runtime_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            prefetch,
            functions = %registry.names().join(","),
            "worker ready"
        );
        let stopping = CancellationToken::new();
        // Stopped once the tasks in flight and the writer are done, so that it writes their
        // events too.
        let flushed = CancellationToken::new();
        let flusher = tokio::spawn(events.clone().flush_until(flushed.clone()));
        let flushed = flushed.drop_guard();
        let shared = Arc::new(Shared {
            events,
            signer: rask_common::signing::Signer::from_settings(&settings),
            census: Census::new(&settings, &id),
            permits: permits.clone(),
            capacity: self.capacity.clone(),
            limits: self.limits.clone(),
            stopping: stopping.clone(),
            settings,
            registry,
            id,
            metrics: self.metrics.clone(),
            confirms,
            inputs: inputs::InputReader::new(store.clone()),
            store,
            blobs,
            finished,
            writer: direct,
            fatal: fatal.clone(),
            result_limit,
            context: worker_context.clone(),
            seceding: seceding.clone(),
            pools,
            revocations: self.revocations.clone(),
        });
        continuation.attach(&shared);

        let mut shutdown = shutdown;
        let consuming = health.consuming();
        // `Err(None)`: an error was raised on `fatal` (taken below).
        let outcome: std::result::Result<(), Option<Error>> = loop {
            // The delivery first, then a slot for it: the loop never holds a slot while it
            // waits for the broker, so a task that rejoins after waiting for the tasks it
            // launched (`secede.rs`) gets the next free slot.
            let delivery = tokio::select! {
                () = &mut shutdown => break Ok(()),
                () = fatal.raised() => break Err(None),
                // Tasks parked: the window may be full of them; widen it before waiting on.
                () = seceding.parked_more() => {
                    match window.widen(&seceding, &channel, &shards, &shared.id, &mut consumer).await {
                        Ok(()) => continue,
                        Err(e) => break Err(Some(Error::Consuming(e))),
                    }
                }
                delivery = consumer.next() => delivery,
            };
            let delivery = match delivery {
                Some(Ok(Ok(delivery))) => delivery,
                Some(Ok(Err(e))) => break Err(Some(Error::Consuming(e))),
                Some(Err(shard)) => break Err(Some(Error::ConsumerCancelled(shard))),
                None => {
                    let queue = shared.settings.queue.clone();
                    break Err(Some(Error::ConsumerCancelled(queue)));
                }
            };
            // A delivery dropped here (stopping) goes back to the queue when the channel closes.
            let permit = tokio::select! {
                () = &mut shutdown => break Ok(()),
                () = fatal.raised() => break Err(None),
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let shared = shared.clone();
            // Boxed: the task cell (moved on spawn and on completion) stays small while the
            // state of a whole delivery lives in one heap allocation.
            tracker.spawn(async move {
                let slot = Slot::new(permit, shared.seceding.clone());
                Box::pin(handle(&shared, delivery, slot)).await;
            });
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
        window.cancel(&channel).await;
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
        drop(flushed);
        if tokio::time::timeout(grace, flusher).await.is_err() {
            tracing::warn!("could not write the last task events in time");
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

/// The consumer tag of worker `id` on shard `index` (counting the shards of every pool served,
/// in order): the id itself on the first (as before shards existed), `{id}.{index}` on the
/// others.
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
/// A running task's concurrency slot, given back through [`Seceding::release`] when the task
/// ends, so that a slot owed by a task stopped while it waited for tasks it launched is paid.
pub(crate) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    seceding: Arc<Seceding>,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, seceding: Arc<Seceding>) -> Self {
        Slot {
            permit: Some(permit),
            seceding,
        }
    }

    /// The permit itself, for a task that gives it back while it waits for resources.
    fn take(mut self) -> OwnedSemaphorePermit {
        self.permit
            .take()
            .expect("a slot holds its permit until taken")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.seceding.release(permit);
        }
    }
}

async fn handle(shared: &Shared, delivery: Delivery, slot: Slot) {
    let message = match admit(shared, &delivery).await {
        Admission::Run(message) => message,
        Admission::Refuse(key, failure) => {
            return finish(
                shared,
                key,
                None,
                Outcome::Failure(failure),
                Ticket::Delivery(delivery),
            )
            .await
        }
        Admission::Stored {
            key,
            outcome,
            last,
            reply,
        } => {
            let finished = Finished {
                key,
                outcome,
                ticket: Ticket::Delivery(delivery),
                last,
                more: Vec::new(),
                reply,
            };
            return store(shared, finished).await;
        }
        Admission::Settled | Admission::Abandoned => return,
    };
    if message.is_batch() {
        return crate::batch::handle(shared, message, delivery, slot).await;
    }
    let span = spans::run(&shared.settings, &shared.id, &message);
    run_one(shared, message, delivery, slot, &span)
        .instrument(span.clone())
        .await
}

/// Runs the admitted task `message` of `delivery` in `slot` (the rest of [`handle`]), recording
/// its outcome on `span`.
async fn run_one(
    shared: &Shared,
    message: TaskMessage,
    delivery: Delivery,
    slot: Slot,
    span: &tracing::Span,
) {
    if shared.revocations.is_revoked(&message.key) {
        // Its `Cancelled` outcome is stored: storing it again is a no-op that acknowledges.
        tracing::info!(key = %message.key, "revoked task not run");
        let text = "revoked by a client (force cancel) before it ran";
        let failure = TaskFailure::of(&message, FailureKind::Cancelled, text, &shared.id);
        return finish(
            shared,
            message.key,
            message.reply,
            Outcome::Failure(failure),
            Ticket::Delivery(delivery),
        )
        .await;
    }
    // Tasks of functions and pools without a limit pay for in-memory lookups only. A lease (of
    // a concurrency limit) is held until the run ends. The pool's limit first, then the
    // function's.
    let (message, pool_lease) = match shared.limits.of_pool(message.pool.as_ref()) {
        None => (message, None),
        Some((subject, limit)) => {
            let subject = limits::Subject::Pool(&subject);
            match limits::gate(shared, &message, &delivery, subject, &limit).await {
                limits::Gate::Run(lease, pool_rate_token) => (
                    TaskMessage {
                        pool_rate_token,
                        ..message
                    },
                    lease,
                ),
                limits::Gate::Done => return,
            }
        }
    };
    let (message, lease) = match shared.limits.of(&message.function) {
        None => (message, None),
        Some(limit) => {
            let subject = limits::Subject::Function(&message.function);
            match limits::gate(shared, &message, &delivery, subject, &limit).await {
                limits::Gate::Run(lease, rate_token) => (
                    TaskMessage {
                        rate_token,
                        ..message
                    },
                    lease,
                ),
                limits::Gate::Done => return,
            }
        }
    };
    // Tasks that need no resources pay for this check only.
    let (held, _slot) = if message.resources.is_empty() {
        (None, slot)
    } else {
        match resources::gate(shared, &message, &delivery, slot.take()).await {
            Gate::Run(held, permit) => (Some(held), Slot::new(permit, shared.seceding.clone())),
            Gate::Fail(failure) => {
                let ticket = Ticket::Delivery(delivery);
                return finish(
                    shared,
                    message.key,
                    message.reply,
                    Outcome::Failure(failure),
                    ticket,
                )
                .await;
            }
            Gate::Done => return,
        }
    };
    let leases = [pool_lease, lease];
    run(
        shared,
        message,
        held,
        leases,
        Ticket::Delivery(delivery),
        span,
    )
    .await;
}

/// Runs `message`, a graph task released by outcomes this worker stored, in `slot`, as the
/// continuation of those outcomes (`continuation.rs`): `ticket` holds their deliveries until it
/// is settled. It was checked to need nothing a delivered task waits for (no resources, no
/// limit), so it runs as soon as its inputs are read.
pub(crate) async fn continue_task(
    shared: &Shared,
    message: TaskMessage,
    slot: Slot,
    ticket: Ticket,
) {
    let _slot = slot;
    if shared.revocations.is_revoked(&message.key) {
        tracing::info!(key = %message.key, "revoked task not run");
        let text = "revoked by a client (force cancel) before it ran";
        let failure = TaskFailure::of(&message, FailureKind::Cancelled, text, &shared.id);
        return finish(
            shared,
            message.key,
            message.reply,
            Outcome::Failure(failure),
            ticket,
        )
        .await;
    }
    let span = spans::run(&shared.settings, &shared.id, &message);
    run(shared, message, None, [None, None], ticket, &span)
        .instrument(span.clone())
        .await;
}

/// An admitted task, its limits passed and resources `held` (if it needs any), from its
/// arguments to its outcome: inputs read, run under its time limit (holding its concurrency
/// `leases`, given back when the body ends, before the outcome is stored), then retried through
/// the broker or finished (its outcome stored, then `ticket` settled), recording its end on
/// `span`.
async fn run(
    shared: &Shared,
    message: TaskMessage,
    held: Option<Held>,
    leases: [Option<limits::Lease>; 2],
    ticket: Ticket,
    span: &tracing::Span,
) {
    let mut retryable = false;
    let run = shared.metrics.start(&message.function);
    let recording = shared.events.start(&message);
    let signed = shared.signer.is_some();
    let kept = references::Kept {
        store: &shared.store,
        blobs: shared.blobs.as_ref(),
        blob_threshold: shared.settings.blob_threshold,
    };
    let with_args = match references::resolve(&kept, &shared.id, &message, signed).await {
        Ok(with_args) => with_args,
        Err(references::Unresolved::Failed(outcome)) => {
            run.finished(&outcome);
            if let Some(recording) = recording {
                recording.finished(&outcome);
            }
            limits::give_back(leases).await;
            return finish(shared, message.key, message.reply, outcome, ticket).await;
        }
        Err(references::Unresolved::Refused(source)) => {
            let what = "reading arguments";
            return shared.fatal.raise(Error::StoreRefused { what, source });
        }
    };
    let outcome = match inputs::resolve(shared, &with_args).await {
        Ok(ready) => {
            let limit = time_limit(&message, &shared.settings);
            let overruns = shared.metrics.overruns();
            // One token per run, cancelled when the task is revoked while it runs; a body that
            // takes a context sees it there.
            let cancel = Cancel {
                token: CancellationToken::new(),
                grace: shared.settings.cancel_grace,
            };
            // The slots it holds, for a body that takes a context (read before they move in).
            let slots = held.as_ref().map(|h| h.slots()).unwrap_or_default();
            let holding = held.as_ref().map(Held::share);
            let context = || {
                shared
                    .task_context(&ready, holding.as_ref())
                    .with_cancellation(cancel.token.clone())
                    .with_slots(slots.clone())
            };
            let executing = execute(
                &shared.registry,
                overruns,
                &shared.id,
                &ready,
                &context,
                limit,
                &cancel,
                held,
                &mut retryable,
            );
            let outcome = until_revoked(shared, &message.key, &cancel, executing).await;
            outcome
        }
        Err(inputs::Unresolved::Failed(outcome)) => outcome,
        Err(inputs::Unresolved::Waiting) => return ticket.ack().await,
        Err(inputs::Unresolved::Requeue) => return ticket.requeue().await,
        Err(inputs::Unresolved::Refused(source)) => {
            let what = "reading inputs";
            return shared.fatal.raise(Error::StoreRefused { what, source });
        }
    };
    limits::give_back(leases).await;
    match retries::next_attempt(&message, retryable) {
        Some(retry) => {
            run.retried();
            spans::retried(span);
            if let Some(recording) = recording {
                recording.retried(&outcome);
            }
            let settings = shared.pools.settings_for(message.pool.as_ref());
            retries::schedule(&shared.confirms, &settings, retry, ticket).await
        }
        None => {
            let outcome = match references::keep_result(&kept, &message, outcome).await {
                Ok(outcome) => outcome,
                Err(source) => {
                    let what = "writing a result to the blob store";
                    return shared.fatal.raise(Error::StoreRefused { what, source });
                }
            };
            let outcome = shared.result_limit.apply(outcome, &message, &shared.id);
            run.finished(&outcome);
            spans::finished(span, &outcome);
            if let Some(recording) = recording {
                recording.finished(&outcome);
            }
            finish(shared, message.key, message.reply, outcome, ticket).await
        }
    }
}

/// Runs `executing` (the body of task `key`) to its outcome; when a client revokes the task while
/// it runs (force cancel), `cancel` is fired and the body's outcome after that is returned.
pub(crate) async fn until_revoked(
    shared: &Shared,
    key: &TaskKey,
    cancel: &Cancel,
    executing: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    tokio::pin!(executing);
    tokio::select! {
        biased;
        outcome = &mut executing => outcome,
        () = shared.revocations.revoked(key) => {
            tracing::info!(key = %key, "revoked task stopped");
            cancel.token.cancel();
            executing.await
        }
    }
}

/// Hands `outcome` to the result writer, which stores it (sending it to the client `reply`
/// names, if any), releases its dependents and then settles `ticket` (acknowledges the
/// delivery).
async fn finish(
    shared: &Shared,
    key: TaskKey,
    reply: Option<ReplyTo>,
    outcome: Outcome,
    ticket: Ticket,
) {
    if let Outcome::Failure(f) = &outcome {
        tracing::info!(key = %f.key, task = %f.task, kind = ?f.kind, message = %f.message, "task failed");
    }
    let encoded = match outcome.encode() {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "outcome does not encode; dead-lettering");
            match ticket {
                Ticket::Delivery(delivery) => {
                    let reject = BasicRejectOptions { requeue: false };
                    if let Err(e) = delivery.reject(reject).await {
                        tracing::warn!(error = %e, "could not reject; the task will be redelivered");
                    }
                }
                // Its releasers go back to the queue; released again, it is published, and
                // dead-lettered as a delivery.
                Ticket::Carried(hold) => drop(hold),
            }
            return;
        }
    };
    let finished = Finished {
        key,
        outcome: encoded,
        ticket,
        last: false,
        more: Vec::new(),
        reply,
    };
    store(shared, finished).await;
}

/// Hands an encoded outcome to the result writer (see [`finish`]), or stores it in place when
/// the writer would store it alone (no store under way, nothing queued for it): one task in
/// flight then pays no hand-off between tasks.
async fn store(shared: &Shared, finished: Finished) {
    let Some(finished) = shared.writer.store(finished, &shared.finished).await else {
        return;
    };
    if shared.finished.send(finished).await.is_err() {
        tracing::error!("result writer stopped; the task will be redelivered");
    }
}
