//! Publishing task messages: pipelined on one confirm-mode channel, with a window of unconfirmed
//! publishes, so submitting many tasks costs no round trip per task.
//!
//! lapin resolves a publish once its frames are written to the socket and its confirm once the
//! broker acknowledges it; keeping a whole window of both in flight lets many publishes share
//! each socket write and each confirm (RabbitMQ confirms in batches with `multiple`).

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use rask_common::{broker, Settings, TaskKey, TaskMessage};

use crate::error::{Error, Result};

/// Publishes `messages` in order, keeping at most `settings.publish_window` unconfirmed, and
/// returns once every one is confirmed by the broker (persistent, routed to the task queue).
///
/// # Errors
/// [`Error::Nacked`], [`Error::Unroutable`], or [`Error::Broker`] for the first that failed.
pub(crate) async fn publish_all(
    channel: &Channel,
    settings: &Settings,
    messages: impl IntoIterator<Item = Result<TaskMessage>>,
) -> Result<()> {
    let mut in_flight = FuturesOrdered::new();
    for message in messages {
        let message = message?;
        let body = message.encode()?;
        in_flight.push_back(async move {
            let confirm = channel
                .basic_publish(
                    settings.exchange.as_str().into(),
                    settings.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    broker::task_properties(message.key.as_str(), &message.function),
                )
                .await?;
            check(settings, message.key, confirm.await?)
        });
        if in_flight.len() >= settings.publish_window {
            in_flight.next().await.expect("the window is not empty")?;
        }
    }
    while let Some(published) = in_flight.next().await {
        published?;
    }
    Ok(())
}

fn check(settings: &Settings, key: TaskKey, confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
            key,
            exchange: settings.exchange.clone(),
            routing_key: settings.queue.clone(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Nacked(key)),
    }
}
