//! The [`Client`]: submits tasks to RabbitMQ and reads their outcomes from Redis.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rask_common::message::encode_value;
use rask_common::{Settings, Store, Task, TaskKey, TaskMessage};
use tracing::Instrument;

use crate::completions::{Listener, Waiter};
use crate::connection::BrokerLink;
use crate::error::{Error, Result};
use crate::future::Future;
use crate::pools::RouteWatch;
use crate::publish::{publish_all, Publisher};
use crate::purge::Purged;
use crate::references::Keeper;
use crate::trace::Publishing;
use rask_common::events::{Event, TaskInfo};
use rask_common::TaskOptions;

/// A connection to a rask deployment. Cheap to clone; clones share connections.
///
/// When RabbitMQ drops the connection (a restart, a network failure), the client connects again
/// with backoff, for at most the `reconnect_max_wait` setting, and publishes again every task of
/// the interrupted call that the broker had not confirmed: a `submit` or `map` in progress
/// completes, and every future it returns completes. Delivery is at least once (a task whose
/// confirm was lost with the connection is published twice); results are write-once, so the
/// stored outcome is the first run's. Redis failures are ridden out by waits (see
/// [`Client::gather`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    link: BrokerLink,
    store: Store,
    /// Where values that do not travel inline are kept (Redis, the blob store).
    keeper: Keeper,
    listener: Listener,
    /// The routes published to, checked once each against the worker registry.
    routes: Arc<RouteWatch>,
    /// The `queued` events of tasks published (`events.rs`).
    queued: crate::events::Queued,
    /// The hedgers of hedged calls running in the background (`hedge.rs`).
    hedgers: crate::hedge::Hedgers,
}

impl Client {
    /// Connects to RabbitMQ (declaring the topology) and Redis (subscribing to completions).
    ///
    /// # Errors
    /// [`crate::Error`] if either cannot be reached, or the topology is refused.
    pub async fn connect(settings: Settings) -> Result<Self> {
        settings.validate()?;
        let store = Store::connect(&settings).await?;
        store.warn_about_risks().await;
        let listener = Listener::start(
            rask_common::store::subscription_clients(&settings)?,
            store.keys(),
            settings.redis_ping_interval,
        )
        .await?;
        let keeper = Keeper::new(store.clone(), &settings)?;
        let link = BrokerLink::connect(&settings).await?;
        let queued = crate::events::Queued::new(&store, &settings);
        Ok(Client {
            inner: Arc::new(Inner {
                queued,
                settings,
                link,
                keeper,
                store,
                listener,
                routes: Arc::default(),
                hedgers: crate::hedge::Hedgers::default(),
            }),
        })
    }

    /// The settings this client was connected with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Submits one call of `task` and returns its future once the broker has confirmed it.
    ///
    /// # Errors
    /// [`crate::Error`] if the arguments do not encode or the broker does not take the task.
    pub async fn submit<T: Task>(&self, task: T, args: T::Args) -> Result<Future<T::Output>> {
        self.submit_with(task, args, &TaskOptions::default()).await
    }

    /// [`Client::submit`] with scheduling options: a countdown or eta, a priority, a retry
    /// policy, a time limit.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub async fn submit_with<T: Task>(
        &self,
        task: T,
        args: T::Args,
        options: &TaskOptions,
    ) -> Result<Future<T::Output>> {
        let _ = task;
        let key = TaskKey::unique(T::NAME);
        let message = TaskMessage::new(key.clone(), T::NAME, encode_value(&args)?);
        self.publish_with("submit", T::NAME, std::iter::once(Ok(message)), options)
            .await?;
        Ok(self.future(key))
    }

    /// Submits one call of `task` per element of `args`, pipelined (no round trip per task), and
    /// returns their futures in input order once the broker has confirmed all of them.
    ///
    /// Small quick calls share messages (batches, see [`TaskOptions::batch`]): each keeps its
    /// own key, outcome, retries and failure, and the worker stores a batch's outcomes together
    /// and acknowledges it once. The size follows the function's run time as workers measured
    /// it (calls of a millisecond or more, or of a function not measured yet, are not batched);
    /// [`Client::map_with`] with [`TaskOptions::batch`] sets it.
    ///
    /// Arguments are taken from `args` only as the publish window allows (at most
    /// `publish_window` unconfirmed), so a huge iterator streams: what `map` keeps is one future
    /// (a key) per task. To not even keep those, use [`Client::map_stream`].
    ///
    /// # Errors
    /// [`crate::Error`] for the first task the broker did not take. Tasks published before it
    /// (and possibly some after it, within the publish window) are queued and will run.
    pub async fn map<T: Task>(
        &self,
        task: T,
        args: impl IntoIterator<Item = T::Args>,
    ) -> Result<Vec<Future<T::Output>>> {
        self.map_with(task, args, &TaskOptions::default()).await
    }

    /// [`Client::map`] as a stream: yields `(index in args, future)` for each task as the broker
    /// confirms it, and takes arguments from `args` only as the publish window allows. Memory
    /// stays bounded however many tasks there are, and at most `publish_window` arguments are
    /// taken but not yet yielded. Futures come in input order, except that tasks published again
    /// after a reconnect come after those confirmed before it (hence the index). The stream
    /// ends after the last task, or after an error. It publishes one message per task (no
    /// batches).
    ///
    /// ```no_run
    /// use futures::StreamExt;
    /// use rask::builtins::inc;
    ///
    /// # async fn example(client: rask::Client) -> rask::Result<()> {
    /// let mut submitted = std::pin::pin!(client.map_stream(inc, (0..1_000_000).map(|i| (i,))));
    /// while let Some(next) = submitted.next().await {
    ///     let (index, future) = next?;
    ///     // e.g. hand the key to whoever gathers
    ///     let _ = (index, future.key());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The stream yields an error as [`Client::map`] returns one, then ends.
    pub fn map_stream<'a, T, I>(
        &'a self,
        task: T,
        args: I,
    ) -> impl Stream<Item = Result<(usize, Future<T::Output>)>> + Send + 'a
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
        I::IntoIter: Send + 'a,
    {
        let _ = task;
        let pool = self.inner.settings.route(T::NAME, None);
        self.watch_route(T::NAME, pool.as_ref());
        let queued = &self.inner.queued;
        let publishing = Publishing::start(&self.inner.settings, "map", T::NAME);
        let messages = args.into_iter().map(move |args| {
            let key = TaskKey::unique(T::NAME);
            let mut message = TaskMessage::new(key, T::NAME, encode_value(&args)?);
            message.pool.clone_from(&pool);
            let message = publishing.stamp(message);
            queued.note(&message);
            Ok::<_, Error>(message)
        });
        let publisher = Publisher::new(
            &self.inner.link,
            &self.inner.keeper,
            &self.inner.settings,
            Duration::ZERO,
            messages,
        );
        futures::stream::unfold(publisher, move |mut publisher| async move {
            let Some(next) = publisher.next().await else {
                queued.flush();
                return None;
            };
            let next = next.map(|(index, key)| (index, self.future(key)));
            Some((next, publisher))
        })
    }

    /// [`Client::map`] with scheduling options, the same for every task.
    ///
    /// # Errors
    /// As [`Client::map`].
    pub async fn map_with<T: Task>(
        &self,
        task: T,
        args: impl IntoIterator<Item = T::Args>,
        options: &TaskOptions,
    ) -> Result<Vec<Future<T::Output>>> {
        let _ = task;
        self.map_encoded_with(
            T::NAME,
            args.into_iter()
                .map(|a| encode_value(&a).map_err(Into::into)),
            options,
        )
        .await
    }

    /// Submits calls of the function named `function` with arguments already encoded as
    /// MessagePack tuples (arrays), for callers without a typed handle (the CLI). The futures
    /// read results as any MessagePack value.
    ///
    /// # Errors
    /// [`crate::Error`] for the first task that could not be encoded or published.
    pub async fn map_encoded<T>(
        &self,
        function: &str,
        args: impl IntoIterator<Item = Result<Vec<u8>>>,
    ) -> Result<Vec<Future<T>>> {
        self.map_encoded_with(function, args, &TaskOptions::default())
            .await
    }

    /// [`Client::map_encoded`] with scheduling options, the same for every task.
    ///
    /// # Errors
    /// As [`Client::map_encoded`].
    pub async fn map_encoded_with<T>(
        &self,
        function: &str,
        args: impl IntoIterator<Item = Result<Vec<u8>>>,
        options: &TaskOptions,
    ) -> Result<Vec<Future<T>>> {
        let args = args.into_iter();
        let size = self.batch_size(function, options, args.size_hint()).await;
        let mut keys = Vec::new();
        let messages = crate::batch::pack(function, args, size, &mut keys);
        self.publish_with("map", function, messages, options)
            .await?;
        Ok(keys.into_iter().map(|k| self.future(k)).collect())
    }

    /// How many calls of `function` go into one message of a map with `options` over
    /// arguments of `size_hint` ([`rask_common::batch`]): 1 for one call or calls that need
    /// resources; the size set with [`TaskOptions::batch`]; else sized by the run time workers
    /// published for the function (one `HGET`; 1 if Redis cannot say).
    async fn batch_size(
        &self,
        function: &str,
        options: &TaskOptions,
        size_hint: (usize, Option<usize>),
    ) -> usize {
        if !options.batchable() || size_hint.1.is_some_and(|most| most <= 1) {
            return 1;
        }
        match options.batch_size() {
            Some(size) => size,
            None => self.paced_batch_size(function).await,
        }
    }

    /// Calls of `function` per message sized by the run time workers published for it
    /// ([`rask_common::batch::size_for`]; one `HGET`; 1 if Redis cannot say).
    pub(crate) async fn paced_batch_size(&self, function: &str) -> usize {
        match rask_common::batch::read_pace(&self.inner.store, function).await {
            Ok(average) => rask_common::batch::size_for(average),
            Err(e) => {
                tracing::warn!(function, error = %e, "cannot read the run time workers measured; not batching");
                1
            }
        }
    }

    /// A future for the task with `key`, submitted by this or any other process.
    pub fn future<T>(&self, key: TaskKey) -> Future<T> {
        Future::new(self.clone(), key)
    }

    /// Deletes the stored results of `keys`; returns how many existed. With a blob store
    /// (`blob_url`), results kept there are deleted from it too.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails; [`crate::Error::Common`] if the blob store does.
    pub async fn release(&self, keys: &[TaskKey]) -> Result<u64> {
        let Some(blobs) = self.inner.keeper.blobs() else {
            return Ok(self.inner.store.delete(keys).await?);
        };
        // Results kept in the blob store go with their records: read first which are.
        let kept = crate::references::blob_results(&self.inner.store, keys).await?;
        let deleted = self.inner.store.delete(keys).await?;
        blobs.delete(&kept).await?;
        Ok(deleted)
    }

    /// Empties every task queue shard and every delay queue (tasks waiting for a countdown, an
    /// eta or a retry), of the default pool and of every pool the settings name (`pools`,
    /// `routes`), this client published to or a live worker serves, and deletes every stored
    /// result of this deployment (key prefix), and every object under `blob_url` if it is set.
    /// Returns (messages purged from all those queues, results deleted); see
    /// [`Client::purge_report`] for the queues one by one.
    ///
    /// # Errors
    /// [`crate::Error`] if RabbitMQ or Redis fails.
    pub async fn purge(&self) -> Result<(u32, u64)> {
        let purged = self.purge_report().await?;
        let messages = u32::try_from(purged.messages()).unwrap_or(u32::MAX);
        Ok((messages, purged.results))
    }

    /// [`Client::purge`], reporting what it removed from each queue.
    ///
    /// # Errors
    /// [`crate::Error`] if RabbitMQ or Redis fails.
    pub async fn purge_report(&self) -> Result<Purged> {
        let purged =
            crate::purge::purge(&self.inner.link, &self.inner.settings, &self.inner.store).await?;
        if let Some(blobs) = self.inner.keeper.blobs() {
            // Every object under `blob_url`: the prefix belongs to the deployment.
            blobs.purge().await?;
        }
        Ok(purged)
    }

    /// Stops listening for completions and closes the connection to RabbitMQ (Redis connections
    /// close when the last clone drops). Waits still running on clones fail; later submits fail
    /// with [`crate::Error::Closed`]. Hedging stops first: the other copies of hedged tasks
    /// that have an outcome are revoked (see [`TaskOptions::hedge`]).
    ///
    /// # Errors
    /// [`crate::Error::Broker`] if the close handshake fails.
    pub async fn close(&self) -> Result<()> {
        self.inner.hedgers.finish().await;
        self.inner.listener.stop();
        self.inner.link.close().await
    }

    /// Publishes `messages` to the task queue, to run now.
    pub(crate) async fn publish(
        &self,
        messages: impl IntoIterator<Item = Result<TaskMessage>>,
    ) -> Result<()> {
        let queued = &self.inner.queued;
        let messages = messages.into_iter().inspect(|m| {
            if let Ok(m) = m {
                queued.note(m);
            }
        });
        let published = publish_all(
            &self.inner.link,
            &self.inner.keeper,
            &self.inner.settings,
            Duration::ZERO,
            messages,
        )
        .await;
        queued.flush();
        published
    }

    /// Publishes `messages` (calls of `function`, made by `operation`: `submit` or `map`) with
    /// `options` applied, to their pool, through a delay queue if they start later, in the
    /// caller's trace or a new one ([`Publishing`]).
    pub(crate) async fn publish_with(
        &self,
        operation: &'static str,
        function: &str,
        messages: impl IntoIterator<Item = Result<TaskMessage>>,
        options: &TaskOptions,
    ) -> Result<()> {
        let s = &self.inner.settings;
        let pool = options.checked_pool()?;
        self.watch_route(function, s.route(function, pool).as_ref());
        let queued = &self.inner.queued;
        let delay = options.delay();
        // Hedged tasks are kept, to publish a copy of those that run late (`hedge.rs`).
        let hedge = options.hedge_policy();
        let mut armed = hedge.map(|_| crate::hedge::Armed::new());
        let publishing = Publishing::start(s, operation, function);
        let messages = messages.into_iter().map(|m| {
            m.map(|m| {
                let m = publishing.stamp(options.apply(m, s));
                queued.note(&m);
                if let Some(armed) = armed.as_mut() {
                    armed.note(&m, delay);
                }
                m
            })
        });
        let published = publish_all(&self.inner.link, &self.inner.keeper, s, delay, messages)
            .instrument(publishing.span.clone())
            .await;
        queued.flush();
        if let (Ok(()), Some(policy), Some(armed)) = (&published, hedge, armed) {
            let hedgers = &self.inner.hedgers;
            hedgers.spawn(self.clone(), policy, function.to_owned(), armed);
        }
        published
    }

    /// What is known of each task of `keys`, in order: its state (`queued`, `waiting`,
    /// `running`, `succeeded`, `failed`, `cancelled` or `unknown`), who queued it and when,
    /// where and when it ran, how it ended (see [`rask_common::events`]). `rask inspect`
    /// prints it.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn task_info(&self, key: &TaskKey) -> Result<TaskInfo> {
        let mut infos = self.tasks_info(std::slice::from_ref(key)).await?;
        Ok(infos.pop().expect("one info per key"))
    }

    /// [`Client::task_info`] of many tasks at once, in order.
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn tasks_info(&self, keys: &[TaskKey]) -> Result<Vec<TaskInfo>> {
        Ok(rask_common::events::task_info(&self.inner.store, keys).await?)
    }

    /// Up to `count` events of the deployment's event stream after entry `after` (exclusive;
    /// `None`: from `since` ago, or from the oldest kept), oldest first (`rask events`).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn events(
        &self,
        after: Option<&str>,
        since: Option<Duration>,
        count: usize,
    ) -> Result<Vec<Event>> {
        Ok(rask_common::events::read_events(&self.inner.store, after, since, count).await?)
    }

    /// Notes that `function` is published to `pool` (`None`: the default pool), so that a
    /// warning says so, once, if no live worker of the pool has registered it (checked in the
    /// background: no round trip here).
    pub(crate) fn watch_route(&self, function: &str, pool: Option<&rask_common::Pool>) {
        let inner = &self.inner;
        inner
            .routes
            .note(&inner.store, &inner.settings, function, pool);
    }

    /// The routes this client published to.
    pub(crate) fn route_watch(&self) -> &RouteWatch {
        &self.inner.routes
    }

    /// Declares the queues of `pool` (once per connection; nothing for the default pool).
    pub(crate) async fn declare_pool(&self, pool: &rask_common::Pool) -> Result<()> {
        self.inner.link.declare_pool(pool).await
    }

    /// A waiter for `keys` (owned, or borrowed from the caller's futures).
    pub(crate) fn waiter<K: std::borrow::Borrow<TaskKey>>(&self, keys: Vec<K>) -> Waiter<K> {
        Waiter::new(
            self.inner.store.clone(),
            self.inner.keeper.clone(),
            self.inner.listener.subscribe(),
            keys,
        )
    }

    /// The id of this client's reply channel ([`rask_common::reply`]).
    pub(crate) fn reply_to(&self) -> &rask_common::reply::ReplyTo {
        self.inner.listener.reply_to()
    }

    /// The client's recorder of task events (`events.rs`).
    pub(crate) fn events_log(&self) -> &crate::events::Queued {
        &self.inner.queued
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}
