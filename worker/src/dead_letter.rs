//! Dead-lettering messages a worker will not run (not a task, too large, past the delivery
//! limit): a copy goes to the dead-letter exchange with the reason in the `x-rask-reason` header,
//! then the original is acknowledged.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, ShortString};
use rask_common::message::REASON_HEADER;
use rask_common::Settings;

use crate::release::ConfirmChannel;

/// Publishes a copy of `delivery` with `reason` to the dead-letter exchange and waits for the
/// broker's confirm; returns whether it was confirmed (routed and stored). The original is left
/// for the caller to settle.
pub(crate) async fn copy_to_dead_letters(
    channel: &ConfirmChannel,
    settings: &Settings,
    worker: &str,
    delivery: &Delivery,
    reason: &str,
) -> bool {
    tracing::warn!(
        reason,
        bytes = delivery.data.len(),
        "dead-lettering a message"
    );
    let channel = match channel.get().await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::warn!(error = %e, "dead-letter copy not published");
            return false;
        }
    };
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        ShortString::from("x-rask-worker"),
        AMQPValue::LongString(worker.into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let published = async {
        channel
            .basic_publish(
                settings.dead_letter_exchange.as_str().into(),
                settings.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await
    }
    .await;
    match published {
        Ok(lapin::Confirmation::Ack(None)) => true,
        other => {
            tracing::warn!(?other, "dead-letter copy not confirmed");
            false
        }
    }
}

/// Settles an undecodable delivery whose key could not be read: acked once its copy is in the
/// dead-letter queue, else rejected without requeue, which dead-letters it through the queue's
/// own dead-letter exchange (without the reason).
pub(crate) async fn settle_unkeyed(delivery: &Delivery, copied: bool) {
    let settled = if copied {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        delivery.reject(BasicRejectOptions { requeue: false }).await
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "could not settle a dead-lettered message; it will be redelivered");
    }
}
