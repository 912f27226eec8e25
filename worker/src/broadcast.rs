//! Answering broadcasts (`rask run`, `Client::run`): an exclusive, auto-deleted queue per worker,
//! `{broadcast_exchange}.{worker id}`, bound to the fanout exchange
//! [`Settings::broadcast_exchange`], on a connection of its own (reconnected with backoff).
//!
//! Each request runs at once, outside the task concurrency limit (a saturated worker still
//! answers `ping`): the built-ins [`ops::PING`] and [`ops::INFO`], or any function of the
//! worker's registry. The answer, a [`BroadcastReply`], goes to the request's `reply_to` queue
//! with its `correlation_id`. A request without `reply_to` is ignored.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel};
use rask_common::message::encode_value;
use rask_common::ops::{self, BroadcastFailure, BroadcastReply, BroadcastRequest};
use rask_common::signing::Signer;
use rask_common::{broker, FailureKind, Invocation, Settings};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::ops::{Health, Identity};
use crate::registry::{PrepareError, Registry};

/// First and largest pause between attempts to reconnect.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Consumes broadcast requests until `leaving` is cancelled, reconnecting as needed.
pub(crate) async fn serve(
    settings: Settings,
    registry: Registry,
    identity: Arc<Identity>,
    health: Arc<Health>,
    leaving: CancellationToken,
) {
    let mut pause = BACKOFF.0;
    loop {
        let served = consume(&settings, &registry, &identity, &health, &leaving).await;
        health.broker.send_replace(false);
        match served {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "broadcast consumer lost; reconnecting");
            }
        }
        tokio::select! {
            () = leaving.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(BACKOFF.1);
    }
}

/// One connection's worth of [`serve`]: `Ok` once `leaving` is cancelled.
async fn consume(
    settings: &Settings,
    registry: &Registry,
    identity: &Arc<Identity>,
    health: &Health,
    leaving: &CancellationToken,
) -> Result<()> {
    let connection =
        broker::connect(settings, &format!("rask-worker {} broadcast", identity.id)).await?;
    let channel = connection.create_channel().await?;
    let exchange = broker::declare_broadcast_exchange(&channel, settings).await?;
    let (queue, mut requests) = broker::consume_private_queue(
        &channel,
        &format!("{exchange}.{}", identity.id),
        Some(&exchange),
        "broadcast",
    )
    .await?;
    health.broker.send_replace(true);
    tracing::debug!(%queue, "answering broadcasts");
    let signer = Signer::from_settings(settings);
    let outcome = loop {
        let delivery = tokio::select! {
            () = leaving.cancelled() => break Ok(()),
            delivery = requests.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let (channel, registry, identity) =
                    (channel.clone(), registry.clone(), identity.clone());
                let signer = signer.clone();
                tokio::spawn(async move {
                    answer(&channel, &registry, &identity, signer.as_ref(), delivery).await;
                });
            }
            Some(Err(e)) => break Err(e.into()),
            None => break Err(crate::Error::ConsumerCancelled(queue.clone())),
        }
    };
    let _ = connection.close(200, "worker stopping".into()).await;
    outcome
}

/// Runs one request and publishes the reply.
async fn answer(
    channel: &Channel,
    registry: &Registry,
    identity: &Identity,
    signer: Option<&Signer>,
    delivery: Delivery,
) {
    let Some(reply_to) = delivery.properties.reply_to().clone() else {
        tracing::warn!("ignoring a broadcast request without reply_to");
        return;
    };
    // With signing keys, a request runs only if signed like a task message (nothing is decoded
    // before that); the refusal goes back to the caller.
    let verified = signer.map_or(Ok(()), |s| {
        s.verify_properties(&delivery.properties, &delivery.data)
    });
    let result = match verified {
        Err(why) => Err(BroadcastFailure {
            kind: FailureKind::BadMessage,
            message: format!("request signature does not verify: {why}"),
        }),
        Ok(()) => match ops::decode::<BroadcastRequest>(&delivery.data) {
            Ok(request) => run(registry, identity, &request).await,
            Err(e) => Err(BroadcastFailure {
                kind: FailureKind::BadMessage,
                message: format!("the request does not decode: {e}"),
            }),
        },
    };
    let reply = BroadcastReply {
        worker: identity.id.clone(),
        result: result.map(serde_bytes::ByteBuf::from),
    };
    let body = match ops::encode(&reply) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "broadcast reply does not encode");
            return;
        }
    };
    let mut properties = BasicProperties::default().with_content_type(broker::CONTENT_TYPE.into());
    if let Some(id) = delivery.properties.correlation_id() {
        properties = properties.with_correlation_id(id.clone());
    }
    let published = channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    if let Err(e) = published {
        tracing::warn!(error = %e, "could not publish a broadcast reply");
    }
}

/// The encoded value of `request` on this worker, or why it failed.
async fn run(
    registry: &Registry,
    identity: &Identity,
    request: &BroadcastRequest,
) -> std::result::Result<Vec<u8>, BroadcastFailure> {
    let failed = |kind: FailureKind, message: String| BroadcastFailure { kind, message };
    let encoded = |e: rask_common::Error| failed(FailureKind::Failed, e.to_string());
    match request.function.as_str() {
        ops::PING => return encode_value(ops::PONG).map_err(encoded),
        ops::INFO => return ops::encode(&identity.info()).map_err(encoded),
        _ => {}
    }
    let invocation = match registry.prepare(&request.function, &request.args) {
        Ok(invocation) => invocation,
        Err(PrepareError::Unknown(known)) => {
            return Err(failed(
                FailureKind::UnknownTask,
                format!(
                    "no function named {:?} on this worker; it knows: {}, {}, {}",
                    request.function,
                    ops::PING,
                    ops::INFO,
                    known.join(", ")
                ),
            ))
        }
        Err(PrepareError::BadArguments { expected, error }) => {
            return Err(failed(
                FailureKind::BadArguments,
                format!("arguments do not decode as {expected}: {error}"),
            ))
        }
    };
    let joined = match invocation {
        Invocation::Blocking(f) => tokio::task::spawn_blocking(f).await,
        Invocation::Async(fut) => tokio::spawn(fut).await,
    };
    match joined {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(failed(FailureKind::Failed, error.message().to_owned())),
        Err(join) => Err(failed(FailureKind::Panicked, join.to_string())),
    }
}
