//! Publishing task messages: pipelined on one confirm-mode channel, with a window of unconfirmed
//! publishes, so submitting many tasks costs no round trip per task.
//!
//! lapin resolves a publish once its frames are written to the socket and its confirm once the
//! broker acknowledges it; keeping a whole window of both in flight lets many publishes share
//! each socket write and each confirm (RabbitMQ confirms in batches with `multiple`).

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::{Channel, Confirmation};
use rask_common::broker::{self, Destination};
use rask_common::{Settings, TaskKey, TaskMessage};

use crate::error::{Error, Result};

/// Most bytes of task messages kept unconfirmed at once, whatever the window: bounds the
/// client's memory when tasks carry large arguments.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Publishes `messages` in order to `to`, keeping at most `settings.publish_window`
/// unconfirmed, and returns once every one is confirmed by the broker (persistent, routed).
/// Messages are taken from the iterator only as the window allows, so memory stays bounded
/// however many there are.
///
/// # Errors
/// [`Error::TooLarge`] for a message over `max_message_bytes` (before publishing it);
/// [`Error::Nacked`], [`Error::Unroutable`], or [`Error::Broker`] for the first that failed.
pub(crate) async fn publish_all(
    channel: &Channel,
    settings: &Settings,
    to: &Destination,
    messages: impl IntoIterator<Item = Result<TaskMessage>>,
) -> Result<()> {
    let mut in_flight = FuturesOrdered::new();
    let mut in_flight_bytes = 0;
    for message in messages {
        let message = message?;
        let body = message.encode()?;
        if body.len() > settings.max_message_bytes {
            return Err(Error::TooLarge {
                key: message.key,
                bytes: body.len(),
                max: settings.max_message_bytes,
            });
        }
        in_flight_bytes += body.len();
        in_flight.push_back(async move {
            let confirm = broker::publish_task(channel, to, &message, &body).await?;
            check(to, message.key, confirm.await?).map(|()| body.len())
        });
        while in_flight.len() >= settings.publish_window || in_flight_bytes > MAX_IN_FLIGHT_BYTES {
            in_flight_bytes -= in_flight.next().await.expect("the window is not empty")?;
        }
    }
    while let Some(published) = in_flight.next().await {
        published?;
    }
    Ok(())
}

fn check(to: &Destination, key: TaskKey, confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
            key,
            exchange: to.exchange().to_owned(),
            routing_key: to.routing_key().to_owned(),
        }),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Nacked(key)),
    }
}
