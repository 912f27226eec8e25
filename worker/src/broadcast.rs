//! Answering broadcasts (`rask run`, `Client::run`): an exclusive, auto-deleted queue per worker,
//! `{broadcast_exchange}.{worker id}`, bound to the fanout exchange
//! [`Settings::broadcast_exchange`], on a connection of its own (reconnected with backoff).
//!
//! Requests run outside the task concurrency limit (a saturated worker still answers `ping`),
//! within limits of their own: at most `broadcast_concurrency` at once (the channel's prefetch:
//! a request is acknowledged once answered), at most [`broker::BROADCAST_BACKLOG`] waiting in
//! the queue (the oldest dropped), each for at most its caller's timeout (its `expiration`; a
//! plain function past it leaves its thread to `overrun.rs`). What runs: the built-ins
//! [`ops::PING`] and [`ops::INFO`], or any function of the worker's registry. The answer, a
//! [`BroadcastReply`], goes to the request's `reply_to` queue with its `correlation_id`.
//!
//! Before anything of a request is decoded or logged, in this order: its size against
//! `max_broadcast_bytes` (before any MAC is computed over it); with `signing_keys`, its signature
//! as a broadcast request (a task message's never verifies as one, `signing.rs`) and then its
//! signed window (`timestamp` + `expiration`); then `reply_to` and `expiration` must be present
//! and the body a [`BroadcastRequest`] without unknown fields.
//!
//! A refused request is answered (`BadMessage`) only at a `reply_to` the worker can trust: one
//! whose signature verified, or any when signing is off. A request that is too large to check or
//! does not verify gets no answer at all, so that nobody can make every worker send messages
//! where they like (or learn their ids); it is counted in `rask_broadcasts_refused_total` and
//! logged at most once a minute, with nothing read from it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use rask_common::context::{Secession, WorkerContext};
use rask_common::message::encode_value;
use rask_common::ops::{self, BroadcastFailure, BroadcastReply, BroadcastRequest};
use rask_common::signing::{BroadcastWindow, MessageKind, Signer};
use rask_common::{broker, FailureKind, Invocation, Settings, TaskContext, TaskKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::ops::{Health, Identity};
use crate::overrun::Overruns;
use crate::registry::{PrepareError, Registry};

/// First and largest pause between attempts to reconnect.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How often at most refusals of untrusted requests are logged.
const QUIET_LOG_EVERY: Duration = Duration::from_secs(60);

/// The `reason` labels of `rask_broadcasts_refused_total`.
mod reason {
    /// Over `max_broadcast_bytes`.
    pub(super) const TOO_LARGE: &str = "too_large";
    /// Unsigned, forged, tampered with, or signed as another kind of message.
    pub(super) const SIGNATURE: &str = "signature";
    /// Outside its signed window (a replay, or clocks too far apart).
    pub(super) const WINDOW: &str = "window";
    /// Without `reply_to` or `expiration`, or a body that is not a request.
    pub(super) const MALFORMED: &str = "malformed";
}

/// Consumes broadcast requests until `leaving` is cancelled, reconnecting as needed.
pub(crate) async fn serve(
    settings: Settings,
    registry: Registry,
    context: Arc<WorkerContext>,
    identity: Arc<Identity>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    leaving: CancellationToken,
) {
    let quiet = Arc::new(QuietLog::default());
    let mut pause = BACKOFF.0;
    loop {
        let answerer = |channel: Channel| Answerer {
            channel,
            registry: registry.clone(),
            context: context.clone(),
            identity: identity.clone(),
            metrics: metrics.clone(),
            signer: Signer::from_settings(&settings),
            max_bytes: settings.max_broadcast_bytes,
            quiet: quiet.clone(),
        };
        let served = consume(&settings, &identity, &health, &leaving, answerer).await;
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
    identity: &Identity,
    health: &Health,
    leaving: &CancellationToken,
    answerer: impl FnOnce(Channel) -> Answerer,
) -> Result<()> {
    let connection =
        broker::connect(settings, &format!("rask-worker {} broadcast", identity.id)).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.broadcast_concurrency, BasicQosOptions::default())
        .await?;
    let exchange = broker::declare_broadcast_exchange(&channel, settings).await?;
    let queue = format!("{exchange}.{}", identity.id);
    let mut requests =
        broker::consume_broadcast_queue(&channel, settings, &queue, &exchange).await?;
    health.broker.send_replace(true);
    tracing::debug!(%queue, "answering broadcasts");
    let answerer = Arc::new(answerer(channel));
    let outcome = loop {
        let delivery = tokio::select! {
            () = leaving.cancelled() => break Ok(()),
            delivery = requests.next() => delivery,
        };
        match delivery {
            // At most `broadcast_concurrency` at once: the prefetch holds back the rest until
            // these are acknowledged.
            Some(Ok(delivery)) => {
                let answerer = answerer.clone();
                tokio::spawn(async move { answerer.answer(delivery).await });
            }
            Some(Err(e)) => break Err(e.into()),
            None => break Err(crate::Error::ConsumerCancelled(queue.clone())),
        }
    };
    let _ = connection.close(200, "worker stopping".into()).await;
    outcome
}

/// What answering requests needs, shared by the requests of one connection.
struct Answerer {
    channel: Channel,
    registry: Registry,
    /// For functions that take a context (a run of its own, outside the concurrency slots).
    context: Arc<WorkerContext>,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    signer: Option<Signer>,
    max_bytes: usize,
    quiet: Arc<QuietLog>,
}

/// A request that passed every check.
struct Admitted {
    request: BroadcastRequest,
    reply_to: ShortString,
    /// How long it may run: the caller's timeout.
    limit: Duration,
}

/// Why a request does not run.
enum Refusal {
    /// Nothing of it can be trusted (too large to check, or its signature does not verify): no
    /// answer, a quiet log.
    Untrusted(&'static str),
    /// Its `reply_to` can be trusted: answered with `BadMessage` and this text, if it has one.
    Answered(&'static str, String),
}

impl Answerer {
    /// Checks, runs and answers one request, then acknowledges it. A refusal is counted once
    /// its answer, if any, is published.
    async fn answer(&self, delivery: Delivery) {
        match self.admit(&delivery) {
            Ok(admitted) => {
                let overruns = self.metrics.overruns();
                let context = || {
                    let key = TaskKey::unique(&admitted.request.function);
                    TaskContext::new(key, 0, self.context.clone(), <dyn Secession>::none())
                };
                let run = run(
                    &self.registry,
                    &self.identity,
                    overruns,
                    &admitted,
                    &context,
                );
                let result = run.await;
                self.reply(&delivery, &admitted.reply_to, result).await;
            }
            Err(Refusal::Untrusted(why)) => {
                self.quiet.refused(why);
                self.metrics.broadcast_refused(why);
            }
            Err(Refusal::Answered(why, message)) => {
                tracing::warn!(reason = %message, "refusing a broadcast request");
                if let Some(reply_to) = delivery.properties.reply_to() {
                    let failure = BroadcastFailure {
                        kind: FailureKind::BadMessage,
                        message,
                    };
                    self.reply(&delivery, reply_to, Err(failure)).await;
                }
                self.metrics.broadcast_refused(why);
            }
        }
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            tracing::debug!(error = %e, "could not acknowledge a broadcast request");
        }
    }

    /// The checks of the module docs, in order.
    fn admit(&self, delivery: &Delivery) -> std::result::Result<Admitted, Refusal> {
        let properties = &delivery.properties;
        if delivery.data.len() > self.max_bytes {
            return Err(match self.signer {
                Some(_) => Refusal::Untrusted(reason::TOO_LARGE),
                None => Refusal::Answered(
                    reason::TOO_LARGE,
                    format!(
                        "the request of {} bytes exceeds max_broadcast_bytes = {}",
                        delivery.data.len(),
                        self.max_bytes
                    ),
                ),
            });
        }
        if let Some(signer) = &self.signer {
            let kind = MessageKind::BroadcastRequest;
            if signer
                .verify_properties(kind, properties, &delivery.data)
                .is_err()
            {
                return Err(Refusal::Untrusted(reason::SIGNATURE));
            }
        }
        // The window is signed, so required with signing; checked whenever it is there.
        if self.signer.is_some() || properties.timestamp().is_some() {
            BroadcastWindow::of(properties)
                .and_then(|window| window.check(SystemTime::now()))
                .map_err(|e| Refusal::Answered(reason::WINDOW, format!("request refused: {e}")))?;
        }
        let malformed = |text: &str| Refusal::Answered(reason::MALFORMED, text.to_owned());
        let reply_to = properties
            .reply_to()
            .clone()
            .ok_or_else(|| malformed("the request has no reply_to"))?;
        let limit = properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| malformed("the request has no expiration (the caller's timeout)"))?;
        let request = ops::decode::<BroadcastRequest>(&delivery.data).map_err(|e| {
            Refusal::Answered(
                reason::MALFORMED,
                format!("the request does not decode: {e}"),
            )
        })?;
        Ok(Admitted {
            request,
            reply_to,
            limit,
        })
    }

    /// Publishes `result` to `reply_to` with the request's correlation id.
    async fn reply(
        &self,
        delivery: &Delivery,
        reply_to: &ShortString,
        result: std::result::Result<Vec<u8>, BroadcastFailure>,
    ) {
        let reply = BroadcastReply {
            worker: self.identity.id.clone(),
            result: result.map(serde_bytes::ByteBuf::from),
        };
        let body = match ops::encode(&reply) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(error = %e, "broadcast reply does not encode");
                return;
            }
        };
        let mut properties =
            BasicProperties::default().with_content_type(broker::CONTENT_TYPE.into());
        if let Some(id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let published = self
            .channel
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
}

/// Logs refusals of untrusted requests at most once per [`QUIET_LOG_EVERY`], with how many
/// there were, so that a flood of them cannot flood the log.
#[derive(Default)]
struct QuietLog {
    /// When it last logged, and the refusals since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl QuietLog {
    /// Counts one refusal for `why`, logging if one is due.
    fn refused(&self, why: &'static str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1 += 1;
        if state.0.is_none_or(|at| at.elapsed() >= QUIET_LOG_EVERY) {
            tracing::warn!(
                refused = state.1,
                last_reason = why,
                "refused broadcast requests that were too large or did not verify, unanswered \
                 (see rask_broadcasts_refused_total)"
            );
            *state = (Some(Instant::now()), 0);
        }
    }
}

/// The encoded value of the request on this worker, or why it failed.
async fn run(
    registry: &Registry,
    identity: &Identity,
    overruns: &Arc<Overruns>,
    admitted: &Admitted,
    context: &(dyn Fn() -> TaskContext + Sync),
) -> std::result::Result<Vec<u8>, BroadcastFailure> {
    let (request, limit) = (&admitted.request, admitted.limit);
    let failed = |kind: FailureKind, message: String| BroadcastFailure { kind, message };
    let encoded = |e: rask_common::Error| failed(FailureKind::Failed, e.to_string());
    match request.function.as_str() {
        ops::PING => return encode_value(ops::PONG).map_err(encoded),
        ops::INFO => return ops::encode(&identity.info()).map_err(encoded),
        _ => {}
    }
    let invocation = match registry.prepare(&request.function, &request.args, context) {
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
    let timed_out = || {
        failed(
            FailureKind::TimedOut,
            format!("ran longer than the caller's timeout of {limit:?}"),
        )
    };
    let joined = match invocation {
        Invocation::Blocking(f) => match overruns.run_blocking(f, limit).await {
            Ok(joined) => joined,
            Err(_overran) => return Err(timed_out()),
        },
        Invocation::Async(fut) => {
            let mut handle = tokio::spawn(fut);
            match tokio::time::timeout(limit, &mut handle).await {
                Ok(joined) => joined,
                Err(_) => {
                    handle.abort();
                    return Err(timed_out());
                }
            }
        }
    };
    match joined {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(failed(FailureKind::Failed, error.message().to_owned())),
        Err(join) => Err(failed(FailureKind::Panicked, join.to_string())),
    }
}
