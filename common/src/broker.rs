//! RabbitMQ: connecting, and declaring the topology every producer and worker relies on.
//!
//! Topology (names from [`Settings`]): a durable direct exchange routes tasks to a durable task
//! queue (routing key = queue name) whose rejected messages go to a durable fanout dead-letter
//! exchange and its durable dead-letter queue.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::Result;
use crate::settings::Settings;

/// The MIME type of every rask message body.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// Opens a connection to RabbitMQ, named after `role` in the management UI.
///
/// # Errors
/// [`crate::Error::Broker`] if the broker cannot be reached or refuses the login.
pub async fn connect(settings: &Settings, role: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(role.into());
    Ok(Connection::connect(&settings.amqp_url, properties).await?)
}

/// Declares the exchanges and queues (idempotent: safe from every process at every start).
///
/// # Errors
/// [`crate::Error::Broker`] if RabbitMQ refuses, e.g. because a queue exists with other arguments.
pub async fn declare_topology(channel: &Channel, settings: &Settings) -> Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            settings.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            queue,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(settings.dead_letter_exchange.as_str().into()),
    );
    channel
        .queue_declare(settings.queue.as_str().into(), queue, args)
        .await?;
    channel
        .queue_bind(
            settings.queue.as_str().into(),
            settings.exchange.as_str().into(),
            settings.queue.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Publishes an encoded task message (`body` of `message`) to the task exchange with the
/// `mandatory` flag, so that an unroutable task comes back instead of vanishing. Resolves once the
/// frames are written; await the returned confirm for the broker's answer.
///
/// # Errors
/// [`crate::Error::Broker`] if the channel is closed.
pub async fn publish_task(
    channel: &Channel,
    settings: &Settings,
    message: &crate::TaskMessage,
    body: &[u8],
) -> Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            settings.exchange.as_str().into(),
            settings.queue.as_str().into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            task_properties(message.key.as_str(), &message.function),
        )
        .await?)
}

/// Properties of a task message: persistent, typed, identified by its key.
pub fn task_properties(key: &str, function: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(key.into())
        .with_type(function.into())
}
