//! Publishing from a worker. Releasing graph tasks: the writer stores a batch of outcomes and
//! runs the release script in one pipeline (`Store::store_and_release`); this module publishes
//! the dependents that became ready, confirmed, before the batch is acknowledged, from their
//! stored records as they are ([`ReadyTask`]: never decoded and encoded again). No scheduler,
//! no client round trip per graph level. Also the [`ConfirmChannel`] that dead-letter copies and
//! retries are published on.

use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Confirmation, Connection};
use rask_common::broker::{self, Destination};
use rask_common::dependencies::ReadyTask;
use rask_common::{ErrorKind, Pool, TaskKey, TaskMessage};

use crate::pools::Pools;

/// Why a task message could not be published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// No channel could be opened to publish on.
    #[error("opening a publishing channel: {0}")]
    Channel(rask_common::Error),
    /// A task record did not encode back into a message.
    #[error("encoding task {key}: {source}")]
    Encode {
        key: TaskKey,
        source: rask_common::Error,
    },
    /// RabbitMQ failed while publishing.
    #[error("publishing task {key}: {source}")]
    Broker { key: TaskKey, source: lapin::Error },
    /// No queue is bound for the routing key.
    #[error("task {0} could not be routed")]
    Unroutable(TaskKey),
    /// RabbitMQ refused the task.
    #[error("the broker refused task {0} (nack)")]
    Nacked(TaskKey),
    /// The retry's delay cannot be held by the delay ladder.
    #[error("delaying the retry: {0}")]
    Delay(rask_common::Error),
}

impl PublishError {
    /// Whether publishing the same message again cannot succeed: the broker refused the message
    /// itself (over its `max_message_size`: PRECONDITION_FAILED; no permission to publish to the
    /// exchange; unroutable) or it does not encode. A lost channel and a nack may pass.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            PublishError::Encode { .. } | PublishError::Unroutable(_) => true,
            PublishError::Broker { source, .. } => {
                ErrorKind::of_broker(source) != ErrorKind::Transient
            }
            PublishError::Delay(e) => e.is_permanent(),
            PublishError::Channel(_) | PublishError::Nacked(_) => false,
        }
    }
}

/// A confirm-mode channel the tasks of a worker share for their own publishes (dead-letter
/// copies, retries), reopened on first use after it closed (a channel error closes only it).
pub(crate) struct ConfirmChannel {
    connection: Arc<Connection>,
    channel: tokio::sync::Mutex<Channel>,
}

impl ConfirmChannel {
    /// Opens one on `connection`.
    pub(crate) async fn open(connection: Arc<Connection>) -> rask_common::Result<Self> {
        let channel = confirm_channel(&connection).await?;
        Ok(ConfirmChannel {
            connection,
            channel: tokio::sync::Mutex::new(channel),
        })
    }

    /// The channel, reopened first if it was closed.
    ///
    /// # Errors
    /// [`PublishError::Channel`] if it cannot be reopened (the connection is gone).
    pub(crate) async fn get(&self) -> Result<Channel, PublishError> {
        let mut channel = self.channel.lock().await;
        if !channel.status().connected() {
            *channel = confirm_channel(&self.connection)
                .await
                .map_err(PublishError::Channel)?;
        }
        Ok(channel.clone())
    }
}

/// A new channel of `connection` in confirm mode.
async fn confirm_channel(connection: &Connection) -> rask_common::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes released dependents on a confirm-mode channel of its own.
pub(crate) struct Releaser {
    connection: Arc<Connection>,
    channel: Option<Channel>,
    pools: Arc<Pools>,
}

impl Releaser {
    /// Publishes on a channel of `connection`, opened now and reopened whenever it is closed.
    pub(crate) async fn new(
        connection: Arc<Connection>,
        pools: Arc<Pools>,
    ) -> rask_common::Result<Self> {
        let mut releaser = Releaser {
            connection,
            channel: None,
            pools,
        };
        releaser.channel().await?;
        Ok(releaser)
    }

    /// The publishing channel, (re)opened in confirm mode if it is not open.
    async fn channel(&mut self) -> rask_common::Result<Channel> {
        if !self
            .channel
            .as_ref()
            .is_some_and(|c| c.status().connected())
        {
            self.channel = Some(confirm_channel(&self.connection).await?);
        }
        Ok(self.channel.clone().expect("just opened"))
    }

    /// A handle publishing on the current channel (reopened first if it was closed).
    ///
    /// # Errors
    /// [`PublishError::Channel`] if no channel can be opened.
    pub(crate) async fn publisher(&mut self) -> Result<Publisher, PublishError> {
        let channel = self.channel().await.map_err(PublishError::Channel)?;
        Ok(Publisher {
            connection: self.connection.clone(),
            channel,
            pools: self.pools.clone(),
        })
    }
}

/// Publishes ready dependents on one channel; owned, so a batch can settle in its own task.
pub(crate) struct Publisher {
    connection: Arc<Connection>,
    channel: Channel,
    pools: Arc<Pools>,
}

impl Publisher {
    /// Publishes the dependents `ready` to run, all at once (confirmed); returns those that were
    /// not confirmed, each with why. A message the broker refuses closes the channel, which
    /// fails the others in flight with it: [`Publisher::publish_alone`] tells whose fault it is.
    pub(crate) async fn publish(&self, ready: Vec<ReadyTask>) -> Vec<(ReadyTask, PublishError)> {
        // Each dependent to its own pool's queues (one destination per pool in the batch).
        let mut destinations: Vec<(Option<&Pool>, Destination)> = Vec::new();
        for message in &ready {
            let pool = message.pool.as_ref();
            if !destinations.iter().any(|(p, _)| *p == pool) {
                let to = Destination::tasks(&self.pools.settings_for(pool));
                destinations.push((pool, to));
            }
        }
        let publishes = ready.iter().map(|message| {
            let pool = message.pool.as_ref();
            let (_, to) = destinations
                .iter()
                .find(|(p, _)| *p == pool)
                .expect("a destination per pool");
            publish_ready(&self.channel, to, message)
        });
        let results = futures::future::join_all(publishes).await;
        ready
            .into_iter()
            .zip(results)
            .filter_map(|(message, result)| result.err().map(|e| (message, e)))
            .collect()
    }

    /// Publishes `message` alone (confirmed), on the channel if it is open, else on a new one,
    /// so that an error is about `message` itself.
    ///
    /// # Errors
    /// [`PublishError`] if it is not confirmed.
    pub(crate) async fn publish_alone(&mut self, message: &ReadyTask) -> Result<(), PublishError> {
        if !self.channel.status().connected() {
            self.channel = confirm_channel(&self.connection)
                .await
                .map_err(PublishError::Channel)?;
        }
        let to = Destination::tasks(&self.pools.settings_for(message.pool.as_ref()));
        publish_ready(&self.channel, &to, message).await
    }
}

/// Publishes `message` to `to` and waits for the broker's confirmation.
pub(crate) async fn publish(
    channel: &Channel,
    to: &Destination,
    message: &TaskMessage,
) -> Result<(), PublishError> {
    let key = || message.key.clone();
    let body = message
        .encode()
        .map_err(|source| PublishError::Encode { key: key(), source })?;
    let confirm = broker::publish_task(channel, to, message, &body).await;
    confirmed(&message.key, confirm).await
}

/// Publishes the released task `ready` to `to` from its stored body and waits for the
/// broker's confirmation.
pub(crate) async fn publish_ready(
    channel: &Channel,
    to: &Destination,
    ready: &ReadyTask,
) -> Result<(), PublishError> {
    confirmed(&ready.key, broker::publish_ready(channel, to, ready).await).await
}

/// Waits for the broker's confirmation of the publish of task `key`.
async fn confirmed(
    key: &TaskKey,
    confirm: rask_common::Result<lapin::PublisherConfirm>,
) -> Result<(), PublishError> {
    let key = || key.clone();
    let failed = |source| PublishError::Broker { key: key(), source };
    let confirm = confirm.map_err(|e| match e {
        rask_common::Error::Broker(source) => PublishError::Broker { key: key(), source },
        source => PublishError::Encode { key: key(), source },
    })?;
    match confirm.await.map_err(failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(key())),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked(key())),
    }
}
