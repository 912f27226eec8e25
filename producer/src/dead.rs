//! The dead-letter queue, for operators: [`Client::dead_letters`] lists what is in it and
//! [`Client::requeue_dead_letters`] replays it into the task queue (`rask dead list` and
//! `rask dead requeue`).
//!
//! Both read the queue with `basic.get` on a connection of their own and leave every message
//! they do not consume unacknowledged until they close it, so the broker puts it back where it
//! was: listing changes nothing, and nothing is lost if the command dies half-way.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use rask_common::broker::{self, Destination};
use rask_common::message::REASON_HEADER;
use rask_common::{FailureKind, Outcome, TaskKey, TaskMessage};

use crate::client::Client;
use crate::error::{Error, Result};

/// Header naming the worker that dead-lettered a message.
const WORKER_HEADER: &str = "x-rask-worker";

/// One message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The task's key, if the message has a readable one.
    pub key: Option<TaskKey>,
    /// The function it calls, if readable.
    pub function: Option<String>,
    /// Why it was dead-lettered: the worker's reason, or the broker's (`rejected`, `expired`).
    pub reason: String,
    /// The worker that dead-lettered it, if a worker did.
    pub worker: Option<String>,
    /// The message body as published.
    pub body: Vec<u8>,
}

/// What [`Client::requeue_dead_letters`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requeued {
    /// Messages published to the task queue again (and removed from the dead-letter queue).
    pub requeued: usize,
    /// Messages looked at and left in the dead-letter queue (not matching the key asked for).
    pub left: usize,
}

impl Client {
    /// The first `limit` messages of the dead-letter queue, oldest first, left in place.
    ///
    /// # Errors
    /// [`Error::Broker`] / [`Error::Common`] if RabbitMQ cannot be reached.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let connection = broker::connect(self.settings(), "rask dead letters").await?;
        let channel = connection.create_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            match get(&channel, self).await? {
                Some(message) => letters.push(dead_letter(&message)),
                None => break,
            }
        }
        // Closing returns every message got (and not acknowledged) to the queue.
        connection.close(200, "listed".into()).await?;
        Ok(letters)
    }

    /// Publishes up to `limit` dead-lettered messages to the task queue again (only the one of
    /// task `only`, when given), removing each from the dead-letter queue once the broker has
    /// confirmed its copy. The stored `BadMessage`/`DeliveryLimit` failure of a requeued task is
    /// deleted first, so that the task's next run can store its outcome (results are write-once).
    ///
    /// # Errors
    /// [`Error::Broker`] / [`Error::Store`] if RabbitMQ or Redis fails; messages not yet
    /// confirmed stay in the dead-letter queue.
    pub async fn requeue_dead_letters(
        &self,
        limit: usize,
        only: Option<&TaskKey>,
    ) -> Result<Requeued> {
        let connection = broker::connect(self.settings(), "rask dead letters").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tasks = Destination::tasks(self.settings());
        let mut done = Requeued::default();
        // Look at no more than the messages there now: a requeued message that fails again
        // comes back to the end of the queue, and must not be met (and requeued) twice.
        let present = depth(&channel, &self.settings().dead_letter_queue).await?;
        for _ in 0..present {
            if done.requeued >= limit {
                break;
            }
            let Some(message) = get(&channel, self).await? else {
                break;
            };
            let letter = dead_letter(&message);
            if only.is_some_and(|key| letter.key.as_ref() != Some(key)) {
                done.left += 1;
                continue;
            }
            if let Some(key) = &letter.key {
                self.forget_dead_outcome(key).await?;
            }
            let confirm = channel
                .basic_publish(
                    tasks.exchange().into(),
                    tasks.routing_key().into(),
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &letter.body,
                    without_dead_letter_headers(&message.delivery.properties),
                )
                .await?
                .await?;
            if !matches!(confirm, Confirmation::Ack(None)) {
                return Err(Error::Unroutable {
                    key: letter.key.unwrap_or_else(|| TaskKey::unique("unkeyed")),
                    exchange: tasks.exchange().to_owned(),
                    routing_key: tasks.routing_key().to_owned(),
                });
            }
            message.delivery.ack(BasicAckOptions::default()).await?;
            done.requeued += 1;
        }
        connection.close(200, "requeued".into()).await?;
        Ok(done)
    }

    /// Deletes `key`'s stored outcome if it is the failure that dead-lettering stored.
    async fn forget_dead_outcome(&self, key: &TaskKey) -> Result<()> {
        let stored = self.store().get_outcomes(std::slice::from_ref(key)).await?;
        let dead = stored
            .into_iter()
            .flatten()
            .filter_map(|bytes| Outcome::decode(&bytes).ok())
            .any(|outcome| {
                matches!(outcome, Outcome::Failure(f)
                    if matches!(f.kind, FailureKind::BadMessage | FailureKind::DeliveryLimit))
            });
        if dead {
            self.store().delete(std::slice::from_ref(key)).await?;
        }
        Ok(())
    }
}

/// How many messages `queue` holds (ready ones, not those delivered and unacknowledged).
async fn depth(channel: &Channel, queue: &str) -> Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// The next message of the dead-letter queue, unacknowledged.
async fn get(channel: &Channel, client: &Client) -> Result<Option<BasicGetMessage>> {
    Ok(channel
        .basic_get(
            client.settings().dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await?)
}

/// What a dead-lettered message says about itself.
fn dead_letter(message: &BasicGetMessage) -> DeadLetter {
    let delivery = &message.delivery;
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        _ => None,
    };
    let (key, function) = match TaskMessage::decode(&delivery.data) {
        Ok(m) => (Some(m.key), Some(m.function)),
        Err(undecodable) => (undecodable.key, undecodable.function),
    };
    let reason = text(REASON_HEADER).unwrap_or_else(|| match broker_reason(&headers) {
        Some(why) => format!("dead-lettered by the broker: {why}"),
        None => "no reason recorded".to_owned(),
    });
    DeadLetter {
        key,
        function,
        reason,
        worker: text(WORKER_HEADER),
        body: delivery.data.clone(),
    }
}

/// The reason of the broker's own dead-lettering (`x-death`), e.g. `rejected`.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    deaths.as_slice().iter().find_map(|death| match death {
        AMQPValue::FieldTable(t) => match t.inner().get("reason") {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    })
}

/// The message's properties without the headers dead-lettering added (and without a quorum
/// queue's delivery count, which belongs to the delivery, not the task).
fn without_dead_letter_headers(properties: &BasicProperties) -> BasicProperties {
    let mut kept = FieldTable::default();
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            if !name.as_str().starts_with("x-rask-")
                && !name.as_str().starts_with("x-death")
                && !name.as_str().starts_with("x-first-death")
                && !name.as_str().starts_with("x-last-death")
                && name.as_str() != broker::DELIVERY_COUNT_HEADER
            {
                kept.insert(name.clone(), value.clone());
            }
        }
    }
    properties.clone().with_headers(kept)
}

#[cfg(test)]
mod tests {
    use lapin::types::ShortString;
    use rask_common::signing::SIGNATURE_HEADER;

    use super::*;

    #[test]
    fn requeueing_keeps_the_signature_and_drops_dead_letter_headers() {
        let mut headers = FieldTable::default();
        for name in [SIGNATURE_HEADER, REASON_HEADER, WORKER_HEADER, "x-death"] {
            headers.insert(ShortString::from(name), AMQPValue::LongString("v".into()));
        }
        let properties = BasicProperties::default()
            .with_message_id("inc-1".into())
            .with_headers(headers);
        let kept = without_dead_letter_headers(&properties);
        let names: Vec<&str> = kept
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names, [SIGNATURE_HEADER]);
        assert_eq!(kept.message_id(), properties.message_id());
    }
}
