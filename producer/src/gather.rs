//! Bringing results back: [`Client::gather`] (all, in input order, with an optional timeout,
//! failing fast or per item) and [`Client::as_completed`] (a stream in completion order).

use std::borrow::Borrow;
use std::future::IntoFuture;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use rask_common::{Outcome, TaskKey};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::client::Client;
use crate::completions::Waiter;
use crate::error::{Error, Result};
use crate::future::Future;

impl Client {
    /// Gathers the results of `futures` in input order. Await it directly, or first set
    /// [`Gather::timeout`] and/or choose per-item results with [`Gather::each`].
    pub fn gather<'a, T>(&'a self, futures: &'a [Future<T>]) -> Gather<'a, T> {
        Gather {
            client: self,
            futures,
            timeout: None,
        }
    }

    /// The results of `futures` as they finish: `(index into futures, result)`.
    pub fn as_completed<T: DeserializeOwned + Send + 'static>(
        &self,
        futures: &[Future<T>],
    ) -> BoxStream<'static, (usize, Result<T>)> {
        let waiter = self.waiter(
            futures
                .iter()
                .map(|f| f.key().clone())
                .collect::<Vec<TaskKey>>(),
        );
        let state = (waiter, Vec::<usize>::new());
        futures::stream::unfold(state, |(mut waiter, mut abandoned)| async move {
            if let Some(index) = abandoned.pop() {
                return Some(((index, Err(Error::ListenerStopped)), (waiter, abandoned)));
            }
            match next_outcome(&mut waiter).await? {
                Ok((index, outcome)) => {
                    let result = outcome.and_then(|o| decode::<T>(waiter.key(index), o));
                    Some(((index, result), (waiter, abandoned)))
                }
                Err(error) => {
                    // Nothing more can be learnt: every pending future gets the error.
                    abandoned = waiter.pending_indices();
                    let index = abandoned.pop()?;
                    Some(((index, Err(error)), (waiter, abandoned)))
                }
            }
        })
        .boxed()
    }
}

/// A pending [`Client::gather`]; await it for `Vec<T>` (the first failure is the error).
#[must_use = "a gather does nothing until awaited"]
pub struct Gather<'a, T> {
    client: &'a Client,
    futures: &'a [Future<T>],
    timeout: Option<Duration>,
}

impl<'a, T> Gather<'a, T> {
    /// Gives up with [`Error::Timeout`] if not every result is in after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Returns every result on its own instead of failing on the first failed task; on timeout
    /// the unfinished ones are [`Error::Timeout`].
    pub fn each(self) -> GatherEach<'a, T> {
        GatherEach(self)
    }
}

/// A pending gather with per-item results; await it for `Vec<Result<T>>`.
#[must_use = "a gather does nothing until awaited"]
pub struct GatherEach<'a, T>(Gather<'a, T>);

pub(crate) type BoxFuture<'a, O> = Pin<Box<dyn std::future::Future<Output = O> + Send + 'a>>;

impl<'a, T: DeserializeOwned + Send + 'static> IntoFuture for Gather<'a, T> {
    type Output = Result<Vec<T>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Collected { values, waited, .. } =
                collect_values::<T>(self.client, self.futures, self.timeout, true).await?;
            let pending = values.iter().filter(|v| v.is_none()).count();
            if let Some(first) = values.iter().position(Option::is_none) {
                return Err(Error::Timeout {
                    waited,
                    pending,
                    first: self.futures[first].key().clone(),
                });
            }
            // Values only: a failure returned early (fail fast).
            Ok(values.into_iter().flatten().collect())
        })
    }
}

impl<'a, T: DeserializeOwned + Send + 'static> IntoFuture for GatherEach<'a, T> {
    type Output = Result<Vec<Result<T>>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    fn into_future(self) -> Self::IntoFuture {
        let Gather {
            client,
            futures,
            timeout,
        } = self.0;
        Box::pin(collect_each::<T>(client, futures, timeout))
    }
}

/// Waits for every outcome (or the deadline) and returns each task's result; those still
/// pending at the deadline are [`Error::Timeout`].
async fn collect_each<T: DeserializeOwned>(
    client: &Client,
    futures: &[Future<T>],
    timeout: Option<Duration>,
) -> Result<Vec<Result<T>>> {
    let Collected {
        values,
        mut failures,
        waited,
    } = collect_values(client, futures, timeout, false).await?;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| match value {
            Some(value) => Ok(value),
            None => Err(failures.remove(&i).unwrap_or_else(|| Error::Timeout {
                waited,
                pending: 1,
                first: futures[i].key().clone(),
            })),
        })
        .collect())
}

/// What [`collect_values`] gathered.
struct Collected<T> {
    /// Each task's value, where it succeeded.
    values: Vec<Option<T>>,
    /// The tasks that failed, by index.
    failures: std::collections::HashMap<usize, Error>,
    /// How long it waited.
    waited: Duration,
}

/// Waits for every outcome (or the deadline); with `fail_fast`, returns the first failure.
///
/// Values are kept as `Option<T>` (failures, rare, in a side table), not as `Result<T>` per
/// task: a `Result` is as large as [`Error`], which a million results would pay for each.
async fn collect_values<T: DeserializeOwned>(
    client: &Client,
    futures: &[Future<T>],
    timeout: Option<Duration>,
    fail_fast: bool,
) -> Result<Collected<T>> {
    // Borrowed: the caller holds the futures (and their keys) while it waits.
    let keys: Vec<&TaskKey> = futures.iter().map(Future::key).collect();
    let mut values: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    let mut failures = std::collections::HashMap::new();
    let mut waiter = client.waiter(keys);
    let started = Instant::now();
    loop {
        let next = match timeout {
            Some(t) => {
                match tokio::time::timeout_at(started + t, next_outcome(&mut waiter)).await {
                    Ok(next) => next,
                    Err(_elapsed) => break,
                }
            }
            None => next_outcome(&mut waiter).await,
        };
        match next {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok((index, outcome))) => {
                match outcome.and_then(|o| decode::<T>(waiter.key(index), o)) {
                    Ok(value) => values[index] = Some(value),
                    Err(e) if fail_fast => return Err(e),
                    Err(e) => {
                        failures.insert(index, e);
                    }
                }
            }
        }
    }
    Ok(Collected {
        values,
        failures,
        waited: started.elapsed(),
    })
}

/// The value of the one key `waiter` waits for.
pub(crate) async fn single<T: DeserializeOwned>(
    waiter: &mut Waiter<impl Borrow<TaskKey>>,
) -> Result<T> {
    match next_outcome(waiter).await {
        Some(Ok((index, outcome))) => outcome.and_then(|o| decode::<T>(waiter.key(index), o)),
        Some(Err(e)) => Err(e),
        None => Err(Error::ListenerStopped),
    }
}

/// The next outcome, riding out Redis failures with backoff (then re-reading what is pending);
/// a pause ends early when the subscription is made again, a sign that Redis answers again.
pub(crate) async fn next_outcome<K: Borrow<TaskKey>>(
    waiter: &mut Waiter<K>,
) -> Option<Result<(usize, Result<Outcome>)>> {
    let mut pause = crate::retry::BACKOFF.0;
    loop {
        match waiter.next().await {
            Some(Err(e)) if e.is_store_failure() => {
                tracing::warn!(error = %e, retry_in = ?pause, "reading results failed; retrying");
                if let Err(stopped) = waiter.pause(pause).await {
                    return Some(Err(stopped));
                }
                pause = (pause * 2).min(crate::retry::BACKOFF.1);
            }
            other => return other,
        }
    }
}

/// A stored outcome as the caller's type.
fn decode<T: DeserializeOwned>(key: &TaskKey, outcome: Outcome) -> Result<T> {
    match outcome {
        Outcome::Value(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| Error::ResultType {
            key: key.clone(),
            expected: std::any::type_name::<T>(),
            error: e.to_string(),
        }),
        Outcome::Failure(failure) => Err(failure.into()),
    }
}
