//! RabbitMQ: connecting, and declaring the topology every producer and worker relies on.
//!
//! Topology (names from [`Settings`]): a durable direct exchange routes tasks to a durable task
//! queue (routing key = queue name; a priority queue up to `max_priority`) whose rejected
//! messages go to a durable fanout dead-letter exchange and its durable dead-letter queue.
//!
//! Delayed tasks (countdown, eta, retries) wait in a delay queue per delay,
//! `{queue}.delay.{ms}ms`, whose messages expire after that delay (`x-message-ttl`) into the
//! task exchange with the task queue's routing key. A delay queue deletes itself a minute after
//! its last declaration's messages could have expired (`x-expires`); every publisher declares it
//! again before publishing to it.
//!
//! Connections use TLS for `amqps://` URLs, trusting `tls_ca_file` (in addition to the system's
//! roots) and presenting `tls_cert_file`/`tls_key_file` when set. Every task message goes out
//! through [`publish_task`], which signs it when `signing_keys` are set ([`crate::signing`]).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::{Error, Result};
use crate::settings::{mask_url, Settings};
use crate::signing::Signer;
use crate::tls::TlsFiles;

/// The MIME type of every rask message body.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// The frame size asked for when the URL names none (`?frame_max=`): RabbitMQ's default,
/// 128 KiB, which the broker would impose anyway. Naming it up front matters for memory: lapin
/// sizes its two I/O buffers (32 frames each) from the URL, and otherwise grows them zero-filled
/// after the handshake, which keeps 8 MiB resident per connection (an idle worker was 24 MiB).
const FRAME_MAX: u32 = 128 * 1024;

/// Opens a connection to RabbitMQ, named after `role` in the management UI; over TLS for an
/// `amqps://` URL, with the CA and client certificate of the settings.
///
/// # Errors
/// [`crate::Error::Broker`] if the broker cannot be reached, refuses the login or the TLS
/// handshake fails; [`crate::Error::TlsFile`] if a TLS file of the settings cannot be read.
pub async fn connect(settings: &Settings, role: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(role.into());
    let url = settings.amqp_url.as_str();
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| Error::Settings(format!("amqp_url = {}: {e}", mask_url(url))))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    if !url.starts_with("amqps://") {
        return Ok(Connection::connect_uri(uri, properties).await?);
    }
    let files = TlsFiles::read(settings)?;
    let cert_chain = match files.ca {
        Some(pem) => Some(String::from_utf8(pem).map_err(|_| Error::TlsFile {
            setting: "tls_ca_file",
            path: settings.tls_ca_file.clone().unwrap_or_default(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not PEM text"),
        })?),
        None => None,
    };
    let config = OwnedTLSConfig {
        identity: files
            .identity
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
        cert_chain,
    };
    let runtime = lapin::runtime::default_runtime()?;
    Ok(Connection::connect_uri_with_config(uri, properties, config, runtime).await?)
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
    if settings.max_priority > 0 {
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(settings.max_priority),
        );
    }
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

/// Where a task message goes: the task queue, or a delay queue in front of it; and how it is
/// signed there (the signer of the settings it was made from, if signing is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    exchange: String,
    routing_key: String,
    signer: Option<Signer>,
}

impl Destination {
    /// The task queue, through the task exchange.
    pub fn tasks(settings: &Settings) -> Self {
        Destination {
            exchange: settings.exchange.clone(),
            routing_key: settings.queue.clone(),
            signer: Signer::from_settings(settings),
        }
    }

    /// The task queue after `delay` (through a delay queue when it is not zero), declaring the
    /// delay queue first.
    ///
    /// # Errors
    /// [`crate::Error::Broker`] if RabbitMQ refuses the declaration.
    pub async fn after(channel: &Channel, settings: &Settings, delay: Duration) -> Result<Self> {
        let ms = crate::retry::duration_ms(delay);
        if ms == 0 {
            return Ok(Destination::tasks(settings));
        }
        let name = format!("{}.delay.{ms}ms", settings.queue);
        let mut args = FieldTable::default();
        let ttl = i64::try_from(ms).unwrap_or(i64::MAX);
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(ttl),
        );
        args.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(ttl.saturating_add(60_000)),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(settings.exchange.as_str().into()),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(settings.queue.as_str().into()),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.as_str().into(), durable, args)
            .await?;
        Ok(Destination {
            exchange: String::new(),
            routing_key: name,
            signer: Signer::from_settings(settings),
        })
    }

    /// The exchange published to (`""`, the default exchange, for a delay queue).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The signer messages published here are signed with (`None`: signing is off).
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }
}

/// Publishes an encoded task message (`body` of `message`) to `to` with the `mandatory` flag,
/// so that an unroutable task comes back instead of vanishing, signed when `to` has a signer.
/// Resolves once the frames are written; await the returned confirm for the broker's answer.
///
/// # Errors
/// [`crate::Error::Broker`] if the channel is closed.
pub async fn publish_task(
    channel: &Channel,
    to: &Destination,
    message: &crate::TaskMessage,
    body: &[u8],
) -> Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            to.exchange.as_str().into(),
            to.routing_key.as_str().into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            signed_properties(message, to, body),
        )
        .await?)
}

/// [`task_properties`], with the signature of `body` when `to` signs.
fn signed_properties(
    message: &crate::TaskMessage,
    to: &Destination,
    body: &[u8],
) -> BasicProperties {
    let properties = task_properties(message);
    match &to.signer {
        Some(signer) => signer.sign_properties(properties, body),
        None => properties,
    }
}

/// Properties of a task message: persistent, typed, identified by its key, with its priority.
pub fn task_properties(message: &crate::TaskMessage) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(message.key.as_str().into())
        .with_type(message.function.as_str().into());
    if message.priority > 0 {
        properties.with_priority(message.priority)
    } else {
        properties
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SIGNATURE_HEADER;
    use crate::{TaskKey, TaskMessage};

    #[test]
    fn destinations_sign_when_the_settings_have_keys() {
        let message = TaskMessage::new(TaskKey::new("inc-1").unwrap(), "inc", vec![0x91, 0x01]);
        let body = message.encode().unwrap();
        let plain = Destination::tasks(&Settings::default());
        assert!(plain.signer().is_none());
        assert!(signed_properties(&message, &plain, &body)
            .headers()
            .is_none());

        let keyed = Settings {
            signing_keys: vec!["0123456789abcdef0123".into()],
            ..Settings::default()
        };
        let to = Destination::tasks(&keyed);
        let properties = signed_properties(&message, &to, &body);
        let headers = properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key(SIGNATURE_HEADER));
        let signer = to.signer().unwrap();
        assert_eq!(signer.verify_properties(&properties, &body), Ok(()));
        assert_eq!(properties.message_id().as_ref().unwrap().as_str(), "inc-1");
        assert!(!format!("{to:?}").contains("0123456789abcdef"));
    }
}
