//! The error type of `rask-worker`: what stops a worker (task failures never do; they are stored).

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a worker stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings, encoding, or the first connection to RabbitMQ or Redis failed.
    #[error(transparent)]
    Common(#[from] rask_common::Error),
    /// RabbitMQ failed while consuming.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker cancelled the worker's consumer (e.g. the queue was deleted).
    #[error("the broker cancelled the consumer of queue {0}")]
    ConsumerCancelled(String),
    /// The metrics endpoint could not listen on the `metrics_listen` address (e.g. the port is
    /// taken): a configuration error, not retried.
    #[error("metrics endpoint: cannot listen on {0}: {1}")]
    Metrics(std::net::SocketAddr, #[source] std::io::Error),
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
            Error::Broker(_) | Error::ConsumerCancelled(_) => true,
            Error::Metrics(..) | Error::Overruns { .. } => false,
        }
    }
}
