//! [`ContextExt`]: what a task body running on a worker does with the client of that worker:
//! launch more tasks and wait for them without holding the worker's concurrency slot.
//!
//! The client is built on first use, once per worker process, from the worker's settings, and
//! shared by its tasks (`rask-common` keeps it type-erased in the
//! [`rask_common::context::WorkerContext`], so that the worker crate need not depend on this
//! one).

use std::future::Future as StdFuture;

use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::Result;
use crate::future::Future;
use crate::TaskContext;

/// Tasks that launch tasks: the client of the worker a task runs on, and gathering that gives
/// the worker's concurrency slot back while it waits.
///
/// ```
/// use rask::{task, ContextExt, TaskContext};
///
/// task! {
///     /// The sum of 1..=n, as a chain of tasks.
///     pub async fn triangle(ctx: &TaskContext, n: u64) -> Result<u64, rask::Error> {
///         if n == 0 {
///             return Ok(0);
///         }
///         let client = ctx.client().await?;
///         let rest = client.submit(triangle, (n - 1,)).await?;
///         // The worker runs other tasks (this one's child, say) while this one waits.
///         Ok(n + ctx.gather(&[rest]).await?[0])
///     }
/// }
/// ```
pub trait ContextExt {
    /// The client of the worker the task runs on: connected on first use (once per worker
    /// process) with the worker's settings, then shared by all its tasks.
    ///
    /// # Errors
    /// As [`Client::connect`] (a failed connect is tried again on the next call).
    fn client(&self) -> impl StdFuture<Output = Result<Client>> + Send;

    /// [`Client::gather`] of `futures` (their results in order, the first failure as the
    /// error) while the task holds no concurrency slot of its worker
    /// ([`TaskContext::secede`]): so a task may wait for tasks it launched, however deep the
    /// tree and whatever the worker's concurrency.
    ///
    /// # Errors
    /// As [`Client::gather`].
    fn gather<'a, T>(
        &'a self,
        futures: &'a [Future<T>],
    ) -> impl StdFuture<Output = Result<Vec<T>>> + Send + 'a
    where
        T: DeserializeOwned + Send + 'static;
}

impl ContextExt for TaskContext {
    fn client(&self) -> impl StdFuture<Output = Result<Client>> + Send {
        self.worker_client(Client::connect)
    }

    fn gather<'a, T>(
        &'a self,
        futures: &'a [Future<T>],
    ) -> impl StdFuture<Output = Result<Vec<T>>> + Send + 'a
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.secede(async move {
            match futures.first() {
                None => Ok(Vec::new()),
                Some(first) => first.client().gather(futures).await,
            }
        })
    }
}
