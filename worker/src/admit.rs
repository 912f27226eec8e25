//! What a delivery must pass before its task runs: a valid signature when `signing_keys` are
//! set, a body within `max_message_bytes`, a body that decodes as a task message, and, for a
//! redelivery only, the delivery limit. What fails is dead-lettered with a reason, and fails its
//! task's future where the key can be read.
//!
//! The signature comes first, before anything of the body is read; only its size is checked
//! before, so that no HMAC is computed over a body larger than `max_message_bytes` (such a body
//! does not verify). A message that does not verify (unsigned, forged, tampered with, signed
//! with a key this worker does not hold, or too large to check) is dead-lettered and
//! acknowledged, and *nothing* is stored for it: not a failure on its key, not
//! a redelivery count. Its key is whatever its publisher wrote, and results are write-once, so
//! storing a failure there would let anyone who can publish fail someone else's task before it
//! runs (or after: a graph dependent waits on that key). The cost: a legitimate task whose
//! message does not verify (keys rotated in the wrong order, say) leaves its future waiting
//! until the client's timeout; the dead-letter queue says why, and `rask dead requeue` replays
//! it once the keys are right.
//!
//! The delivery limit (`max_deliveries`, poison messages). RabbitMQ marks a delivery
//! `redelivered` when the message went back to the queue unacknowledged: its worker crashed,
//! lost its connection, stopped past its grace period, or requeued it. For such a delivery only
//! (first deliveries cost nothing), the worker counts it in Redis (`INCR` of
//! [`rask_common::Keys::deliveries`], kept for the result TTL) and reads whether the task
//! already has an outcome, in one round trip. The count is thus the number of earlier
//! deliveries of the task that went back to the queue unacknowledged. Then:
//! - an outcome is stored (its worker stored it and died before acknowledging, or publishing its
//!   released dependents failed): the task does not run again; the stored outcome goes through
//!   the writer once more (a no-op store that releases its graph dependents again) and the
//!   delivery is acknowledged. Such redeliveries count too: once the count reaches
//!   `max_deliveries`, dependents that still cannot be published fail (`Unpublishable`)
//!   instead of the delivery going back to the queue, so no redelivery loop is endless;
//! - the count reached `max_deliveries`: the task does not run; a copy goes to the dead-letter
//!   queue with the reason and its future fails with `DeliveryLimit`;
//! - otherwise it runs. With `max_deliveries = N` a task that kills its worker runs N times
//!   (`0`: no limit; redeliveries are still counted and checked for an outcome).
//!
//! With `queue_type = quorum` the queue counts for itself: a redelivery carries
//! `x-delivery-count`, the number of earlier deliveries that ended without an acknowledgement
//! (the same number the Redis counter holds), so the worker only reads whether an outcome is
//! stored (one `MGET`) and writes no counter. Retries and dead letters are new messages, so
//! neither count.
//!
//! A hedge copy (`TaskMessage::hedge`, see `rask_common::hedge`) is checked for an outcome on
//! its first delivery too (one `GET`, for hedge copies only): when the other copy of the task
//! finished first, the copy does not run; its stored outcome goes through the writer as above.

use lapin::message::Delivery;
use rask_common::broker;
use rask_common::message::{head, Undecodable};
use rask_common::settings::QueueType;
use rask_common::signing::MessageKind;
use rask_common::{FailureKind, TaskFailure, TaskKey, TaskMessage};

use crate::dead_letter::{copy_to_dead_letters, settle_unkeyed};
use crate::error::Error;
use crate::metrics::DeadLetterCause;
use crate::retry;
use crate::worker::Shared;

/// What to do with a delivery.
pub(crate) enum Admission {
    /// Run this task.
    Run(TaskMessage),
    /// Do not run it: store this failure for the key (it was dead-lettered first).
    Refuse(TaskKey, TaskFailure),
    /// Do not run it: it already has this stored `outcome` (encoded), to store and release
    /// again. `last`: the delivery limit is reached, so its dependents that cannot be published
    /// now fail instead of the delivery going back to the queue once more.
    Stored {
        key: TaskKey,
        outcome: Vec<u8>,
        last: bool,
        /// The client to send the outcome to (`TaskMessage::reply`).
        reply: Option<rask_common::reply::ReplyTo>,
    },
    /// Nothing more to do: the delivery was dead-lettered and settled (no key to report on).
    Settled,
    /// Nothing more to do: Redis refused what every delivery needs and the worker stops; the
    /// delivery goes back to the queue when the channel closes.
    Abandoned,
}

/// Raises the fatal error of Redis refusing `what` (the worker stops) and abandons the
/// delivery.
fn abandon(shared: &Shared, what: &'static str, source: rask_common::Error) -> Admission {
    shared.fatal.raise(Error::StoreRefused { what, source });
    Admission::Abandoned
}

/// Checks `delivery` (see the module docs); dead-letters and settles what has no key to report
/// on.
pub(crate) async fn admit(shared: &Shared, delivery: &Delivery) -> Admission {
    if delivery.redelivered {
        shared.metrics.redelivered();
    }
    let mut signed_as = None;
    if let Some(signer) = &shared.signer {
        // The size first: a body over the limit is not even hashed to check its signature.
        let verified = if delivery.data.len() > shared.settings.max_message_bytes {
            Err(oversized(shared.settings.max_message_bytes, &delivery.data))
        } else {
            signer
                .verify_task_or_batch(&delivery.properties, &delivery.data)
                .map_err(|unverified| unverified.to_string())
        };
        match verified {
            Ok(kind) => signed_as = Some(kind),
            Err(reason) => return unverified(shared, delivery, &reason).await,
        }
    }
    let mut message = match decode(shared.settings.max_message_bytes, &delivery.data) {
        Ok(message) => message,
        Err(bad) => return refuse(shared, delivery, FailureKind::BadMessage, bad.into()).await,
    };
    // The body's trace context when it has one (signed with it), else the W3C headers' (a
    // producer that writes only those); a message with neither reads no header.
    if message.trace.is_none() {
        if let Some(headers) = delivery.properties.headers() {
            message.trace = rask_common::trace::TraceContext::from_headers(headers);
        }
    }
    // A batch signed as a task, or a task signed as a batch, was not published as it is.
    if let Some(kind) = signed_as.filter(|kind| *kind != MessageKind::of_task(&message)) {
        let reason = format!(
            "message signature does not verify: a {kind} signature on a {}",
            MessageKind::of_task(&message)
        );
        return unverified(shared, delivery, &reason).await;
    }
    // A batch message counts its redeliveries and reads its calls' outcomes itself (`batch.rs`).
    if message.is_batch() {
        return Admission::Run(message);
    }
    if !delivery.redelivered {
        if message.hedge {
            // A hedge copy: the other copy may have stored an outcome already.
            return unless_stored(shared, message).await;
        }
        return Admission::Run(message);
    }
    let key = &message.key;
    let (count, stored) = match shared.settings.queue_type {
        QueueType::Classic => {
            let counted = retry::until_ok("counting a redelivery", || {
                shared.store.count_redelivery(key)
            })
            .await;
            match counted {
                Ok(counted) => counted,
                Err(e) => return abandon(shared, "counting redeliveries", e),
            }
        }
        // A redelivery was delivered at least once before, whatever the header says.
        QueueType::Quorum => (
            broker::quorum_delivery_count(&delivery.properties).max(1),
            true,
        ),
    };
    let max = shared.settings.max_deliveries;
    let limit_reached = max != 0 && count >= u64::from(max);
    if stored {
        let outcomes = retry::until_ok("reading an outcome", || {
            shared.store.get_outcomes(std::slice::from_ref(key))
        })
        .await;
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => return abandon(shared, "reading outcomes", e),
        };
        if let Some(Some(bytes)) = outcomes.into_iter().next() {
            tracing::info!(key = %key, count, "redelivered task already has an outcome; not running it again");
            return Admission::Stored {
                key: message.key,
                outcome: bytes,
                last: limit_reached,
                reply: message.reply,
            };
        }
    }
    if !limit_reached {
        return Admission::Run(message);
    }
    let refusal = Refusal {
        reason: format!(
            "delivered {count} times without an outcome (max_deliveries = {max}): its worker \
             crashed or vanished each time"
        ),
        attempts: message.attempt + 1,
        key: Some(message.key),
        function: Some(message.function),
    };
    refuse(shared, delivery, FailureKind::DeliveryLimit, refusal).await
}

/// Runs `message` (a hedge copy, `TaskMessage::hedge`) unless its task has an outcome stored
/// already: one `GET`, for hedge copies only.
async fn unless_stored(shared: &Shared, message: TaskMessage) -> Admission {
    let key = &message.key;
    let outcomes = retry::until_ok("reading an outcome", || {
        shared.store.get_outcomes(std::slice::from_ref(key))
    })
    .await;
    match outcomes {
        Ok(outcomes) => match outcomes.into_iter().next() {
            Some(Some(bytes)) => {
                tracing::info!(key = %key, "hedge copy of a task that already has an outcome; not running it");
                Admission::Stored {
                    key: message.key,
                    outcome: bytes,
                    last: false,
                    reply: message.reply,
                }
            }
            _ => Admission::Run(message),
        },
        Err(e) => abandon(shared, "reading outcomes", e),
    }
}

/// Dead-letters and settles a delivery whose signature does not verify (nothing is stored: see
/// the module docs).
async fn unverified(shared: &Shared, delivery: &Delivery, reason: &str) -> Admission {
    let s = &shared.settings;
    let copied = copy_to_dead_letters(&shared.confirms, s, &shared.id, delivery, reason).await;
    shared.metrics.dead_lettered(DeadLetterCause::Signature);
    settle_unkeyed(delivery, copied).await;
    Admission::Settled
}

/// The task message in `body`, or why it is not one (with its key where it can be read). A body
/// over `max_bytes` is not decoded: only its key and function are read.
fn decode(max_bytes: usize, body: &[u8]) -> Result<TaskMessage, Undecodable> {
    if body.len() > max_bytes {
        let (key, function) = head(body);
        return Err(Undecodable {
            key,
            function,
            reason: oversized(max_bytes, body),
        });
    }
    TaskMessage::decode(body)
}

/// Why `body`, over `max_bytes`, is refused.
fn oversized(max_bytes: usize, body: &[u8]) -> String {
    format!(
        "message of {} bytes exceeds max_message_bytes = {max_bytes}",
        body.len()
    )
}

/// Why a task will not run, with what is known of it.
struct Refusal {
    key: Option<TaskKey>,
    function: Option<String>,
    attempts: u32,
    reason: String,
}

impl From<Undecodable> for Refusal {
    fn from(bad: Undecodable) -> Self {
        Refusal {
            key: bad.key,
            function: bad.function,
            attempts: 1,
            reason: bad.reason,
        }
    }
}

/// Dead-letters `delivery` with the reason of `refusal`; then, when its key is known, returns the
/// `kind` of failure to store on it, else settles the delivery.
async fn refuse(
    shared: &Shared,
    delivery: &Delivery,
    kind: FailureKind,
    refusal: Refusal,
) -> Admission {
    let s = shared.pools.of_queue(delivery.routing_key.as_str());
    let reason = &refusal.reason;
    let copied = copy_to_dead_letters(&shared.confirms, s, &shared.id, delivery, reason).await;
    shared.metrics.dead_lettered(match kind {
        FailureKind::DeliveryLimit => DeadLetterCause::DeliveryLimit,
        _ => DeadLetterCause::BadMessage,
    });
    let Some(key) = refusal.key else {
        settle_unkeyed(delivery, copied).await;
        return Admission::Settled;
    };
    shared
        .events
        .dead_lettered(&key, refusal.function.as_deref(), reason);
    // Whoever waits on the key (a client, or graph tasks depending on it) learns why: the
    // failure is stored and released like any outcome, then the delivery is acknowledged.
    let failure = TaskFailure {
        attempts: refusal.attempts,
        ..TaskFailure::new(
            kind,
            refusal.reason,
            refusal.function.unwrap_or_default(),
            key.clone(),
            shared.id.clone(),
        )
    };
    Admission::Refuse(key, failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_bodies_are_refused_with_their_key() {
        let message = TaskMessage::new(TaskKey::new("echo-1").unwrap(), "echo", vec![0xc0; 4096]);
        let body = message.encode().unwrap();
        assert_eq!(decode(body.len(), &body), Ok(message.clone()));
        let bad = decode(1024, &body).unwrap_err();
        assert_eq!(bad.key, Some(message.key));
        let expected = format!(
            "message of {} bytes exceeds max_message_bytes = 1024",
            body.len()
        );
        assert_eq!(bad.reason, expected);
    }

    #[test]
    fn the_head_of_a_large_message_is_read() {
        let message = TaskMessage::new(TaskKey::new("echo-1").unwrap(), "echo", vec![0xc0; 4096]);
        let (key, function) = head(&message.encode().unwrap());
        assert_eq!(key, Some(message.key));
        assert_eq!(function.as_deref(), Some("echo"));
        assert_eq!(head(b"\xc1 garbage"), (None, None));
    }
}
