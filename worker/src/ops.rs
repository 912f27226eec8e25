//! The worker's operations side, beside the task loop: its identity, its health, and the three
//! background services started by [`Ops::start`]: the metrics endpoint (`metrics.rs`), the
//! broadcast consumer (`broadcast.rs`) and the registry heartbeat (`presence.rs`).
//!
//! They have their own connections, so that a worker answers `rask run` and `/health` while its
//! task loop is busy or reconnecting. When the worker's shutdown signal fires (see
//! [`Ops::until`]) the worker leaves the registry and stops answering broadcasts while it drains;
//! the metrics endpoint serves until [`Ops`] is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rask_common::ops::WorkerInfo;
use rask_common::Settings;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::resources::Capacity;
use rask_common::context::WorkerContext;

/// Who this worker is, as the registry and the `info` broadcast report it.
pub(crate) struct Identity {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) version: &'static str,
    pub(crate) started_at: SystemTime,
    started: tokio::time::Instant,
    pub(crate) queue: String,
    pub(crate) concurrency: usize,
    pub(crate) functions: Vec<String>,
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// The pools it serves.
    pub(crate) pools: Vec<rask_common::Pool>,
}

impl Identity {
    /// The answer to the `info` broadcast.
    pub(crate) fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.id.clone(),
            host: self.host.clone(),
            pid: self.pid,
            version: self.version.to_owned(),
            functions: self.functions.clone(),
            concurrency: self.concurrency,
            // Whole milliseconds: enough for people, shorter to read.
            uptime: Duration::from_millis(
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }
}

/// What `/health` reports: whether the worker consumes its task queue, reaches RabbitMQ (its
/// broadcast connection is up) and Redis (its last heartbeat was stored).
pub(crate) struct Health {
    /// Set while the broadcast consumer is connected and bound.
    pub(crate) broker: watch::Sender<bool>,
    /// Set when the last heartbeat was stored.
    pub(crate) store: AtomicBool,
    /// Set while the task loop consumes (see [`Health::consuming`]): not while it connects,
    /// declares, reconnects or drains.
    consuming: AtomicBool,
    /// Set once the worker is stopping.
    pub(crate) stopping: AtomicBool,
}

/// The body of `/health`.
#[derive(Debug, Serialize)]
pub(crate) struct HealthReport {
    /// Whether the worker is healthy: consuming, reaching both servers and not stopping.
    pub(crate) ok: bool,
    /// Whether the task loop consumes its queue.
    pub(crate) consuming: bool,
    /// Whether RabbitMQ is reached.
    pub(crate) broker: bool,
    /// Whether Redis is reached.
    pub(crate) store: bool,
    /// Whether the worker is stopping.
    pub(crate) stopping: bool,
}

impl Health {
    fn new() -> Self {
        Health {
            broker: watch::Sender::new(false),
            store: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Marks the task loop as consuming until the returned guard is dropped.
    pub(crate) fn consuming(self: &Arc<Self>) -> Consuming {
        self.consuming.store(true, Ordering::Relaxed);
        Consuming(self.clone())
    }

    /// The state now.
    pub(crate) fn report(&self) -> HealthReport {
        let broker = *self.broker.borrow();
        let store = self.store.load(Ordering::Relaxed);
        let consuming = self.consuming.load(Ordering::Relaxed);
        let stopping = self.stopping.load(Ordering::Relaxed);
        HealthReport {
            ok: consuming && broker && store && !stopping,
            consuming,
            broker,
            store,
            stopping,
        }
    }
}

/// The task loop consumes while this lives (see [`Health::consuming`]).
pub(crate) struct Consuming(Arc<Health>);

impl Drop for Consuming {
    fn drop(&mut self) {
        self.0.consuming.store(false, Ordering::Relaxed);
    }
}

/// The running operations services of one worker; dropping it stops them all.
pub(crate) struct Ops {
    /// Cancelled when the worker starts stopping: leave the registry, stop broadcasts.
    leaving: CancellationToken,
    /// Cancelled on drop: stop the metrics endpoint too.
    stop: CancellationToken,
    health: Arc<Health>,
    tracker: TaskTracker,
}

impl Ops {
    /// Binds the metrics endpoint (when the `metrics` setting is on) and starts the services.
    ///
    /// # Errors
    /// [`Error::Metrics`] if the metrics address cannot be bound.
    pub(crate) async fn start(
        settings: &Settings,
        registry: &Registry,
        context: &Arc<WorkerContext>,
        id: &str,
        metrics: Arc<Metrics>,
        capacity: Arc<Capacity>,
    ) -> Result<Self> {
        let health = Arc::new(Health::new());
        let stop = CancellationToken::new();
        let leaving = stop.child_token();
        let tracker = TaskTracker::new();
        let mut metrics_addr = None;
        if settings.metrics {
            let listener = tokio::net::TcpListener::bind(settings.metrics_listen)
                .await
                .map_err(|e| Error::Metrics(settings.metrics_listen, e))?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::Metrics(settings.metrics_listen, e))?;
            tracing::info!(address = %bound, "serving /metrics and /health");
            metrics_addr = Some(bound);
            tracker.spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                health.clone(),
                stop.clone(),
            ));
        }
        let identity = Arc::new(Identity {
            id: id.to_owned(),
            host: hostname::get()
                .map_or_else(|_| "host".into(), |h| h.to_string_lossy().into_owned()),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: SystemTime::now(),
            started: tokio::time::Instant::now(),
            queue: settings.queue.clone(),
            concurrency: settings.concurrency,
            functions: registry.names(),
            metrics_addr,
            pools: crate::pools::served(settings),
        });
        tracker.spawn(crate::broadcast::serve(
            settings.clone(),
            registry.clone(),
            context.clone(),
            identity.clone(),
            health.clone(),
            metrics.clone(),
            leaving.clone(),
        ));
        tracker.spawn(crate::presence::heartbeat(
            settings.clone(),
            identity,
            metrics,
            capacity,
            health.clone(),
            leaving.clone(),
        ));
        tracker.close();
        Ok(Ops {
            leaving,
            stop,
            health,
            tracker,
        })
    }

    /// The health `/health` reports, for the task loop to say when it consumes.
    pub(crate) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// `shutdown`, which on completing first tells the services that the worker is stopping:
    /// it leaves the registry and stops answering broadcasts (while it drains its tasks).
    pub(crate) fn until(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> impl Future<Output = ()> + Send {
        let leaving = self.leaving.clone();
        let health = self.health.clone();
        async move {
            shutdown.await;
            health.stopping.store(true, Ordering::Relaxed);
            leaving.cancel();
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.tracker.is_empty() {
            tracing::debug!(running = self.tracker.len(), "operations services stopping");
        }
    }
}
