//! What a worker stores for a task: its encoded value, or a structured failure.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::keys::TaskKey;

/// The stored result of one task (write-once in Redis, as MessagePack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The task's return value, MessagePack-encoded.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The task did not produce a value.
    Failure(TaskFailure),
}

impl Outcome {
    /// The bytes stored in Redis.
    ///
    /// # Errors
    /// [`crate::Error::Encode`] (cannot happen for outcomes built by rask).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(rmp_serde::to_vec_named(self)?)
    }

    /// Reads stored bytes back.
    ///
    /// # Errors
    /// [`crate::Error::Decode`] if the bytes are not an outcome.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// A stored outcome read without copying its value: what a worker splices into a graph task's
/// arguments ([`crate::splice`]).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename = "Outcome")]
pub enum StoredOutcome<'a> {
    /// The task's return value, MessagePack-encoded, borrowed from the stored bytes.
    Value(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    /// The task did not produce a value.
    Failure(TaskFailure),
}

impl<'a> StoredOutcome<'a> {
    /// Reads stored bytes, borrowing the value from them.
    ///
    /// # Errors
    /// [`crate::Error::Decode`] if the bytes are not an outcome.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// Why a task failed, with enough context to find it: which task, which key, which worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// The class of failure, to branch on.
    pub kind: FailureKind,
    /// What went wrong, for people.
    pub message: String,
    /// Name of the function that was called.
    pub task: String,
    /// Key of the task.
    pub key: TaskKey,
    /// Id of the worker that reported the failure.
    pub worker: String,
    /// Attempts made at the task, the failed one included (more than 1 after retries).
    #[serde(default = "one")]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

impl TaskFailure {
    /// A failure of `message`'s current attempt (its function, key and attempt count), reported
    /// by `worker`.
    pub fn of(
        message: &crate::TaskMessage,
        kind: FailureKind,
        text: impl Into<String>,
        worker: impl Into<String>,
    ) -> Self {
        TaskFailure {
            attempts: message.attempt + 1,
            ..TaskFailure::new(
                kind,
                text,
                message.function.clone(),
                message.key.clone(),
                worker,
            )
        }
    }

    /// A failure of the first attempt at `task` (key `key`) reported by `worker`.
    pub fn new(
        kind: FailureKind,
        message: impl Into<String>,
        task: impl Into<String>,
        key: TaskKey,
        worker: impl Into<String>,
    ) -> Self {
        TaskFailure {
            kind,
            message: message.into(),
            task: task.into(),
            key,
            worker: worker.into(),
            attempts: 1,
        }
    }
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} (key {}) {} on worker {}",
            self.task, self.key, self.kind, self.worker
        )?;
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TaskFailure {}

/// The class of a [`TaskFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// No worker function has the task's name.
    UnknownTask,
    /// The arguments do not decode as the function's parameters.
    BadArguments,
    /// The function panicked.
    Panicked,
    /// The function returned an error.
    Failed,
    /// The message itself was malformed (e.g. a wrong protocol version).
    BadMessage,
    /// A task this one depends on (in a task graph) failed, so this one did not run; the message
    /// names the root task that failed, its key and its error.
    DependencyFailed,
    /// A client cancelled the task before it had an outcome (`Client::cancel`); if a worker was
    /// already running it, its outcome is dropped (write-once).
    Cancelled,
    /// The task ran longer than its time limit; the worker stopped waiting for it.
    TimedOut,
    /// The message was delivered more times than the `max_deliveries` setting allows without
    /// finishing (each delivery crashed or lost its worker): it is dead-lettered.
    DeliveryLimit,
    /// The task's result was larger than the worker stores (its `max_result_bytes` setting, or
    /// Redis's `proto-max-bulk-len` if lower): it was not stored; the message gives both sizes.
    ResultTooLarge,
    /// The graph task was ready to run, but the broker refused its message for good (over the
    /// broker's `max_message_size`, unroutable): it never ran. The message gives the cause.
    Unpublishable,
    /// The task needs more of a resource (`gpu=3`) than any live worker of its queue has in
    /// total, so no worker can ever run it: the message names the resource, the amount needed
    /// and the most any live worker has.
    ResourceUnavailable,
    /// A failure kind written by a newer rask that this build does not know.
    #[serde(other)]
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::UnknownTask => "is unknown",
            FailureKind::BadArguments => "got bad arguments",
            FailureKind::Panicked => "panicked",
            FailureKind::Failed => "failed",
            FailureKind::BadMessage => "had a malformed message",
            FailureKind::DependencyFailed => "did not run: a dependency failed",
            FailureKind::Cancelled => "was cancelled",
            FailureKind::TimedOut => "timed out",
            FailureKind::DeliveryLimit => "hit the delivery limit",
            FailureKind::ResultTooLarge => "returned a result over max_result_bytes",
            FailureKind::Unpublishable => "could not be published",
            FailureKind::ResourceUnavailable => "needs resources no live worker has",
            FailureKind::Other => "failed (unknown kind)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_displays() {
        let mut failure = TaskFailure::new(
            FailureKind::Panicked,
            "boom",
            "explode",
            TaskKey::new("explode-1").unwrap(),
            "w1",
        );
        let outcome = Outcome::Failure(failure.clone());
        assert_eq!(
            Outcome::decode(&outcome.encode().unwrap()).unwrap(),
            outcome
        );
        let text = failure.to_string();
        assert!(text.contains("explode") && text.contains("panicked") && text.contains("boom"));
        assert!(!text.contains("attempts"), "{text}");
        let value = Outcome::Value(vec![0x92, 1, 2]).encode().unwrap();
        assert_eq!(
            StoredOutcome::decode(&value).unwrap(),
            StoredOutcome::Value(&[0x92, 1, 2])
        );
        assert_eq!(
            StoredOutcome::decode(&outcome.encode().unwrap()).unwrap(),
            StoredOutcome::Failure(failure.clone())
        );
        failure.attempts = 3;
        assert!(failure.to_string().contains("after 3 attempts"));
    }
}
