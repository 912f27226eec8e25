//! Data and outcomes without running tasks: [`Client::scatter`] stores local values as results,
//! [`Client::wait`] waits for outcomes without decoding them (cancellations: `cancel.rs`).

use std::future::IntoFuture;
use std::time::Duration;

use rask_common::graph::content_key;
use rask_common::message::encode_value;
use rask_common::{Outcome, TaskKey};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::future::Future;
use crate::gather::{next_outcome, BoxFuture};
use crate::retry::store_retrying;

/// The function name that scattered values' keys start with (`scatter-{hash}`).
const SCATTER: &str = "scatter";

impl Client {
    /// Stores `values` in Redis as results, as a worker would (write-once, with the TTL,
    /// announced), and returns their futures in input order: gather them, or pass them to
    /// delayed calls (`Arg::from(&future)`) so that a graph takes local data without shipping it
    /// in every message. Keys are content addressed (`scatter-{hash}` of the encoded value, hashed
    /// as graph keys are), so scattering the same value twice stores it once; graph tasks
    /// already waiting for such a key are released (and published) as by a worker.
    ///
    /// # Errors
    /// [`crate::Error`] if a value does not encode, or Redis or the broker fails (values stored
    /// before the failure stay).
    pub async fn scatter<T: Serialize>(
        &self,
        values: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Future<T>>> {
        let mut outcomes = Vec::new();
        for value in values {
            let bytes = encode_value(&value)?;
            let key = content_key(SCATTER, &bytes);
            outcomes.push((key, Outcome::Value(bytes).encode()?));
        }
        let ready = self
            .store_outcomes("storing scattered values", &outcomes)
            .await?;
        self.publish(ready.into_iter().map(Ok)).await?;
        Ok(outcomes
            .into_iter()
            .map(|(key, _)| self.future(key))
            .collect())
    }

    /// Stores `outcomes` (write-once) and releases the graph tasks waiting for them, riding out
    /// a Redis restart; returns the tasks that became ready.
    pub(crate) async fn store_outcomes(
        &self,
        what: &str,
        outcomes: &[(TaskKey, Vec<u8>)],
    ) -> Result<Vec<rask_common::TaskMessage>> {
        let wait = self.settings().reconnect_max_wait;
        let ready = store_retrying(what, wait, || async {
            Ok(self.store().store_and_release(outcomes).await?)
        })
        .await?;
        // This client publishes messages: the records are decoded (not on a worker's path).
        Ok(rask_common::dependencies::ReadyTask::messages(ready))
    }

    /// Waits until every one of `futures` has an outcome, a value or a failure, without reading
    /// the values as `T` (a failed task is not an error here). Await it directly, or first set
    /// [`Wait::timeout`].
    pub fn wait<T>(&self, futures: &[Future<T>]) -> Wait<'_> {
        Wait {
            client: self,
            keys: futures.iter().map(|f| f.key().clone()).collect(),
            timeout: None,
        }
    }
}

/// A pending [`Client::wait`]; await it for `()` once every outcome is stored.
#[must_use = "a wait does nothing until awaited"]
pub struct Wait<'a> {
    client: &'a Client,
    keys: Vec<TaskKey>,
    timeout: Option<Duration>,
}

impl Wait<'_> {
    /// Gives up with [`Error::Timeout`] if some outcome is still missing after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<'a> IntoFuture for Wait<'a> {
    type Output = Result<()>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let mut waiter = self.client.waiter(self.keys);
            let started = Instant::now();
            let deadline = self.timeout.map(|t| started + t);
            loop {
                let next = match deadline {
                    Some(at) => {
                        match tokio::time::timeout_at(at, next_outcome(&mut waiter)).await {
                            Ok(next) => next,
                            Err(_elapsed) => {
                                let pending = waiter.pending_indices();
                                let first = *pending.iter().min().expect("one is pending");
                                return Err(Error::Timeout {
                                    waited: started.elapsed(),
                                    pending: pending.len(),
                                    first: waiter.key(first).clone(),
                                });
                            }
                        }
                    }
                    None => next_outcome(&mut waiter).await,
                };
                match next {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    // Stored, whatever it is (even bytes that do not decode as an outcome).
                    Some(Ok(_)) => {}
                }
            }
        })
    }
}
