//! Progress of a set of futures, for applications that show it (like Dask's `progress`):
//! [`Client::progress`] is [`Client::as_completed`] with running counts, and
//! [`Client::gather_with_progress`] is a per-item gather that calls back after every result.
//! The `rask` CLI draws its progress bar with the latter.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::future::Future;

/// How far a set of futures is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// How many futures there are.
    pub total: usize,
    /// How many have an outcome (succeeded or failed).
    pub done: usize,
    /// How many of those failed.
    pub failed: usize,
}

impl Progress {
    /// How many have no outcome yet.
    pub fn pending(&self) -> usize {
        self.total - self.done
    }
}

/// One future finished, with the counts after it.
#[derive(Debug)]
pub struct Completed<T> {
    /// Its index in the futures given.
    pub index: usize,
    /// Its result.
    pub result: Result<T>,
    /// The counts including it.
    pub progress: Progress,
}

impl Client {
    /// The results of `futures` as they finish, each with the running [`Progress`].
    ///
    /// ```no_run
    /// use futures::StreamExt;
    ///
    /// # async fn example(client: rask::Client, futures: Vec<rask::Future<i64>>) {
    /// let mut finished = client.progress(&futures);
    /// while let Some(done) = finished.next().await {
    ///     eprint!("\r{}/{} ({} failed)", done.progress.done, done.progress.total, done.progress.failed);
    /// }
    /// # }
    /// ```
    pub fn progress<T: DeserializeOwned + Send + 'static>(
        &self,
        futures: &[Future<T>],
    ) -> BoxStream<'static, Completed<T>> {
        let start = Progress {
            total: futures.len(),
            ..Progress::default()
        };
        self.as_completed(futures)
            .scan(start, |progress, (index, result)| {
                progress.done += 1;
                progress.failed += usize::from(result.is_err());
                let progress = *progress;
                futures::future::ready(Some(Completed {
                    index,
                    result,
                    progress,
                }))
            })
            .boxed()
    }

    /// Waits for every future (or `timeout`) like `gather(..).each()`, calling `on_progress`
    /// after each result; results come back in input order, unfinished ones as
    /// [`Error::Timeout`].
    ///
    /// # Errors
    /// None of its own today; the `Result` leaves room for failures of the wait itself.
    pub async fn gather_with_progress<T: DeserializeOwned + Send + 'static>(
        &self,
        futures: &[Future<T>],
        timeout: Option<Duration>,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Vec<Result<T>>> {
        let started = Instant::now();
        let mut results: Vec<Option<Result<T>>> = futures.iter().map(|_| None).collect();
        let mut finished = self.progress(futures);
        on_progress(Progress {
            total: futures.len(),
            ..Progress::default()
        });
        loop {
            let next = match timeout {
                Some(t) => match tokio::time::timeout_at(started + t, finished.next()).await {
                    Ok(next) => next,
                    Err(_elapsed) => break,
                },
                None => finished.next().await,
            };
            let Some(done) = next else { break };
            results[done.index] = Some(done.result);
            on_progress(done.progress);
        }
        let waited = started.elapsed();
        let pending = results.iter().filter(|r| r.is_none()).count();
        Ok(results
            .into_iter()
            .zip(futures)
            .map(|(result, future)| {
                result.unwrap_or_else(|| {
                    Err(Error::Timeout {
                        waited,
                        pending,
                        first: future.key().clone(),
                    })
                })
            })
            .collect())
    }
}
