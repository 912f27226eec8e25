//! Broadcasts: [`Client::run`] runs one function on every live worker and returns the answers
//! keyed by worker id, with the workers that did not answer in time reported as missing.
//!
//! The expected workers are those in the worker registry when the call starts. The request goes
//! to the fanout exchange [`Settings::broadcast_exchange`], which copies it to each worker's
//! exclusive queue; replies come back to a server-named, exclusive reply queue of the call's
//! own. The request expires with the timeout, so a worker that gets it late does not run it, and
//! runs for at most the timeout. With `signing_keys` it is signed as a broadcast request
//! (`rask_common::signing`): where the answers go and for how long it is good included. A
//! call opens its own short-lived connection to RabbitMQ (broadcasts are rare, operator-driven
//! calls); [`crate::Monitor::run`] reuses the monitor's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use rask_common::message::encode_value;
use rask_common::ops::{self, BroadcastFailure, BroadcastReply, BroadcastRequest, WorkerInfo};
use rask_common::signing::{BroadcastWindow, MessageKind, Signer};
use rask_common::{broker, FailureKind, Settings, Store, Task};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::Result;

/// What the live workers answered to one broadcast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport<T> {
    /// The value each worker returned, by worker id.
    pub answers: BTreeMap<String, T>,
    /// Workers on which the function failed (unknown, bad arguments, error, panic), by id.
    pub failed: BTreeMap<String, BroadcastFailure>,
    /// Workers in the registry that did not answer within the timeout (busy, stopping, or dead
    /// and not yet expired from the registry), sorted.
    pub missing: Vec<String>,
}

impl<T> RunReport<T> {
    /// Whether every expected worker answered with a value.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }
}

impl Client {
    /// Runs `task` with `args` once on every live worker (the workers must have it registered)
    /// and returns the answers by worker id, waiting at most `timeout` for them.
    ///
    /// # Errors
    /// [`crate::Error`] if the arguments do not encode, the request is over the
    /// `max_broadcast_bytes` setting ([`crate::Error::BroadcastTooLarge`]), or RabbitMQ or
    /// Redis fails. Workers that fail or do not answer are in the report, not errors.
    pub async fn run<T: Task>(
        &self,
        task: T,
        args: T::Args,
        timeout: Duration,
    ) -> Result<RunReport<T::Output>> {
        let _ = task;
        self.run_encoded(T::NAME, encode_value(&args)?, timeout)
            .await
    }

    /// [`Client::run`] by function name with arguments already encoded as a MessagePack array
    /// (for callers without a typed handle, like the CLI, and for the built-ins `ping` and
    /// `info`).
    ///
    /// # Errors
    /// As [`Client::run`].
    pub async fn run_encoded<T: DeserializeOwned>(
        &self,
        function: &str,
        args: Vec<u8>,
        timeout: Duration,
    ) -> Result<RunReport<T>> {
        let connection = broker::connect(self.settings(), "rask run").await?;
        let report = broadcast(
            &connection,
            self.settings(),
            self.store(),
            function,
            args,
            timeout,
        )
        .await;
        let _ = connection.close(200, "done".into()).await;
        report
    }

    /// Every live worker's answer to `ping` (`"pong"`).
    ///
    /// # Errors
    /// As [`Client::run`].
    pub async fn ping_workers(&self, timeout: Duration) -> Result<RunReport<String>> {
        self.run_encoded(ops::PING, encode_value(&())?, timeout)
            .await
    }

    /// Every live worker's [`WorkerInfo`]: host, pid, version, functions, concurrency, uptime.
    ///
    /// # Errors
    /// As [`Client::run`].
    pub async fn worker_info(&self, timeout: Duration) -> Result<RunReport<WorkerInfo>> {
        self.run_encoded(ops::INFO, encode_value(&())?, timeout)
            .await
    }
}

/// Broadcasts `function(args)` on `connection` and collects the replies (see the module docs).
pub(crate) async fn broadcast<T: DeserializeOwned>(
    connection: &Connection,
    settings: &Settings,
    store: &Store,
    function: &str,
    args: Vec<u8>,
    timeout: Duration,
) -> Result<RunReport<T>> {
    let deadline = Instant::now() + timeout;
    let body = ops::encode(&BroadcastRequest {
        function: function.to_owned(),
        args,
    })?;
    if body.len() > settings.max_broadcast_bytes {
        return Err(crate::Error::BroadcastTooLarge {
            function: function.to_owned(),
            bytes: body.len(),
            max: settings.max_broadcast_bytes,
        });
    }
    let mut expected: BTreeSet<String> = ops::live_workers(store)
        .await?
        .into_iter()
        .map(|w| w.id)
        .collect();
    let mut report = RunReport {
        answers: BTreeMap::new(),
        failed: BTreeMap::new(),
        missing: Vec::new(),
    };
    if expected.is_empty() {
        return Ok(report);
    }
    let channel = connection.create_channel().await?;
    let exchange = broker::declare_broadcast_exchange(&channel, settings).await?;
    let (reply_queue, mut replies) =
        broker::consume_private_queue(&channel, "", None, "rask run").await?;
    let correlation = uuid::Uuid::new_v4().simple().to_string();
    let properties = BasicProperties::default()
        .with_content_type(broker::CONTENT_TYPE.into())
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(correlation.as_str().into())
        .with_message_id(correlation.as_str().into())
        .with_type(function.into());
    let mut properties = BroadcastWindow::stamp(properties, timeout);
    // Workers with signing keys run only requests signed as broadcast requests.
    if let Some(signer) = Signer::from_settings(settings) {
        properties = signer.sign_properties(MessageKind::BroadcastRequest, properties, &body);
    }
    channel
        .basic_publish(
            exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?;
    while !expected.is_empty() {
        let delivery = match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_elapsed) => break,
            Ok(None) => break,
            Ok(Some(delivery)) => delivery?,
        };
        let ours = delivery
            .properties
            .correlation_id()
            .as_ref()
            .is_some_and(|id| id.as_str() == correlation);
        if !ours {
            continue;
        }
        let reply: BroadcastReply = match ops::decode(&delivery.data) {
            Ok(reply) => reply,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a broadcast reply that does not decode");
                continue;
            }
        };
        expected.remove(&reply.worker);
        match reply.result {
            Ok(bytes) => match rmp_serde::from_slice::<T>(&bytes) {
                Ok(value) => {
                    report.answers.insert(reply.worker, value);
                }
                Err(e) => {
                    let failure = BroadcastFailure {
                        kind: FailureKind::Failed,
                        message: format!(
                            "the answer does not decode as {}: {e}",
                            std::any::type_name::<T>()
                        ),
                    };
                    report.failed.insert(reply.worker, failure);
                }
            },
            Err(failure) => {
                report.failed.insert(reply.worker, failure);
            }
        }
    }
    report.missing = expected.into_iter().collect();
    let _ = channel.close(200, "done".into()).await;
    Ok(report)
}
