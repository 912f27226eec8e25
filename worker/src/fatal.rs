//! A permanent error found away from the worker loop (by the result writer, or while admitting a
//! delivery) that must stop the worker: raised once by whoever finds it, awaited by the loop of
//! the connection, which then stops consuming, drains, and returns it.

use std::sync::{Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The first fatal error of one connection's worth of work, if any.
#[derive(Default)]
pub(crate) struct Fatal {
    raised: CancellationToken,
    error: Mutex<Option<Error>>,
}

impl Fatal {
    /// Records `error` (unless another came first) and wakes [`Fatal::raised`].
    pub(crate) fn raise(&self, error: Error) {
        tracing::error!(error = %error, "stopping the worker: this cannot be retried");
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(error);
        self.raised.cancel();
    }

    /// Completes once an error is raised.
    pub(crate) async fn raised(&self) {
        self.raised.cancelled().await;
    }

    /// The raised error, taken out.
    pub(crate) fn take(&self) -> Option<Error> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}
