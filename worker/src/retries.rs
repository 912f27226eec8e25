//! Retrying a task whose function failed with a retryable error
//! ([`rask_common::TaskError::retryable`]) while its [`rask_common::RetryPolicy`] allows another
//! attempt: nothing is stored; the message goes back with `attempt + 1` through the delay ladder
//! in front of the task queue ([`Destination::after`]), so the wait happens in the broker, never
//! in a worker holding a message.
//!
//! Order: publish the next attempt and wait for the broker's confirm, then acknowledge the
//! delivery. If publishing fails, the delivery is requeued instead and the attempt runs again
//! (a crash between the confirm and the ack does the same: the attempt may run twice, never
//! zero times). The last attempt's failure is stored like any outcome, with `attempts` set. A
//! graph task is republished as it was received, placeholders and all, so each attempt reads
//! its inputs afresh; its dependents are released only by its final outcome.

use std::time::Duration;

use rask_common::delay;
use rask_common::{Settings, TaskMessage};

use crate::release::ConfirmChannel;
use crate::send_back::send_back_ticket;
use crate::ticket::Ticket;

/// The next attempt at a task, and how long it waits in the broker before it may run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Retry {
    message: TaskMessage,
    delay: Duration,
}

impl Retry {
    /// The next attempt's message and how long it waits (for a batch, which publishes it
    /// itself, `batch.rs`).
    pub(crate) fn into_parts(self) -> (TaskMessage, Duration) {
        (self.message, self.delay)
    }
}

/// The retry of `message` after an attempt that failed, if the failure was `retryable` and the
/// message's policy allows another attempt; `None` when the failure is final.
pub(crate) fn next_attempt(message: &TaskMessage, retryable: bool) -> Option<Retry> {
    next_attempt_with(message, retryable, jitter())
}

/// [`next_attempt`] with a given `jitter` in `[0, 1]`.
fn next_attempt_with(message: &TaskMessage, retryable: bool, jitter: f64) -> Option<Retry> {
    let policy = message.retry.filter(|_| retryable)?;
    let attempts = message.attempt.saturating_add(1);
    if !policy.allows_another(attempts) {
        return None;
    }
    Some(Retry {
        // A backoff the delay ladder cannot hold (over 49 days) waits as long as it can.
        delay: policy.delay(attempts, jitter).min(delay::MAX_DELAY),
        // A new attempt takes new tokens of its function's and its pool's rate limits.
        message: TaskMessage {
            attempt: attempts,
            rate_token: false,
            pool_rate_token: false,
            ..message.clone()
        },
    })
}

/// Publishes `retry` to its delay queue (confirmed), then settles `ticket` (acknowledges its
/// delivery); requeues instead if publishing fails.
pub(crate) async fn schedule(
    channel: &ConfirmChannel,
    settings: &Settings,
    retry: Retry,
    ticket: Ticket,
) {
    let Retry { message, delay } = retry;
    let what = "schedule a retry";
    if send_back_ticket(channel, settings, &message, delay, ticket, what).await {
        tracing::info!(
            key = %message.key,
            task = %message.function,
            attempt = message.attempt + 1,
            max_attempts = message.retry.map_or(1, |p| p.max_attempts),
            ?delay,
            "retry scheduled"
        );
    }
}

/// A random number in `[0, 1)`, from the random bits of a v4 UUID.
fn jitter() -> f64 {
    let (bits, _) = uuid::Uuid::new_v4().as_u64_pair();
    // 53 random bits: exactly representable, uniformly spread.
    #[allow(clippy::cast_precision_loss)]
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
    unit
}

#[cfg(test)]
mod tests {
    use rask_common::{RetryPolicy, TaskKey};

    use super::*;

    fn message(attempt: u32, policy: Option<RetryPolicy>) -> TaskMessage {
        TaskMessage {
            attempt,
            retry: policy,
            ..TaskMessage::new(TaskKey::new("k").unwrap(), "f", vec![0x90])
                .with_deps(vec![TaskKey::new("dep").unwrap()])
        }
    }

    #[test]
    fn a_retryable_failure_is_retried_while_the_policy_allows() {
        let policy =
            RetryPolicy::new(3).backoff(Duration::from_millis(100), Duration::from_secs(1));
        let first = next_attempt_with(&message(0, Some(policy)), true, 1.0).unwrap();
        assert_eq!(
            first.message,
            message(1, Some(policy)),
            "the same message, one attempt on"
        );
        assert_eq!(first.delay, Duration::from_millis(100));
        let second = next_attempt_with(&first.message, true, 1.0).unwrap();
        assert_eq!(second.message.attempt, 2);
        assert_eq!(second.delay, Duration::from_millis(200));
        assert_eq!(
            next_attempt_with(&second.message, true, 1.0),
            None,
            "3 attempts made"
        );
    }

    #[test]
    fn other_failures_and_tasks_without_a_policy_are_final() {
        let policy = RetryPolicy::new(3);
        assert_eq!(
            next_attempt_with(&message(0, Some(policy)), false, 0.5),
            None
        );
        assert_eq!(next_attempt_with(&message(0, None), true, 0.5), None);
        assert_eq!(
            next_attempt_with(&message(0, Some(RetryPolicy::new(1))), true, 0.5),
            None
        );
    }

    #[test]
    fn jitter_is_a_unit_fraction_and_varies() {
        let draws: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(draws.iter().any(|j| *j != draws[0]));
    }
}
