//! Publishing from a worker. Releasing graph tasks: the writer stores a batch of outcomes and
//! runs the release script in one pipeline (`Store::store_and_release`); this module publishes
//! the dependents that became ready, confirmed, before the batch is acknowledged. No scheduler,
//! no client round trip per graph level. Also the [`ConfirmChannel`] that dead-letter copies and
//! retries are published on.

use std::sync::Arc;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Confirmation, Connection};
use rask_common::broker::{self, Destination};
use rask_common::{Settings, TaskKey, TaskMessage};

/// Why ready dependents could not be published (the batch is requeued, not acknowledged).
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
    settings: Settings,
}

impl Releaser {
    /// Publishes on a channel of `connection`, opened now and reopened whenever it is closed.
    pub(crate) async fn new(
        connection: Arc<Connection>,
        settings: Settings,
    ) -> rask_common::Result<Self> {
        let mut releaser = Releaser {
            connection,
            channel: None,
            settings,
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
            channel,
            settings: self.settings.clone(),
        })
    }
}

/// Publishes ready dependents on one channel; owned, so a batch can settle in its own task.
pub(crate) struct Publisher {
    channel: Channel,
    settings: Settings,
}

impl Publisher {
    /// Publishes the dependents `ready` to run (confirmed); returns how many.
    ///
    /// # Errors
    /// [`PublishError`] for the first that was not confirmed: acknowledge nothing then.
    pub(crate) async fn publish(&self, ready: &[TaskMessage]) -> Result<usize, PublishError> {
        let tasks = Destination::tasks(&self.settings);
        let publishes = ready
            .iter()
            .map(|message| publish(&self.channel, &tasks, message));
        for result in futures::future::join_all(publishes).await {
            result?;
        }
        Ok(ready.len())
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
    let failed = |source| PublishError::Broker { key: key(), source };
    let confirm = broker::publish_task(channel, to, message, &body)
        .await
        .map_err(|e| match e {
            rask_common::Error::Broker(source) => PublishError::Broker { key: key(), source },
            source => PublishError::Encode { key: key(), source },
        })?;
    match confirm.await.map_err(failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(key())),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked(key())),
    }
}
