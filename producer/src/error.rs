//! The error type of the `rask` client library.

use std::time::Duration;

use rask_common::{TaskFailure, TaskKey};

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client call can fail with. A task's own failure is [`Error::Task`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task ran (or was rejected by a worker) and failed: which task, key, worker and why.
    #[error(transparent)]
    Task(Box<TaskFailure>),
    /// The wait ended before these tasks finished.
    #[error("timed out after {waited:?} with {pending} task(s) unfinished (first: {first})")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// How many tasks had no result yet.
        pending: usize,
        /// The key of one of them.
        first: TaskKey,
    },
    /// The task's result is stored but is not of the type the caller asked for.
    #[error("result of {key} does not decode as {expected}: {error}")]
    ResultType {
        /// The task's key.
        key: TaskKey,
        /// The Rust type asked for.
        expected: &'static str,
        /// What the decoder said.
        error: String,
    },
    /// An argument of a delayed call did not encode as MessagePack (found by `persist`).
    #[error("an argument of {function} (key {key}) does not encode: {error}")]
    Argument {
        /// The function called.
        function: String,
        /// The call's key.
        key: TaskKey,
        /// What the encoder said.
        error: String,
    },
    /// A graph node was given a countdown or an eta ([`rask_common::Delayed::with_options`]):
    /// graph nodes start when their inputs are stored, so a start time is refused (found by
    /// `persist`, before anything is registered). Persist the graph later, or delay a task of
    /// its own with `submit_with`.
    #[error(
        "graph task {function} (key {key}) has a countdown or eta: graph tasks start when their \
         inputs are stored; persist the graph later instead"
    )]
    DelayedNode {
        /// The function called.
        function: String,
        /// The call's key.
        key: TaskKey,
    },
    /// RabbitMQ refused a published task (negative publisher confirm), and kept refusing it
    /// when published again for the `reconnect_max_wait` setting (a quorum queue refuses
    /// publishes while it elects a leader, e.g. after a node of the cluster was lost).
    #[error("the broker refused task {0} (nack)")]
    Nacked(TaskKey),
    /// RabbitMQ could not route a published task to any queue.
    #[error("task {key} could not be routed: exchange {exchange:?} has no queue bound for {routing_key:?}")]
    Unroutable {
        /// The task's key.
        key: TaskKey,
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// A task message is larger than the `max_message_bytes` setting allows; nothing of it was
    /// published.
    #[error("task {key} is {bytes} bytes encoded, over max_message_bytes = {max}")]
    TooLarge {
        /// The task's key.
        key: TaskKey,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A broadcast request ([`crate::Client::run`]) is larger than the `max_broadcast_bytes`
    /// setting allows (workers would drop it unanswered); nothing was published.
    #[error("the broadcast request for {function} is {bytes} bytes encoded, over max_broadcast_bytes = {max}")]
    BroadcastTooLarge {
        /// The function called.
        function: String,
        /// The request's encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// RabbitMQ dropped the connection and could not be reached again within the
    /// `reconnect_max_wait` setting. Tasks confirmed before stay queued; the call that failed
    /// may have published some of its tasks.
    #[error(
        "the broker could not be reached again within {waited:?} (reconnect_max_wait): {last}"
    )]
    Reconnect {
        /// How long the client tried.
        waited: Duration,
        /// The error of the last attempt.
        last: Box<Error>,
    },
    /// Fewer live workers than asked for registered before the timeout of
    /// [`crate::Client::wait_for_workers`].
    #[error("timed out after {waited:?} waiting for {wanted} worker(s) of {pool}: {found} live")]
    WorkersTimeout {
        /// How long the caller waited.
        waited: Duration,
        /// Workers asked for.
        wanted: usize,
        /// Live workers found at the last look.
        found: usize,
        /// The pool they had to serve (`any pool` when none was named).
        pool: String,
    },
    /// The client was closed ([`crate::Client::close`]): it no longer publishes.
    #[error("the client is closed")]
    Closed,
    /// The listener for completions stopped (the client is shutting down).
    #[error("the completion listener stopped")]
    ListenerStopped,
    /// The task's result was kept in the blob store (`blob_url`) and is gone from there
    /// (deleted by a `release` or `purge`, or expired by the bucket's lifecycle rule).
    #[error("the result of {key} was kept in the blob store as {digest}, which is gone")]
    ResultGone {
        /// The task.
        key: TaskKey,
        /// The blob's digest (hex).
        digest: String,
    },
    /// Settings, keys, encoding, or connecting.
    #[error(transparent)]
    Common(#[from] rask_common::Error),
    /// RabbitMQ failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Redis failed.
    #[error("store: {0}")]
    Store(#[from] redis::RedisError),
    /// A performance report ([`crate::Client::report`]) could not be written to its file.
    #[error("cannot write the report {}: {source}", path.display())]
    Report {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Error {
    /// The task failure, if this is one.
    pub fn failure(&self) -> Option<&TaskFailure> {
        match self {
            Error::Task(f) => Some(f),
            _ => None,
        }
    }

    /// Whether Redis failed (lost connection, timeout, refusal): reading again later may work.
    pub fn is_store_failure(&self) -> bool {
        match self {
            Error::Store(_) => true,
            Error::Common(e) => matches!(e, rask_common::Error::Store(_)),
            _ => false,
        }
    }

    /// Whether waiting timed out (the tasks may still finish later, the workers start later).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::WorkersTimeout { .. })
    }
}

impl From<TaskFailure> for Error {
    fn from(failure: TaskFailure) -> Self {
        Error::Task(Box::new(failure))
    }
}
