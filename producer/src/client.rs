//! The [`Client`]: submits tasks to RabbitMQ and reads their outcomes from Redis.

use std::sync::Arc;

use lapin::options::{ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{Channel, Connection};
use rask_common::broker::{self, Destination};
use rask_common::message::encode_value;
use rask_common::{Settings, Store, Task, TaskKey, TaskMessage};

use crate::completions::{Listener, Waiter};
use crate::error::Result;
use crate::future::Future;
use crate::options::TaskOptions;
use crate::publish::publish_all;

/// A connection to a rask deployment. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    connection: Connection,
    channel: Channel,
    store: Store,
    listener: Listener,
}

impl Client {
    /// Connects to RabbitMQ (declaring the topology) and Redis (subscribing to completions).
    ///
    /// # Errors
    /// [`crate::Error`] if either cannot be reached, or the topology is refused.
    pub async fn connect(settings: Settings) -> Result<Self> {
        settings.validate()?;
        let store = Store::connect(&settings).await?;
        let listener = Listener::start(&settings.redis_url, store.keys().done_channel()).await?;
        let connection = broker::connect(&settings, "rask client").await?;
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &settings).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Client {
            inner: Arc::new(Inner {
                settings,
                connection,
                channel,
                store,
                listener,
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
        self.publish_with(std::iter::once(Ok(message)), options)
            .await?;
        Ok(self.future(key))
    }

    /// Submits one call of `task` per element of `args`, pipelined (no round trip per task), and
    /// returns their futures in input order once the broker has confirmed all of them.
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
        let mut keys = Vec::new();
        let messages = args.into_iter().map(|args| {
            let key = TaskKey::unique(function);
            keys.push(key.clone());
            Ok(TaskMessage::new(key, function, args?))
        });
        self.publish_with(messages, options).await?;
        Ok(keys.into_iter().map(|k| self.future(k)).collect())
    }

    /// A future for the task with `key`, submitted by this or any other process.
    pub fn future<T>(&self, key: TaskKey) -> Future<T> {
        Future::new(self.clone(), key)
    }

    /// Deletes the stored results of `keys`; returns how many existed.
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn release(&self, keys: &[TaskKey]) -> Result<u64> {
        Ok(self.inner.store.delete(keys).await?)
    }

    /// Empties the task queue and deletes every stored result of this deployment (key prefix).
    /// Returns (messages purged, results deleted).
    ///
    /// # Errors
    /// [`crate::Error`] if RabbitMQ or Redis fails.
    pub async fn purge(&self) -> Result<(u32, u64)> {
        let queue = self.inner.settings.queue.as_str();
        let messages = self
            .inner
            .channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        let results = self.inner.store.purge().await?;
        Ok((messages, results))
    }

    /// Stops listening for completions and closes the connection to RabbitMQ (Redis connections
    /// close when the last clone drops). Waits still running on clones fail.
    ///
    /// # Errors
    /// [`crate::Error::Broker`] if the close handshake fails.
    pub async fn close(&self) -> Result<()> {
        self.inner.listener.stop();
        self.inner
            .connection
            .close(200, "client closing".into())
            .await?;
        Ok(())
    }

    /// Publishes `messages` to the task queue, to run now.
    pub(crate) async fn publish(
        &self,
        messages: impl IntoIterator<Item = Result<TaskMessage>>,
    ) -> Result<()> {
        let to = Destination::tasks(&self.inner.settings);
        publish_all(&self.inner.channel, &self.inner.settings, &to, messages).await
    }

    /// Publishes `messages` with `options` applied, through a delay queue if they start later.
    pub(crate) async fn publish_with(
        &self,
        messages: impl IntoIterator<Item = Result<TaskMessage>>,
        options: &TaskOptions,
    ) -> Result<()> {
        let s = &self.inner.settings;
        let to = Destination::after(&self.inner.channel, s, options.delay()).await?;
        let messages = messages
            .into_iter()
            .map(|m| m.map(|m| options.apply(m, s.max_priority)));
        publish_all(&self.inner.channel, s, &to, messages).await
    }

    pub(crate) fn waiter(&self, keys: Vec<TaskKey>) -> Waiter {
        Waiter::new(
            self.inner.store.clone(),
            self.inner.listener.subscribe(),
            keys,
        )
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}
