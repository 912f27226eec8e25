//! Releasing graph tasks: after a batch of outcomes is stored, mark them available to their
//! dependents (one atomic script) and publish the dependents that became ready, confirmed,
//! before the batch is acknowledged. No scheduler and no client round trip per graph level.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection};
use rask_common::{broker, Settings, Store, TaskKey, TaskMessage};

/// First and largest pause between attempts to run the release script.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

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
}

/// Releases dependents and publishes them on a confirm-mode channel of its own.
pub(crate) struct Releaser {
    store: Store,
    connection: Arc<Connection>,
    channel: Option<Channel>,
    settings: Settings,
}

impl Releaser {
    /// Publishes on a channel of `connection`, opened now and reopened whenever it is closed.
    pub(crate) async fn new(
        store: Store,
        connection: Arc<Connection>,
        settings: Settings,
    ) -> rask_common::Result<Self> {
        let mut releaser = Releaser {
            store,
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
            let channel = self.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            self.channel = Some(channel);
        }
        Ok(self.channel.clone().expect("just opened"))
    }

    /// Releases the dependents of `stored` (retrying Redis until it answers) and publishes the
    /// ready ones. `Err` says a publish was not confirmed: the caller must not acknowledge the
    /// batch, so that its redelivery releases (and publishes) the dependents again.
    pub(crate) async fn release(&mut self, stored: &[TaskKey]) -> Result<usize, PublishError> {
        let ready = self.release_with_retry(stored).await;
        let count = ready.len();
        if count == 0 {
            return Ok(0);
        }
        let channel = self.channel().await.map_err(PublishError::Channel)?;
        let publishes = ready
            .iter()
            .map(|message| publish(&channel, &self.settings, message));
        for result in futures::future::join_all(publishes).await {
            result?;
        }
        Ok(count)
    }

    async fn release_with_retry(&self, stored: &[TaskKey]) -> Vec<TaskMessage> {
        let mut pause = BACKOFF.0;
        loop {
            match self.store.release_dependents(stored).await {
                Ok(ready) => return ready,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "releasing dependents failed");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF.1);
                }
            }
        }
    }
}

/// Publishes `message` to the task queue and waits for the broker's confirmation.
async fn publish(
    channel: &Channel,
    s: &Settings,
    message: &TaskMessage,
) -> Result<(), PublishError> {
    let key = || message.key.clone();
    let body = message
        .encode()
        .map_err(|source| PublishError::Encode { key: key(), source })?;
    let failed = |source| PublishError::Broker { key: key(), source };
    let confirm = channel
        .basic_publish(
            s.exchange.as_str().into(),
            s.queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            broker::task_properties(message.key.as_str(), &message.function),
        )
        .await
        .map_err(failed)?;
    match confirm.await.map_err(failed)? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(key())),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked(key())),
    }
}
