//! The floor: the same message sizes pushed straight through lapin and Redis with no rask code in
//! between, on the same servers and in the same run, so that each rask figure can be read as a
//! fraction of what the infrastructure itself allows with the same guarantees, done the way the
//! best raw client would do it.
//!
//! - A publisher on its own connection publishes persistent messages (`mandatory`, durable
//!   queues: as many as rask's task queue has shards, messages spread over them in turn) on a
//!   confirm-mode channel, keeping a window of unconfirmed publishes, like rask's.
//! - One consumer per rask worker, each on its own connection with the prefetch rask's workers
//!   use ([`Settings::effective_prefetch`], split over the shards as a worker splits it), takes
//!   what deliveries are ready (up to the prefetch), stores one value per delivery with
//!   `SET key value NX PX ttl` and `PUBLISH`es the batch's keys, in one pipeline, then acks each
//!   delivery; batches overlap, so up to the prefetch messages are in flight per consumer.
//! - The client subscribes to those notifications before it publishes, and reads the values of
//!   the keys it is told of with `MGET` (re-reading everything pending if it hears nothing for a
//!   while), as rask's client does. A round trip (`latency`) waits for the notification and the
//!   publisher confirm at once and is done when the value is read; the confirm-first order is
//!   measured too, as a second figure, and, as a third, the round trip that `Client::call` makes
//!   now: the message names a reply channel (AMQP `reply_to`), the consumer's pipeline sends the
//!   value as stored there with rask's reply script ([`rask_common::reply::REPLY_LUA`]) right
//!   after the `SET`, and the client takes the value from the reply, racing the confirm.
//!
//! The consumers run as tasks in the bench process on their own connections: they share the
//! machine's cores with the client, as rask's worker processes do.
//!
//! A message body is `[value length: u32 LE][value][zeros]`, as long as rask's encoded task
//! message for the same call; the consumer stores the value, as long as rask's stored outcome.
//!
//! Batched (`fine`): one message carries n calls, as rask's batch message does, typed
//! [`BATCH_TYPE`]: `[n: u32 LE]` then per call `[id length: u8][id][value length: u32 LE][value]`,
//! padded with zeros to the length of rask's batch message of n such calls. The consumer
//! stores the n values in the pipeline of its deliveries (one `SET` each, one `PUBLISH` of
//! every key) and acks the message once they are stored; the client checks every value.
//! The caller checks every byte of every value, outside or inside its timer exactly as it does
//! for rask.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures::future::{select, Either};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use rask::{Settings, Task, TaskKey};
use rask_common::message::encode_value;
use rask_common::{Outcome, TaskMessage};
use redis::aio::MultiplexedConnection;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{random_bytes, PATIENCE};

/// How long the floor's Redis connections wait for a reply (the redis crate's default, 500 ms,
/// is too short for a pipeline of many MiB on a busy machine).
const REDIS_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client waits for a notification before it re-reads every pending key (a
/// safety net: notifications are not lost on a healthy connection).
const RESCAN: Duration = Duration::from_secs(1);
/// Most notification messages the client takes in at once before reading their values.
const NOTIFICATIONS_AT_ONCE: usize = 256;
/// Most bytes of values one `MGET` may bring back (fewer keys per `MGET` for big values).
const MGET_BYTES: usize = 8 << 20;
/// Most keys per `MGET` (as rask's store reads them).
const MGET_KEYS: usize = 1000;
/// The `type` property of a floor message carrying a batch of calls.
const BATCH_TYPE: &str = "rask-floor-batch";
/// Keys per `DEL` when cleaning up.
const DEL_KEYS: usize = 10_000;
/// An unused floor queue disappears by itself after this long (`x-expires`), in case the bench
/// dies before deleting it on a cluster it did not start.
const QUEUE_EXPIRES_MS: i32 = 10 * 60 * 1000;

/// The servers and sizes every floor stage uses.
pub(super) struct Floor {
    amqp_url: String,
    redis: redis::Client,
    /// Prefix of the floor's own Redis keys, queues and channel.
    prefix: String,
    consumers: usize,
    /// Unacknowledged deliveries per consumer, as rask's workers have.
    prefetch: u16,
    /// Task queues per stage, as rask's deployment has shards.
    shards: usize,
    ttl_ms: u64,
    window: usize,
    stages: usize,
}

/// The sizes of one kind of message and its stored value, and how to make them.
#[derive(Clone, Debug)]
pub(super) struct Shape {
    function: &'static str,
    body_len: usize,
    value_len: usize,
    salt: u64,
}

impl Shape {
    /// The shape of a call of `T` with `args` returning `output` as rask encodes them: the task
    /// message and the stored outcome. `salt` makes the values of different shapes differ.
    pub(super) fn of<T: Task>(_: T, args: T::Args, output: T::Output, salt: u64) -> Result<Self> {
        let message = TaskMessage::new(TaskKey::unique(T::NAME), T::NAME, encode_value(&args)?);
        let outcome = Outcome::Value(encode_value(&output)?);
        Ok(Shape {
            function: T::NAME,
            body_len: message.encode()?.len(),
            value_len: outcome.encode()?.len(),
            salt,
        })
    }

    /// The length of rask's batch message of `n` calls of this shape's function, each with
    /// arguments as long as `args` encodes.
    pub(super) fn batch_len<T: Task>(_: T, args: T::Args, n: usize) -> Result<usize> {
        let encoded = encode_value(&args)?;
        let calls = (0..n)
            .map(|_| rask_common::message::Call {
                key: TaskKey::unique(T::NAME),
                args: encoded.clone(),
            })
            .collect();
        let key = rask_common::batch::batch_key(T::NAME);
        Ok(TaskMessage::batch(key, T::NAME, calls).encode()?.len())
    }

    /// The value stored for message `i`.
    fn value(&self, i: usize) -> Vec<u8> {
        random_bytes(self.salt ^ (i as u64), self.value_len)
    }

    /// The body of message `i`.
    fn body(&self, i: usize) -> Vec<u8> {
        let len = u32::try_from(self.value_len).expect("values are far below 4 GiB");
        let mut body = Vec::with_capacity(self.body_len.max(4 + self.value_len));
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(&self.value(i));
        body.resize(body.capacity(), 0);
        body
    }
}

impl Floor {
    /// A floor on the servers of `settings` (those of rask's workers: their prefetch and queue
    /// shards are the floor's too), with `consumers` consumers per stage.
    pub(super) fn new(settings: &Settings, prefix: String, consumers: usize) -> Result<Self> {
        Ok(Floor {
            amqp_url: settings.amqp_url.clone(),
            redis: redis::Client::open(settings.redis_url.as_str())?,
            prefix,
            consumers,
            prefetch: settings.effective_prefetch().max(1),
            shards: settings.task_queues().len().max(1),
            ttl_ms: u64::try_from(settings.result_ttl.as_millis()).unwrap_or(u64::MAX),
            window: settings.publish_window,
            stages: 0,
        })
    }

    /// Consumers per stage (one per rask worker).
    pub(super) fn consumers(&self) -> usize {
        self.consumers
    }

    /// Declares fresh queues (one per shard) and starts the publisher, the consumers and the
    /// client's Redis connections, subscribed to the consumers' notifications.
    pub(super) async fn stage(&mut self) -> Result<Stage> {
        self.stages += 1;
        let queues: Vec<String> = (0..self.shards)
            .map(|shard| format!("{}.q{}.{shard}", self.prefix, self.stages))
            .collect();
        let notify = format!("{}:done:{}", self.prefix, self.stages);
        let reply = format!("{}:reply:{}", self.prefix, self.stages);
        let publisher = connect(&self.amqp_url, "rask bench floor publisher").await?;
        let channel = publisher.create_channel().await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongInt(QUEUE_EXPIRES_MS),
        );
        for queue in &queues {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    arguments.clone(),
                )
                .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Subscribed before anything is published, so no notification can be missed.
        let mut notifications = self.redis.get_async_pubsub().await?;
        notifications.subscribe(&notify).await?;
        notifications.subscribe(&reply).await?;
        let stop = CancellationToken::new();
        // The prefetch applies per consumer: one consumer per shard shares it, as in a worker.
        let per_shard = self.prefetch.div_ceil(queues.len() as u16).max(1);
        let mut consumers = Vec::with_capacity(self.consumers);
        for n in 0..self.consumers {
            let connection =
                connect(&self.amqp_url, &format!("rask bench floor consumer {n}")).await?;
            // Consuming before the stage is returned, as rask's workers are before a workload.
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(per_shard, BasicQosOptions::default())
                .await?;
            let mut streams = Vec::with_capacity(queues.len());
            for queue in &queues {
                streams.push(
                    channel
                        .basic_consume(
                            queue.as_str().into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?,
                );
            }
            let consumer = Consumer {
                channel,
                redis: self.redis_connection().await?,
                prefetch: self.prefetch,
                key_prefix: self.key_prefix(),
                ttl_ms: self.ttl_ms,
                notify: notify.clone(),
            };
            let deliveries = futures::stream::select_all(streams);
            let task = tokio::spawn(consumer.run(deliveries, stop.clone()));
            consumers.push((connection, task));
        }
        Ok(Stage {
            queues,
            key_prefix: self.key_prefix(),
            window: self.window,
            publisher,
            channel,
            consumers,
            stop,
            redis: self.redis_connection().await?,
            notifications,
            reply,
            keys: Vec::new(),
        })
    }

    async fn redis_connection(&self) -> Result<MultiplexedConnection> {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(REDIS_REPLY_TIMEOUT));
        Ok(self
            .redis
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    fn key_prefix(&self) -> String {
        format!("{}:result:", self.prefix)
    }
}

async fn connect(url: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("connecting the {name}"))
}

/// One floor measurement's queue, publisher, consumers and client connections.
pub(super) struct Stage {
    /// The task queues, one per shard.
    queues: Vec<String>,
    key_prefix: String,
    window: usize,
    publisher: Connection,
    channel: Channel,
    consumers: Vec<(Connection, JoinHandle<Result<()>>)>,
    stop: CancellationToken,
    redis: MultiplexedConnection,
    notifications: redis::aio::PubSub,
    /// The channel of replies to this client.
    reply: String,
    /// Every key published, to delete at the end.
    keys: Vec<String>,
}

impl Stage {
    /// Publishes messages `range` of `shape` (persistent, confirmed, with a window) and returns
    /// their Redis keys once the broker has confirmed them all.
    pub(super) async fn publish(
        &mut self,
        shape: &Shape,
        range: Range<usize>,
    ) -> Result<Vec<String>> {
        let mut keys = Vec::with_capacity(range.len());
        let mut in_flight = VecDeque::with_capacity(self.window);
        for i in range {
            let (key, confirm) = self.publish_one(shape, i, false).await?;
            keys.push(key);
            in_flight.push_back(confirm);
            while in_flight.len() >= self.window {
                let confirm = in_flight.pop_front().expect("the window is not empty");
                check(confirm.await?)?;
            }
        }
        for confirm in in_flight {
            check(confirm.await?)?;
        }
        Ok(keys)
    }

    /// Publishes the calls `range` of `shape`, `per_message` calls per message (each message
    /// padded to `body_len`), persistent, confirmed, with a window; returns every call's Redis
    /// key, in order, once the broker has confirmed them all.
    pub(super) async fn publish_batched(
        &mut self,
        shape: &Shape,
        range: Range<usize>,
        per_message: usize,
        body_len: usize,
    ) -> Result<Vec<String>> {
        let mut keys = Vec::with_capacity(range.len());
        let mut in_flight = VecDeque::with_capacity(self.window);
        let (start, end) = (range.start, range.end);
        for (m, first) in (start..end).step_by(per_message.max(1)).enumerate() {
            let calls = first..(first + per_message).min(end);
            let mut body = Vec::with_capacity(body_len);
            body.extend_from_slice(&(calls.len() as u32).to_le_bytes());
            for i in calls {
                let id = format!("{}-{}", shape.function, uuid::Uuid::new_v4().simple());
                body.push(u8::try_from(id.len()).expect("ids are short"));
                body.extend_from_slice(id.as_bytes());
                let value = shape.value(i);
                body.extend_from_slice(&(value.len() as u32).to_le_bytes());
                body.extend_from_slice(&value);
                let key = format!("{}{id}", self.key_prefix);
                self.keys.push(key.clone());
                keys.push(key);
            }
            body.resize(body.len().max(body_len), 0);
            let id = format!("{}.batch-{}", shape.function, uuid::Uuid::new_v4().simple());
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(rask_common::broker::CONTENT_TYPE.into())
                .with_message_id(id.as_str().into())
                .with_type(BATCH_TYPE.into());
            let queue = &self.queues[m % self.queues.len()];
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?;
            in_flight.push_back(confirm);
            while in_flight.len() >= self.window {
                let confirm = in_flight.pop_front().expect("the window is not empty");
                check(confirm.await?)?;
            }
        }
        for confirm in in_flight {
            check(confirm.await?)?;
        }
        Ok(keys)
    }

    /// Publishes message `i` of `shape` to its shard, naming the client's reply channel when
    /// `reply`; returns its key and its pending confirm.
    async fn publish_one(
        &mut self,
        shape: &Shape,
        i: usize,
        reply: bool,
    ) -> Result<(String, PublisherConfirm)> {
        let id = format!("{}-{}", shape.function, uuid::Uuid::new_v4().simple());
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(rask_common::broker::CONTENT_TYPE.into())
            .with_message_id(id.as_str().into())
            .with_type(shape.function.into());
        if reply {
            properties = properties.with_reply_to(self.reply.as_str().into());
        }
        let queue = &self.queues[i % self.queues.len()];
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &shape.body(i),
                properties,
            )
            .await?;
        let key = format!("{}{id}", self.key_prefix);
        self.keys.push(key.clone());
        Ok((key, confirm))
    }

    /// Waits for the values of `keys` (values of `shape`) by notification, reading the keys it is
    /// told of with `MGET` (as rask's client does), and hands each to `take` with its index in
    /// `keys`, in the order they arrive.
    pub(super) async fn collect(
        &mut self,
        shape: &Shape,
        keys: &[String],
        mut take: impl FnMut(usize, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let chunk = (MGET_BYTES / shape.value_len.max(1)).clamp(1, MGET_KEYS);
        let deadline = Instant::now() + PATIENCE;
        let mut pending: HashMap<&[u8], usize> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (key.as_bytes(), i))
            .collect();
        let mut messages = self
            .notifications
            .on_message()
            .ready_chunks(NOTIFICATIONS_AT_ONCE);
        while !pending.is_empty() {
            let told: Vec<usize> = match tokio::time::timeout(RESCAN, messages.next()).await {
                Ok(Some(batch)) => batch
                    .iter()
                    .flat_map(|message| {
                        message
                            .get_payload_bytes()
                            .split(|b| *b == b'\n')
                            .filter_map(|key| pending.get(key).copied())
                            .collect::<Vec<_>>()
                    })
                    .collect(),
                Ok(None) => bail!("floor: the notification subscription ended"),
                Err(_) => {
                    check_consumers(&mut self.consumers).await?;
                    if Instant::now() > deadline {
                        bail!(
                            "floor: {} of {} results still missing after {PATIENCE:?}",
                            pending.len(),
                            keys.len()
                        );
                    }
                    pending.values().copied().collect()
                }
            };
            for batch in told.chunks(chunk) {
                let names: Vec<&str> = batch.iter().map(|&i| keys[i].as_str()).collect();
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&names)
                    .query_async(&mut self.redis)
                    .await?;
                for (&i, value) in batch.iter().zip(values) {
                    if let Some(value) = value {
                        if pending.remove(keys[i].as_bytes()).is_some() {
                            take(i, value)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One round trip: publishes message `i` of `shape`, waits for its value as `wait` says and
    /// returns it. When the publisher confirm is raced with the value, the round trip ends with
    /// the value, whichever comes first (a negative confirm before the value still fails).
    pub(super) async fn round_trip(
        &mut self,
        shape: &Shape,
        i: usize,
        wait: Wait,
    ) -> Result<Vec<u8>> {
        let (key, confirm) = self.publish_one(shape, i, wait == Wait::Reply).await?;
        let confirm = if wait == Wait::ConfirmFirst {
            check(confirm.await?)?;
            None
        } else {
            Some(confirm)
        };
        let replied = {
            let reply = self.reply.as_bytes();
            let mut messages = self.notifications.on_message();
            // The value, when it comes in a reply: `{key}\n{value}` on the reply channel.
            let notified = std::pin::pin!(async {
                loop {
                    let message = tokio::time::timeout(PATIENCE, messages.next())
                        .await
                        .context("floor: no notification")?
                        .context("floor: the notification subscription ended")?;
                    let payload = message.get_payload_bytes();
                    if message.get_channel_name().as_bytes() == reply {
                        let value = payload
                            .strip_prefix(key.as_bytes())
                            .and_then(|rest| rest.strip_prefix(b"\n"));
                        if let Some(value) = value {
                            return Ok::<_, anyhow::Error>(Some(value.to_vec()));
                        }
                    } else if wait != Wait::Reply
                        && payload.split(|b| *b == b'\n').any(|k| k == key.as_bytes())
                    {
                        return Ok(None);
                    }
                }
            });
            match confirm {
                None => notified.await?,
                Some(confirm) => match select(confirm, notified).await {
                    Either::Left((confirmed, notified)) => {
                        check(confirmed?)?;
                        notified.await?
                    }
                    Either::Right((notified, _confirm)) => notified?,
                },
            }
        };
        if let Some(value) = replied {
            return Ok(value);
        }
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.redis)
            .await?;
        value.context("floor: notified, but no value stored")
    }

    /// Stops the consumers, deletes the queue and every stored value, closes the connections.
    pub(super) async fn close(mut self) -> Result<()> {
        self.stop.cancel();
        for (connection, task) in self.consumers {
            task.await.context("a floor consumer panicked")??;
            connection.close(200, "floor done".into()).await?;
        }
        for queue in &self.queues {
            self.channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for chunk in self.keys.chunks(DEL_KEYS) {
            redis::cmd("DEL")
                .arg(chunk)
                .query_async::<u64>(&mut self.redis)
                .await?;
        }
        self.publisher.close(200, "floor done".into()).await?;
        Ok(())
    }
}

/// How a floor round trip ([`Stage::round_trip`]) waits for its value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Wait {
    /// The confirm and the notification at once, then the value read (`GET`).
    AtOnce,
    /// The confirm, then the notification, then the value read.
    ConfirmFirst,
    /// The confirm and the reply that carries the value at once, as `Client::call` does.
    Reply,
}

fn check(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("floor: a message could not be routed"),
        Confirmation::Nack(_) | Confirmation::NotRequested => {
            bail!("floor: the broker nacked a message")
        }
    }
}

/// Fails, with its error, if a consumer has stopped.
async fn check_consumers(consumers: &mut Vec<(Connection, JoinHandle<Result<()>>)>) -> Result<()> {
    if let Some(n) = consumers.iter().position(|(_, task)| task.is_finished()) {
        let (_, task) = consumers.swap_remove(n);
        task.await.context("a floor consumer panicked")??;
        bail!("floor: a consumer stopped early");
    }
    Ok(())
}

/// Checks that `value` is the value of message `i` of `shape`.
pub(super) fn check_value(shape: &Shape, i: usize, value: &[u8]) -> Result<()> {
    ensure!(
        value == shape.value(i).as_slice(),
        "floor: the value of {} message {i} is wrong ({} bytes, expected {})",
        shape.function,
        value.len(),
        shape.value_len
    );
    Ok(())
}

/// One floor consumer: its channel and Redis connection.
struct Consumer {
    channel: Channel,
    redis: MultiplexedConnection,
    prefetch: u16,
    key_prefix: String,
    ttl_ms: u64,
    /// The channel its stored keys are announced on.
    notify: String,
}

impl Consumer {
    /// Takes `deliveries` until `stop`, storing batches concurrently (bounded by the prefetch).
    async fn run(
        self,
        deliveries: futures::stream::SelectAll<lapin::Consumer>,
        stop: CancellationToken,
    ) -> Result<()> {
        let mut batches = deliveries.ready_chunks(usize::from(self.prefetch));
        let mut storing: JoinSet<Result<()>> = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(stored) = storing.join_next() => stored??,
                batch = batches.next() => {
                    let Some(batch) = batch else { break };
                    let deliveries = batch.into_iter().collect::<lapin::Result<Vec<_>>>()?;
                    storing.spawn(self.store_and_ack(deliveries));
                }
            }
        }
        while let Some(stored) = storing.join_next().await {
            stored??;
        }
        let _ = self.channel.close(200, "floor done".into()).await;
        Ok(())
    }

    /// `SET key value NX PX ttl` for every delivery (and its reply, if it names a reply
    /// channel) and `PUBLISH` of the keys, in one pipeline, then acks each delivery.
    fn store_and_ack(
        &self,
        deliveries: Vec<Delivery>,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let mut pipe = redis::pipe();
        let mut announced = Vec::new();
        for delivery in &deliveries {
            let batch = delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(BATCH_TYPE);
            if batch {
                for (id, value) in calls_of(&delivery.data) {
                    let key = format!("{}{id}", self.key_prefix);
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(self.ttl_ms)
                        .ignore();
                    if !announced.is_empty() {
                        announced.push(b'\n');
                    }
                    announced.extend_from_slice(key.as_bytes());
                }
                continue;
            }
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                .unwrap_or_default();
            let key = format!("{}{id}", self.key_prefix);
            let value = value_of(&delivery.data);
            pipe.cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl_ms)
                .ignore();
            if let Some(reply) = delivery.properties.reply_to() {
                // The value as stored, on the client's channel, as a rask worker replies.
                pipe.cmd("EVAL")
                    .arg(rask_common::reply::REPLY_LUA)
                    .arg(1)
                    .arg(&key)
                    .arg(reply.as_str())
                    .arg(format!("{key}\n"))
                    .arg(rask_common::reply::REPLY_LIMIT)
                    .ignore();
            }
            if !announced.is_empty() {
                announced.push(b'\n');
            }
            announced.extend_from_slice(key.as_bytes());
        }
        pipe.cmd("PUBLISH")
            .arg(&self.notify)
            .arg(announced)
            .ignore();
        let mut redis = self.redis.clone();
        async move {
            pipe.query_async::<()>(&mut redis)
                .await
                .context("floor consumer: storing values")?;
            for delivery in deliveries {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .context("floor consumer: acking")?;
            }
            Ok(())
        }
    }
}

/// The calls inside a batched floor message body, as (id, value) (see the module docs).
fn calls_of(body: &[u8]) -> Vec<(&str, &[u8])> {
    let mut calls = Vec::new();
    let Some((n, mut rest)) = body.split_first_chunk::<4>() else {
        return calls;
    };
    for _ in 0..u32::from_le_bytes(*n) {
        let Some((&id_len, after)) = rest.split_first() else {
            break;
        };
        let (id, after) = after.split_at(usize::from(id_len).min(after.len()));
        let Some((len, after)) = after.split_first_chunk::<4>() else {
            break;
        };
        let len = (u32::from_le_bytes(*len) as usize).min(after.len());
        let (value, after) = after.split_at(len);
        calls.push((std::str::from_utf8(id).unwrap_or_default(), value));
        rest = after;
    }
    calls
}

/// The value inside a floor message body (see the module docs).
fn value_of(body: &[u8]) -> &[u8] {
    let Some((len, rest)) = body.split_first_chunk::<4>() else {
        return &[];
    };
    let len = u32::from_le_bytes(*len) as usize;
    &rest[..len.min(rest.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rask::builtins::{echo, inc};

    #[test]
    fn bodies_are_as_long_as_rask_messages_and_carry_the_value() {
        let shape = Shape::of(inc, (19_999,), 20_000, 7).unwrap();
        assert!(shape.body_len > 60 && shape.value_len < 20, "{shape:?}");
        let body = shape.body(3);
        assert_eq!(body.len(), shape.body_len);
        assert_eq!(value_of(&body), shape.value(3).as_slice());
        assert_ne!(shape.value(3), shape.value(4));

        let big = rmpv::Value::Binary(vec![0; 1 << 20]);
        let shape = Shape::of(echo, (big.clone(),), big, 8).unwrap();
        assert!(shape.value_len > 1 << 20 && shape.body_len >= shape.value_len + 4);
        assert_eq!(value_of(&shape.body(1)), shape.value(1).as_slice());
    }
}
