//! RabbitMQ: connecting, and declaring the topology every producer and worker relies on.
//!
//! Topology (names from [`Settings`]): a durable direct exchange routes tasks to a durable task
//! queue (routing key = queue name; a priority queue up to `max_priority`) whose rejected
//! messages go to a durable fanout dead-letter exchange and its durable dead-letter queue. The
//! dead-letter queue is bounded (`dead_letter_max_length`, `dead_letter_max_bytes`), dropping
//! its oldest messages beyond the bound (`x-overflow = drop-head`): a dead-letter copy is never
//! refused, so nothing waits on a full one, and a flood of bad messages cannot grow it until the
//! broker's memory or disk alarm blocks every publisher.
//!
//! Delayed tasks (countdown, eta, retries) wait in the fixed ladder of delay queues of
//! [`crate::delay`], declared with the rest of the topology.
//!
//! With `queue_type = quorum` the task and dead-letter queues are quorum queues (replicated over
//! a cluster's nodes); the task queue then dead-letters at least once. Delay queues stay classic
//! (on the node that first declared them).
//!
//! With `queue_shards > 1` there are several task queues (`{queue}`, `{queue}.shard1`, …), each
//! bound with its own name; a task goes to the shard of its key ([`shard_of`]).
//!
//! A deployment may name several nodes (`amqp_urls`): [`connect`] takes the first that answers,
//! [`connect_from`] the first from a given one, so that a process that lost its node fails over.
//!
//! Connections use TLS for `amqps://` URLs, trusting `tls_ca_file` (in addition to the system's
//! roots) and presenting `tls_cert_file`/`tls_key_file` when set. Every task message goes out
//! through [`publish_task`], which signs it when `signing_keys` are set ([`crate::signing`]).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::error::{Error, ErrorKind, Result};
use crate::refusal::{self, Object};
use crate::settings::{mask_url, QueueType, Settings};
use crate::signing::{MessageKind, Signer};
use crate::tls::TlsFiles;

/// The MIME type of every rask message body.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// How long one attempt to connect to one node of several may take before the next is tried
/// (a node that is down but whose host does not refuse the connection would otherwise hold the
/// attempt for the operating system's TCP timeout, minutes).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to RabbitMQ, named after `role` in the management UI: to the first node of
/// [`Settings::amqp_nodes`] that answers. Over TLS for an `amqps://` URL, with the CA and client
/// certificate of the settings.
///
/// # Errors
/// [`crate::Error::Broker`] if no node can be reached, refuses the login or the TLS handshake
/// fails (the last node's error); [`crate::Error::TlsFile`] if a TLS file of the settings
/// cannot be read.
pub async fn connect(settings: &Settings, role: &str) -> Result<Connection> {
    Ok(connect_from(settings, role, 0).await?.0)
}

/// Like [`connect`], trying the nodes of [`Settings::amqp_nodes`] in turn from the one at
/// `first` (modulo their number), so that a process that lost node `i` fails over with
/// `first = i + 1` and tries the lost node last. Returns the connection and the index of its
/// node. With several nodes each attempt is bounded by a timeout, and failures are logged.
///
/// # Errors
/// As [`connect`]: the error of the last node tried.
pub async fn connect_from(
    settings: &Settings,
    role: &str,
    first: usize,
) -> Result<(Connection, usize)> {
    let nodes = settings.amqp_nodes();
    let mut last = None;
    for offset in 0..nodes.len() {
        let index = (first + offset) % nodes.len();
        let url = nodes[index];
        let attempt = if nodes.len() == 1 {
            connect_url(settings, url, role).await
        } else {
            match tokio::time::timeout(NODE_CONNECT_TIMEOUT, connect_url(settings, url, role)).await
            {
                Ok(connected) => connected,
                Err(_) => Err(Error::Broker(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no AMQP handshake within {NODE_CONNECT_TIMEOUT:?}"),
                )))),
            }
        };
        match attempt {
            Ok(connection) => {
                if offset > 0 {
                    tracing::info!(node = %mask_url(url), role, "connected to another RabbitMQ node");
                }
                return Ok((connection, index));
            }
            Err(e) if nodes.len() > 1 && e.kind() == ErrorKind::Transient => {
                tracing::warn!(node = %mask_url(url), error = %e, "RabbitMQ node unreachable; trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("amqp_nodes is never empty"))
}

/// Opens a connection to the node at `url` (see [`connect`]).
/// The frame size asked for when the URL names none (`?frame_max=`): RabbitMQ's default,
/// 128 KiB, which the broker would impose anyway. Naming it up front matters for memory: lapin
/// sizes its two I/O buffers (32 frames each) from the URL, and otherwise grows them zero-filled
/// after the handshake, which keeps 8 MiB resident per connection (an idle worker was 24 MiB).
const FRAME_MAX: u32 = 128 * 1024;

async fn connect_url(settings: &Settings, url: &str, role: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(role.into());
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| Error::Settings(format!("amqp_url = {}: {e}", mask_url(url))))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let refused = |e| refusal::login(e, &mask_url(url));
    if !url.starts_with("amqps://") {
        return Connection::connect_uri(uri, properties)
            .await
            .map_err(refused);
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
    Connection::connect_uri_with_config(uri, properties, config, runtime)
        .await
        .map_err(refused)
}

/// Declares the exchanges and queues (idempotent: safe from every process at every start) on a
/// new channel of `connection`, and returns that channel for the caller to go on with; the delay
/// ladder is declared on a channel of its own ([`crate::delay::declare`]).
///
/// # Errors
/// [`crate::Error::BrokerRefused`] if RabbitMQ refuses, e.g. because a queue exists with other
/// arguments (the message names the settings that disagree); [`crate::Error::Broker`] if the
/// connection is lost.
pub async fn declare_topology(connection: &Connection, settings: &Settings) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    declare_on(&channel, settings).await?;
    crate::delay::declare(connection, settings).await?;
    Ok(channel)
}

async fn declare_on(channel: &Channel, settings: &Settings) -> Result<()> {
    let dead_letter_exchange = Object::Exchange {
        name: &settings.dead_letter_exchange,
        setting: "dead_letter_exchange",
    };
    let exchange = Object::Exchange {
        name: &settings.exchange,
        setting: "exchange",
    };
    let dead_letter_queue = Object::Queue {
        name: &settings.dead_letter_queue,
        setting: "dead_letter_queue",
    };
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
        .await
        .map_err(|e| refusal::declaring(e, dead_letter_exchange, settings))?;
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| refusal::declaring(e, exchange, settings))?;
    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            queue,
            typed(settings, dead_letter_arguments(settings)),
        )
        .await
        .map_err(|e| refusal::declaring(e, dead_letter_queue, settings))?;
    channel
        .queue_bind(
            settings.dead_letter_queue.as_str().into(),
            settings.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            refusal::declaring(
                e,
                Object::Binding {
                    queue: &settings.dead_letter_queue,
                    exchange: &settings.dead_letter_exchange,
                },
                settings,
            )
        })?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(settings.dead_letter_exchange.as_str().into()),
    );
    if settings.queue_type == QueueType::Quorum {
        // Dead letters are moved with confirms inside the cluster, not dropped when the
        // dead-letter queue's leader is briefly unavailable; at-least-once needs
        // `reject-publish` overflow (there is no length limit, so it never triggers).
        args.insert(
            ShortString::from("x-dead-letter-strategy"),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    // Validation rules out priorities on quorum queues.
    if settings.max_priority > 0 && settings.queue_type == QueueType::Classic {
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(settings.max_priority),
        );
    }
    let args = typed(settings, args);
    for shard in settings.task_queues() {
        channel
            .queue_declare(shard.as_str().into(), queue, args.clone())
            .await
            .map_err(|e| {
                refusal::declaring(
                    e,
                    Object::Queue {
                        name: &shard,
                        setting: "queue",
                    },
                    settings,
                )
            })?;
        channel
            .queue_bind(
                shard.as_str().into(),
                settings.exchange.as_str().into(),
                shard.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                refusal::declaring(
                    e,
                    Object::Binding {
                        queue: &shard,
                        exchange: &settings.exchange,
                    },
                    settings,
                )
            })?;
    }
    Ok(())
}

/// The arguments bounding the dead-letter queue: `x-max-length` and `x-max-length-bytes` from
/// the settings (each left out when 0) and, when either is set, `x-overflow = drop-head`.
fn dead_letter_arguments(settings: &Settings) -> FieldTable {
    let mut args = FieldTable::default();
    let bounds = [
        ("x-max-length", settings.dead_letter_max_length),
        ("x-max-length-bytes", settings.dead_letter_max_bytes),
    ];
    for (name, bound) in bounds {
        if bound > 0 {
            let bound = i64::try_from(bound).unwrap_or(i64::MAX);
            args.insert(ShortString::from(name), AMQPValue::LongLongInt(bound));
        }
    }
    if !args.inner().is_empty() {
        args.insert(
            ShortString::from("x-overflow"),
            AMQPValue::LongString("drop-head".into()),
        );
    }
    args
}

/// The shard (index into [`Settings::task_queues`]) of the task `key` among `shards`: the
/// 64-bit FNV-1a hash of the key's bytes modulo `shards`, so that any producer, in any
/// language, routes a key to the same shard.
pub fn shard_of(key: &crate::TaskKey, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let hash = key
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // The remainder is below `shards`, a usize.
    (hash % shards as u64) as usize
}

/// `args` with `x-queue-type = quorum` when the settings ask for quorum queues (a classic queue
/// is declared without the argument, as before the setting existed, so that existing queues
/// are declared with the same arguments).
fn typed(settings: &Settings, mut args: FieldTable) -> FieldTable {
    if settings.queue_type == QueueType::Quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

/// The number of earlier deliveries of a message of a quorum queue that ended without an
/// acknowledgement: its `x-delivery-count` header, which the queue sets on redeliveries
/// (absent, `0`, on a first delivery).
pub fn quorum_delivery_count(properties: &BasicProperties) -> u64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get(DELIVERY_COUNT_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => u64::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u64::from(*n),
        _ => 0,
    }
}

/// The header in which quorum queues count a message's earlier deliveries.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Where a task message goes: the task queue, or the delay ladder in front of it; and how it is
/// signed there (the signer of the settings it was made from, if signing is on).
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    exchange: String,
    routing_key: String,
    /// The routing keys of the task queue's shards, when there are several.
    shards: Vec<String>,
    /// The delay headers of the ladder ([`crate::delay`]), for a delayed task.
    delay: Option<FieldTable>,
    signer: Option<Signer>,
}

impl Destination {
    /// The task queue (each task to its shard, when there are several), through the task
    /// exchange.
    pub fn tasks(settings: &Settings) -> Self {
        let shards = settings.task_queues();
        Destination {
            exchange: settings.exchange.clone(),
            routing_key: settings.queue.clone(),
            shards: if shards.len() > 1 { shards } else { Vec::new() },
            delay: None,
            signer: Signer::from_settings(settings),
        }
    }

    /// The task queue after `delay`, rounded up to the millisecond: through the delay ladder
    /// ([`crate::delay`]) when it is not zero, each task still to its shard.
    ///
    /// # Errors
    /// [`crate::Error::DelayTooLong`] for a delay over [`crate::delay::MAX_DELAY`].
    pub fn after(settings: &Settings, delay: Duration) -> Result<Self> {
        let mut destination = Destination::tasks(settings);
        if let Some(ladder) = crate::delay::Ladder::for_delay(settings, delay)? {
            destination.exchange = ladder.exchange;
            destination.delay = Some(ladder.headers);
        }
        Ok(destination)
    }

    /// The exchange published to (the exchange of a delay's highest level, for a delayed task).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key published with (shard 0's, for a sharded task queue).
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The routing key the task `key` is published with: its shard's ([`shard_of`]).
    pub fn routing_key_for(&self, key: &crate::TaskKey) -> &str {
        if self.shards.is_empty() {
            &self.routing_key
        } else {
            &self.shards[shard_of(key, self.shards.len())]
        }
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
    publish_body(
        channel,
        to,
        &message.key,
        signed_properties(message, to, body),
        body,
    )
    .await
}

/// Publishes `body`, the message of task `key`, with `properties` to `to`.
async fn publish_body(
    channel: &Channel,
    to: &Destination,
    key: &crate::TaskKey,
    properties: BasicProperties,
    body: &[u8],
) -> Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            to.exchange.as_str().into(),
            to.routing_key_for(key).into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?)
}

/// [`task_properties`], with the delay headers of `to` and the signature of `body` when `to`
/// signs.
fn signed_properties(
    message: &crate::TaskMessage,
    to: &Destination,
    body: &[u8],
) -> BasicProperties {
    sign(
        task_properties(message),
        message.trace.as_ref(),
        MessageKind::of_task(message),
        to,
        body,
    )
}

/// `properties` with the delay headers of `to`, the trace context `trace` (W3C headers, see
/// [`crate::trace`]) and the signature of `body` (a message of `kind`) when `to` signs.
fn sign(
    mut properties: BasicProperties,
    trace: Option<&crate::trace::TraceContext>,
    kind: MessageKind,
    to: &Destination,
    body: &[u8],
) -> BasicProperties {
    // A message with neither keeps no header table (nothing allocated per task).
    if to.delay.is_some() || trace.is_some() {
        let mut headers = to.delay.clone().unwrap_or_default();
        if let Some(trace) = trace {
            trace.insert_into(&mut headers);
        }
        properties = properties.with_headers(headers);
    }
    match &to.signer {
        Some(signer) => signer.sign_properties(kind, properties, body),
        None => properties,
    }
}

/// Properties of a task message: persistent, typed, identified by its key, with its priority.
pub fn task_properties(message: &crate::TaskMessage) -> BasicProperties {
    properties_of(&message.key, &message.function, message.priority)
}

/// [`task_properties`] from the fields themselves.
fn properties_of(key: &crate::TaskKey, function: &str, priority: u8) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CONTENT_TYPE.into())
        .with_message_id(key.as_str().into())
        .with_type(function.into());
    if priority > 0 {
        properties.with_priority(priority)
    } else {
        properties
    }
}

/// Publishes a released graph task from its stored record ([`crate::dependencies::ReadyTask`]),
/// as [`publish_task`] does a message: the body goes out as stored, never decoded and encoded
/// again, with the trace context the record keeps in its headers.
///
/// # Errors
/// [`crate::Error::Broker`] if the channel refuses the publish.
pub async fn publish_ready(
    channel: &Channel,
    to: &Destination,
    ready: &crate::dependencies::ReadyTask,
) -> Result<lapin::PublisherConfirm> {
    let properties = properties_of(&ready.key, &ready.function, ready.priority);
    // Graph tasks are never batches (only `map` packs calls).
    let properties = sign(
        properties,
        ready.trace.as_ref(),
        MessageKind::Task,
        to,
        &ready.body,
    );
    publish_body(channel, to, &ready.key, properties, &ready.body).await
}

/// Declares the fanout exchange of broadcast requests (`rask run`), `{exchange}.broadcast`, and
/// returns its name.
///
/// # Errors
/// [`crate::Error::Broker`] if RabbitMQ refuses.
pub async fn declare_broadcast_exchange(channel: &Channel, settings: &Settings) -> Result<String> {
    let exchange = settings.broadcast_exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(exchange)
}

/// Most broadcast requests waiting in a worker's broadcast queue; beyond it the oldest are
/// dropped (their callers see the worker as missing).
pub const BROADCAST_BACKLOG: u32 = 32;

/// Declares an exclusive, auto-deleted queue `name` (`""`: named by the server), binds it to
/// the fanout `exchange` when given, and consumes it without acknowledgements (a caller's
/// broadcast replies). Returns the queue's name and the consumer.
///
/// # Errors
/// [`crate::Error::Broker`] if RabbitMQ refuses.
pub async fn consume_private_queue(
    channel: &Channel,
    name: &str,
    exchange: Option<&str>,
    consumer_tag: &str,
) -> Result<(String, lapin::Consumer)> {
    let queue = declare_private_queue(channel, name, exchange, FieldTable::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            consumer_tag.into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue, consumer))
}

/// Declares a worker's broadcast queue `name`, exclusive and auto-deleted, bound to the fanout
/// `exchange` and bounded: at most [`BROADCAST_BACKLOG`] requests and as many times
/// `max_broadcast_bytes`, the oldest dropped beyond; and consumes it with acknowledgements, so
/// that the channel's prefetch (set by the caller) bounds the requests delivered at once.
///
/// # Errors
/// [`crate::Error::Broker`] if RabbitMQ refuses.
pub async fn consume_broadcast_queue(
    channel: &Channel,
    settings: &Settings,
    name: &str,
    exchange: &str,
) -> Result<lapin::Consumer> {
    let mut args = FieldTable::default();
    let bytes = settings
        .max_broadcast_bytes
        .saturating_mul(BROADCAST_BACKLOG as usize);
    let bounds = [
        ("x-max-length", i64::from(BROADCAST_BACKLOG)),
        (
            "x-max-length-bytes",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        ),
    ];
    for (name, bound) in bounds {
        args.insert(ShortString::from(name), AMQPValue::LongLongInt(bound));
    }
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("drop-head".into()),
    );
    let queue = declare_private_queue(channel, name, Some(exchange), args).await?;
    Ok(channel
        .basic_consume(
            queue.as_str().into(),
            "broadcast".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Declares an exclusive, auto-deleted queue `name` (`""`: named by the server) with `args`
/// and binds it to the fanout `exchange` when given; returns its name.
async fn declare_private_queue(
    channel: &Channel,
    name: &str,
    exchange: Option<&str>,
    args: FieldTable,
) -> Result<String> {
    let queue = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let queue = queue.name().as_str().to_owned();
    if let Some(exchange) = exchange {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SIGNATURE_HEADER;
    use crate::{TaskKey, TaskMessage};

    #[test]
    fn quorum_delivery_counts_are_read_from_the_header() {
        assert_eq!(quorum_delivery_count(&BasicProperties::default()), 0);
        for value in [AMQPValue::LongLongInt(3), AMQPValue::LongInt(3)] {
            let mut headers = FieldTable::default();
            headers.insert(ShortString::from(DELIVERY_COUNT_HEADER), value);
            let properties = BasicProperties::default().with_headers(headers);
            assert_eq!(quorum_delivery_count(&properties), 3);
        }
    }

    #[test]
    fn tasks_are_spread_over_shards_by_key() {
        let key = |i: usize| TaskKey::new(format!("k-{i}")).unwrap();
        let one = Destination::tasks(&Settings::default());
        assert_eq!(one.routing_key_for(&key(1)), "rask.tasks");
        let settings = Settings {
            queue_shards: 4,
            ..Settings::default()
        };
        let four = Destination::tasks(&settings);
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            let routing = four.routing_key_for(&key(i));
            assert_eq!(routing, four.routing_key_for(&key(i)), "stable");
            *counts.entry(routing.to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(
            counts.values().all(|n| (800..1200).contains(n)),
            "{counts:?}"
        );
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: any implementation must agree.
        assert_eq!(
            shard_of(&TaskKey::new("a").unwrap(), 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as usize
        );
    }

    #[test]
    fn quorum_topology_arguments() {
        let classic = typed(&Settings::default(), FieldTable::default());
        assert!(classic.inner().is_empty());
        let quorum = Settings {
            queue_type: QueueType::Quorum,
            max_priority: 0,
            ..Settings::default()
        };
        let args = typed(&quorum, FieldTable::default());
        assert!(matches!(
            args.inner().get("x-queue-type"),
            Some(AMQPValue::LongString(t)) if t.to_string() == "quorum"
        ));
    }

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
        assert_eq!(
            signer.verify_properties(MessageKind::Task, &properties, &body),
            Ok(())
        );
        assert_eq!(properties.message_id().as_ref().unwrap().as_str(), "inc-1");
        assert!(!format!("{to:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn trace_context_goes_in_the_headers_beside_delay_and_signature() {
        use crate::trace::{TraceContext, TRACEPARENT_HEADER};
        let mut message = TaskMessage::new(TaskKey::new("inc-1").unwrap(), "inc", vec![0x91, 0x01]);
        let body = message.encode().unwrap();
        let plain = Destination::tasks(&Settings::default());
        // No context: no header table at all.
        assert!(signed_properties(&message, &plain, &body)
            .headers()
            .is_none());
        message.trace = Some(TraceContext::random_root());
        let body = message.encode().unwrap();
        let keyed = Settings {
            signing_keys: vec!["0123456789abcdef0123".into()],
            ..Settings::default()
        };
        let to = Destination::after(&keyed, Duration::from_secs(3)).unwrap();
        let properties = signed_properties(&message, &to, &body);
        let headers = properties.headers().clone().unwrap();
        assert!(headers.inner().contains_key(TRACEPARENT_HEADER));
        assert!(headers.inner().contains_key(SIGNATURE_HEADER));
        assert_eq!(TraceContext::from_headers(&headers), message.trace);
        assert!(
            headers.inner().len() > 2,
            "the delay headers stay: {headers:?}"
        );
        assert_eq!(
            to.signer()
                .unwrap()
                .verify_properties(MessageKind::Task, &properties, &body),
            Ok(())
        );
    }
}
