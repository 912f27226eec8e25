//! The error type of `rask-worker`: what stops a worker (task failures never do; they are stored).

use rask_common::ErrorKind;

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The exit code of a worker stopped by an error of [`ErrorKind::Configuration`]: `EX_CONFIG`
/// of sysexits(3). A supervisor should not restart such a worker until its settings or the
/// servers' configuration change (`rask local` does not).
pub const EXIT_CONFIG: i32 = 78;

/// Why a worker stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings, encoding, connecting to RabbitMQ or Redis, or declaring the topology failed.
    #[error(transparent)]
    Common(#[from] rask_common::Error),
    /// RabbitMQ failed while the worker set up its channels.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The channel or connection the worker consumed on failed (the broker restarted, the
    /// network failed, a delivery was not acknowledged within the broker's consumer timeout):
    /// connecting again fixes it.
    #[error("broker: consuming: {0}")]
    Consuming(lapin::Error),
    /// The broker cancelled the worker's consumer (e.g. the queue was deleted).
    #[error("the broker cancelled the consumer of queue {0}")]
    ConsumerCancelled(String),
    /// The metrics endpoint could not listen on the `metrics_listen` address (e.g. the port is
    /// taken): a configuration error, not retried.
    #[error("metrics endpoint: cannot listen on {0}: {1}")]
    Metrics(std::net::SocketAddr, #[source] std::io::Error),
    /// Redis refused `what` the worker must do for every task (store outcomes, count
    /// redeliveries, read inputs) for a reason no retry fixes: a replica where a primary is
    /// needed (`READONLY`), missing ACL permissions (`NOPERM`), a refused login.
    #[error(
        "Redis refused {what}: {source}; redis_url must name a primary whose user may write \
         the keys under key_prefix and run scripts"
    )]
    StoreRefused {
        /// What the worker was doing.
        what: &'static str,
        /// Redis's refusal.
        source: rask_common::Error,
    },
    /// The function given to [`crate::Registry::with_state`] for worker state `state` failed:
    /// the worker did not start (a configuration error: a restart would fail the same way).
    #[error("building worker state {state} failed: {source}")]
    State {
        /// The state's type.
        state: &'static str,
        /// The error of its `init`.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Task `task` takes worker state `state`, which no [`crate::Registry::with_state`] of the
    /// worker's registry builds: the worker did not start.
    #[error(
        "task {task} takes worker state {state}, which this worker's registry does not build \
         (add it with Registry::with_state)"
    )]
    MissingState {
        /// The task's name.
        task: &'static str,
        /// The state's type.
        state: &'static str,
    },
    /// Threads of plain functions that ran past their time limit reached the
    /// `max_overrun_threads` setting: the worker stopped, so that a fresh process replaces it
    /// (the only way to end those threads).
    #[error(
        "{running} threads of plain functions ran on past their time limit \
         (max_overrun_threads = {max}): the worker stopped so that a fresh process replaces it"
    )]
    Overruns {
        /// Threads still running past their limit when the worker stopped.
        running: usize,
        /// The `max_overrun_threads` bound.
        max: usize,
    },
}

impl Error {
    /// Whether the error came from a lost or refused connection, so that connecting again may
    /// fix it.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Common(e) => e.is_connection(),
            Error::Broker(_) | Error::Consuming(_) | Error::ConsumerCancelled(_) => true,
            Error::Metrics(..)
            | Error::StoreRefused { .. }
            | Error::Overruns { .. }
            | Error::State { .. }
            | Error::MissingState { .. } => false,
        }
    }

    /// Whether connecting again can help: [`ErrorKind::Transient`] for lost connections and
    /// cancelled consumers, [`ErrorKind::Configuration`] for refusals of the settings (a queue
    /// declared with other arguments, missing permissions, a taken metrics address, a Redis
    /// replica, worker state that cannot be built), by the broker's and the store's reply codes
    /// ([`rask_common::Error::kind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Common(e) | Error::StoreRefused { source: e, .. } => e.kind(),
            Error::Broker(e) => ErrorKind::of_broker(e),
            // Connecting again fixes the first two; a fresh process, the last.
            Error::Consuming(_) | Error::ConsumerCancelled(_) | Error::Overruns { .. } => {
                ErrorKind::Transient
            }
            Error::Metrics(..) | Error::State { .. } | Error::MissingState { .. } => {
                ErrorKind::Configuration
            }
        }
    }

    /// Whether connecting again cannot fix it: [`Error::kind`] is not
    /// [`ErrorKind::Transient`].
    pub fn is_permanent(&self) -> bool {
        self.kind() != ErrorKind::Transient
    }

    /// The exit code a worker binary should end with after this error: [`EXIT_CONFIG`] (78)
    /// for an [`ErrorKind::Configuration`] error, else 1.
    pub fn exit_code(&self) -> i32 {
        match self.kind() {
            ErrorKind::Configuration => EXIT_CONFIG,
            _ => 1,
        }
    }
}
