//! Pools from the client's side ([`rask_common::pool`]): whether live workers serve what the
//! client routes where ([`Client::check_routes`], and a warning, once per pool and function,
//! when tasks go where no live worker runs them), and waiting for workers to register
//! ([`Client::wait_for_workers`]).
//!
//! The warning costs no round trip on the publishing path: the first time a call publishes a
//! function to a pool, a background task reads the worker registry (at most once per heartbeat
//! interval, the snapshot shared by the checks in between) and logs the warning if need be.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rask_common::ops::{self, WorkerEntry};
use rask_common::{bag_ops, Pool, Settings, Store};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::gather::BoxFuture;

/// How often [`Client::wait_for_workers`] reads the worker registry.
const POLL: Duration = Duration::from_millis(100);

/// A function that tasks are routed to a pool for, that no live worker of that pool has
/// registered: its tasks wait in the pool's queue until such a worker starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct UnservedRoute {
    /// The function.
    pub function: String,
    /// The pool its tasks go to.
    pub pool: Pool,
    /// Live workers serving the pool (none of which has the function).
    pub workers: usize,
}

/// The routes among `routes` that no worker of `workers` serves, sorted. The element-wise
/// operations of bags ([`bag_ops::ELEMENT_OPS`]) are served by every worker of the pool: workers
/// implement them themselves, without registering them.
pub(crate) fn unserved<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a Pool)>,
    workers: &[WorkerEntry],
) -> Vec<UnservedRoute> {
    let mut found = BTreeSet::new();
    for (function, pool) in routes {
        let serving: Vec<&WorkerEntry> = workers.iter().filter(|w| w.serves(pool)).collect();
        let everywhere = bag_ops::ELEMENT_OPS.contains(&function);
        if !serving
            .iter()
            .any(|w| everywhere || w.functions.iter().any(|f| f == function))
        {
            found.insert(UnservedRoute {
                function: function.to_owned(),
                pool: pool.clone(),
                workers: serving.len(),
            });
        }
    }
    found.into_iter().collect()
}

/// The routes a client published to (each checked once) and a recent snapshot of the registry.
#[derive(Default)]
pub(crate) struct RouteWatch {
    /// The functions published to each pool (`None`: the default pool).
    seen: Mutex<HashMap<Option<Pool>, HashSet<String>>>,
    /// The live workers at the last read, and when it was.
    snapshot: tokio::sync::Mutex<Option<(Instant, Arc<Vec<WorkerEntry>>)>>,
}

impl RouteWatch {
    /// Notes that a call publishes `function` to `pool`: the first time, checks in the
    /// background that a live worker of the pool has registered it, and warns if none has.
    pub(crate) fn note(
        self: &Arc<Self>,
        store: &Store,
        settings: &Settings,
        function: &str,
        pool: Option<&Pool>,
    ) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            let functions = seen.entry(pool.cloned()).or_default();
            if functions.contains(function) {
                return;
            }
            functions.insert(function.to_owned());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (watch, store, function) = (self.clone(), store.clone(), function.to_owned());
        let pool = Pool::of(pool);
        let fresh = settings.heartbeat_interval;
        runtime.spawn(async move {
            let workers = match watch.workers(&store, fresh).await {
                Ok(workers) => workers,
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the worker registry to check a route");
                    return;
                }
            };
            for route in unserved([(function.as_str(), &pool)], &workers) {
                tracing::warn!(
                    function = %route.function,
                    pool = %route.pool,
                    workers = route.workers,
                    "no live worker of the pool has registered the function: its tasks wait in the pool's queue until one does"
                );
            }
        });
    }

    /// The pools and functions noted so far.
    fn noted(&self) -> Vec<(String, Pool)> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.iter()
            .flat_map(|(pool, functions)| {
                let pool = Pool::of(pool.as_ref());
                functions.iter().map(move |f| (f.clone(), pool.clone()))
            })
            .collect()
    }

    /// The live workers, read again when the snapshot is older than `fresh`.
    async fn workers(&self, store: &Store, fresh: Duration) -> Result<Arc<Vec<WorkerEntry>>> {
        let mut snapshot = self.snapshot.lock().await;
        if let Some((at, workers)) = snapshot.as_ref() {
            if at.elapsed() < fresh {
                return Ok(workers.clone());
            }
        }
        let workers = Arc::new(ops::live_workers(store).await?);
        *snapshot = Some((Instant::now(), workers.clone()));
        Ok(workers)
    }
}

impl Client {
    /// The routes no live worker serves: each entry of the routing table (setting `routes`)
    /// and each function this client published to a pool, whose pool has no live worker that
    /// registered the function. Their tasks wait in the pool's queue until such a worker
    /// starts (a worker that receives a function it does not know stores `UnknownTask`).
    ///
    /// # Errors
    /// [`crate::Error::Common`] if Redis fails.
    pub async fn check_routes(&self) -> Result<Vec<UnservedRoute>> {
        let workers = ops::live_workers(self.store()).await?;
        let noted = self.route_watch().noted();
        let table = self.settings().routes.iter().map(|(f, p)| (f.as_str(), p));
        let noted = noted.iter().map(|(f, p)| (f.as_str(), p));
        Ok(unserved(table.chain(noted), &workers))
    }

    /// Waits until `n` live workers are registered: of any pool, or of one pool with
    /// [`WaitForWorkers::pool`]; for at most [`WaitForWorkers::timeout`] (default: no limit).
    /// Resolves to the live workers found (at least `n`).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn example(client: rask::Client) -> rask::Result<()> {
    /// let gpu = client
    ///     .wait_for_workers(2)
    ///     .pool("gpu")
    ///     .timeout(Duration::from_secs(30))
    ///     .await?;
    /// assert!(gpu.len() >= 2);
    /// # Ok(()) }
    /// ```
    pub fn wait_for_workers(&self, n: usize) -> WaitForWorkers<'_> {
        WaitForWorkers {
            client: self,
            n,
            pool: None,
            timeout: None,
        }
    }
}

/// A wait for live workers ([`Client::wait_for_workers`]); `.await` it.
#[must_use = "a wait does nothing until awaited"]
pub struct WaitForWorkers<'a> {
    client: &'a Client,
    n: usize,
    /// The pool asked for, or why its name is not one (reported when awaited).
    pool: Option<std::result::Result<Pool, String>>,
    timeout: Option<Duration>,
}

impl WaitForWorkers<'_> {
    /// Counts only workers serving `pool` (a [`Pool`] or its name). A name that is not a valid
    /// pool name fails the wait with [`crate::Error::Common`].
    pub fn pool(mut self, pool: impl AsRef<str>) -> Self {
        self.pool = Some(Pool::new(pool.as_ref()).map_err(|e| e.to_string()));
        self
    }

    /// Gives up after `timeout` with [`Error::WorkersTimeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl<'a> IntoFuture for WaitForWorkers<'a> {
    type Output = Result<Vec<WorkerEntry>>;
    type IntoFuture = BoxFuture<'a, Self::Output>;

    /// # Errors
    /// [`Error::WorkersTimeout`] if fewer workers registered within the timeout;
    /// [`crate::Error::Common`] if Redis fails.
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let pool = match self.pool {
                None => None,
                Some(Ok(pool)) => Some(pool),
                Some(Err(why)) => return Err(rask_common::Error::Settings(why).into()),
            };
            let started = Instant::now();
            loop {
                let mut workers = ops::live_workers(self.client.store()).await?;
                if let Some(pool) = &pool {
                    workers.retain(|w| w.serves(pool));
                }
                if workers.len() >= self.n {
                    return Ok(workers);
                }
                let waited = started.elapsed();
                if let Some(timeout) = self.timeout {
                    if waited >= timeout {
                        return Err(Error::WorkersTimeout {
                            waited,
                            wanted: self.n,
                            found: workers.len(),
                            pool: pool
                                .as_ref()
                                .map_or_else(|| "any pool".to_owned(), |p| format!("pool {p}")),
                        });
                    }
                    tokio::time::sleep(POLL.min(timeout - waited)).await;
                } else {
                    tokio::time::sleep(POLL).await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rask_common::ops::WorkerCounters;

    use super::*;

    fn worker(pools: &[&str], functions: &[&str]) -> WorkerEntry {
        WorkerEntry {
            id: "w".into(),
            host: "h".into(),
            pid: 1,
            version: "0".into(),
            started_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
            heartbeat_interval: Duration::from_secs(5),
            queue: "rask.tasks".into(),
            concurrency: 1,
            functions: functions.iter().map(|f| (*f).to_owned()).collect(),
            metrics_addr: None,
            counters: WorkerCounters::default(),
            tasks_per_second: 0.0,
            recent_errors: Vec::new(),
            pools: pools.iter().map(|p| Pool::new(*p).unwrap()).collect(),
            resources: Default::default(),
            resources_in_use: Default::default(),
            usage: None,
        }
    }

    #[test]
    fn routes_without_a_worker_of_their_pool_are_unserved() {
        let gpu = Pool::new("gpu").unwrap();
        let workers = [
            worker(&["default"], &["inc", "stats"]),
            worker(&["gpu"], &["inc"]),
        ];
        let routes = [("inc", &gpu), ("stats", &gpu), ("other", &gpu)];
        let found = unserved(routes, &workers);
        let names: Vec<&str> = found.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, ["other", "stats"]);
        assert!(found.iter().all(|r| r.workers == 1 && r.pool == gpu));
        assert!(unserved([("inc", &Pool::default())], &workers).is_empty());
        // Bags' element-wise operations run on any worker of the pool, if it has one.
        assert!(unserved([(bag_ops::MAP, &gpu)], &workers).is_empty());
        let empty = Pool::new("empty").unwrap();
        assert_eq!(unserved([(bag_ops::MAP, &empty)], &workers).len(), 1);
    }
}
