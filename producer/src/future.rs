//! [`Future`]: a handle on one task's result, by key, from any process.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use rask_common::TaskKey;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::Result;

/// The result of a task that may not have finished yet, typed by what the task returns.
/// Not a `std::future::Future`: call [`Future::result`] to wait for it.
pub struct Future<T> {
    client: Client,
    key: TaskKey,
    output: PhantomData<fn() -> T>,
}

impl<T> Future<T> {
    pub(crate) fn new(client: Client, key: TaskKey) -> Self {
        Future {
            client,
            key,
            output: PhantomData,
        }
    }

    /// The task's key: pass it to another process to gather the result there.
    pub fn key(&self) -> &TaskKey {
        &self.key
    }

    /// The client this future reads through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the task has finished (with a value or a failure).
    ///
    /// # Errors
    /// [`crate::Error::Store`] if Redis fails.
    pub async fn done(&self) -> Result<bool> {
        let found = self
            .client
            .store()
            .get_outcomes(std::slice::from_ref(&self.key))
            .await?;
        Ok(found.into_iter().next().flatten().is_some())
    }
}

impl<T: DeserializeOwned + Send + 'static> Future<T> {
    /// Waits for the task and returns its value (no time limit).
    ///
    /// # Errors
    /// [`crate::Error::Task`] if the task failed; other variants if rask itself did.
    pub async fn result(&self) -> Result<T> {
        let mut values = self.client.gather(std::slice::from_ref(self)).await?;
        Ok(values.remove(0))
    }

    /// Like [`Future::result`], giving up with [`crate::Error::Timeout`] after `timeout`.
    ///
    /// # Errors
    /// As [`Future::result`], or [`crate::Error::Timeout`].
    pub async fn result_within(&self, timeout: Duration) -> Result<T> {
        let mut values = self
            .client
            .gather(std::slice::from_ref(self))
            .timeout(timeout)
            .await?;
        Ok(values.remove(0))
    }
}

impl<T> Clone for Future<T> {
    fn clone(&self) -> Self {
        Future::new(self.client.clone(), self.key.clone())
    }
}

impl<T> fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Future").field(&self.key).finish()
    }
}
