//! Sending a delivered task back to wait in the broker: its message (a retry, a hand-off to a
//! worker with the resources, a task over a limit) is published through the delay ladder,
//! confirmed, and only then is the delivery acknowledged; if publishing fails, the delivery is
//! requeued instead, so the task is never lost between the two.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use rask_common::broker::Destination;
use rask_common::{Settings, TaskMessage};

use crate::release::{self, ConfirmChannel, PublishError};
use crate::ticket::Ticket;

/// Publishes `message` to the delay queue of `settings` (its pool's) for `delay`, confirmed,
/// then acknowledges `delivery`; requeues `delivery` instead if publishing fails (logged with
/// `what`, e.g. "schedule a retry"). Returns whether `message` was published.
pub(crate) async fn send_back(
    confirms: &ConfirmChannel,
    settings: &Settings,
    message: &TaskMessage,
    delay: Duration,
    delivery: &Delivery,
    what: &str,
) -> bool {
    let published = publish_back(confirms, settings, message, delay).await;
    let settled = match &published {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(e) => {
            tracing::warn!(key = %message.key, error = %e, "cannot {what}; requeueing the task");
            delivery.reject(BasicRejectOptions { requeue: true }).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(key = %message.key, error = %e, "could not settle a task sent back to wait; it will be redelivered");
    }
    published.is_ok()
}

/// [`send_back`] for a task settled by `ticket` (its delivery, or the deliveries that released
/// it when it ran here as their continuation).
pub(crate) async fn send_back_ticket(
    confirms: &ConfirmChannel,
    settings: &Settings,
    message: &TaskMessage,
    delay: Duration,
    ticket: Ticket,
    what: &str,
) -> bool {
    if let Ticket::Delivery(delivery) = &ticket {
        return send_back(confirms, settings, message, delay, delivery, what).await;
    }
    let published = publish_back(confirms, settings, message, delay).await;
    if let Err(e) = &published {
        tracing::warn!(key = %message.key, error = %e, "cannot {what}; requeueing the tasks that released it");
    }
    ticket.settle(published.is_err()).await;
    published.is_ok()
}

/// Publishes `message` to the delay queue of `settings` for `delay` and waits for the confirm.
async fn publish_back(
    confirms: &ConfirmChannel,
    settings: &Settings,
    message: &TaskMessage,
    delay: Duration,
) -> Result<(), PublishError> {
    let to = Destination::after(settings, delay).map_err(PublishError::Delay)?;
    let channel = confirms.get().await?;
    release::publish(&channel, &to, message).await
}
