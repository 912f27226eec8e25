//! Cancelling tasks: [`Client::cancel`] stores `Cancelled` outcomes; with [`Cancel::force`] it
//! also revokes the tasks, so that workers drop them at admission and stop them if they run.

use std::future::IntoFuture;

use rask_common::{FailureKind, Outcome, TaskFailure, TaskKey};

use crate::client::Client;
use crate::error::Result;
use crate::future::Future;
use crate::gather::BoxFuture;
use crate::retry::store_retrying;

impl Client {
    /// Cancels the tasks of `futures` that have no outcome yet: stores a
    /// [`FailureKind::Cancelled`] failure for each (write-once, so a task that finishes first
    /// keeps its outcome) and releases the graph tasks waiting for them, which then fail with
    /// `FailureKind::DependencyFailed` naming the cancelled task. Await it for how many futures
    /// had no outcome when looked at (a task finishing meanwhile keeps its own).
    ///
    /// Without [`Cancel::force`], a task a worker already started runs to the end, but its
    /// outcome is dropped; a queued one is not removed from the queue (it runs when its turn
    /// comes, and its outcome is dropped too). With it, workers do not run queued ones and stop
    /// running ones (see [`Cancel::force`]).
    ///
    /// # Errors
    /// The awaited [`Cancel`] fails with [`crate::Error`] if Redis or the broker fails
    /// (cancellations stored before stay).
    pub fn cancel<T>(&self, futures: &[Future<T>]) -> Cancel<'_> {
        let mut seen = std::collections::HashSet::new();
        let keys = futures
            .iter()
            .map(|f| f.key().clone())
            .filter(|k| seen.insert(k.clone()))
            .collect();
        Cancel {
            client: self,
            keys,
            force: false,
        }
    }
}

/// A pending [`Client::cancel`]; await it for how many tasks had no outcome.
#[must_use = "a cancel does nothing until awaited"]
pub struct Cancel<'a> {
    client: &'a Client,
    keys: Vec<TaskKey>,
    force: bool,
}

impl Cancel<'_> {
    /// Also stops the work: the cancelled tasks are revoked in Redis (for the result TTL,
    /// `{prefix}:revoked`) and every worker is told at once. A worker drops a revoked task it
    /// receives without running it (it acknowledges it; the outcome is already `Cancelled`),
    /// including workers started later; a running one is stopped: an async body is dropped at
    /// its current `.await`, a plain function sees its cancellation token and is abandoned
    /// after the workers' `cancel_grace` if it does not return (its thread runs on, counted like
    /// a time-limit overrun). Tasks that already had an outcome keep it and are not revoked.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }
}

impl<'a> IntoFuture for Cancel<'a> {
    type Output = Result<usize>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let client = self.client;
            let keys = self.keys;
            let wait = client.settings().reconnect_max_wait;
            let stored = store_retrying("reading outcomes", wait, || async {
                Ok(client.store().get_outcomes(&keys).await?)
            })
            .await?;
            let mut outcomes = Vec::new();
            for (key, found) in keys.into_iter().zip(stored) {
                if found.is_none() {
                    outcomes.push((key.clone(), cancelled(key).encode()?));
                }
            }
            let ready = client
                .store_outcomes("storing cancellations", &outcomes)
                .await?;
            client.publish(ready.into_iter().map(Ok)).await?;
            client.events_log().cancelled(
                outcomes
                    .iter()
                    .map(|(key, _)| (key.clone(), function_of(key).to_owned())),
            );
            if self.force {
                // After the outcomes: a worker that drops a revoked task finds its outcome.
                let revoked: Vec<TaskKey> = outcomes.into_iter().map(|(k, _)| k).collect();
                store_retrying("storing revocations", wait, || async {
                    Ok(client.store().revoke(&revoked).await?)
                })
                .await?;
                return Ok(revoked.len());
            }
            Ok(outcomes.len())
        })
    }
}

/// The `Cancelled` failure a client stores for `key`.
/// The function a task key names (`inc-00ff…` -> `inc`), or the whole key.
fn function_of(key: &TaskKey) -> &str {
    key.as_str()
        .rsplit_once('-')
        .map_or(key.as_str(), |(name, _)| name)
}

fn cancelled(key: TaskKey) -> Outcome {
    let function = function_of(&key).to_owned();
    Outcome::Failure(TaskFailure::new(
        FailureKind::Cancelled,
        "cancelled by a client before it had an outcome",
        function,
        key,
        "client",
    ))
}
