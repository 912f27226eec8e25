//! The worker's heartbeat in the worker registry: every `heartbeat_interval` it writes its
//! [`WorkerEntry`] (identity, counters, tasks/s over the interval, recent failures, its
//! resources and what of them is in use, its resident memory and CPU time read from `/proc`)
//! with a TTL of three intervals, so that a worker that dies vanishes within three intervals.
//! It first registers once its broadcast queue is bound, so that a worker in the registry
//! answers `rask run`. It leaves the registry when the worker starts stopping.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rask_common::ops::{self, WorkerEntry};
use rask_common::usage::ProcessUsage;
use rask_common::{Settings, Store};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::ops::{Health, Identity};
use crate::resources::Capacity;

/// Writes the registry entry until `leaving` is cancelled, then removes it.
pub(crate) async fn heartbeat(
    settings: Settings,
    identity: Arc<Identity>,
    metrics: Arc<Metrics>,
    capacity: Arc<Capacity>,
    health: Arc<Health>,
    leaving: CancellationToken,
) {
    let mut bound = health.broker.subscribe();
    tokio::select! {
        () = leaving.cancelled() => return,
        _ = bound.wait_for(|up| *up) => {}
    }
    let mut ticker = tokio::time::interval(settings.heartbeat_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut store: Option<Store> = None;
    let mut last = (Instant::now(), metrics.counters().done());
    let mut failing = false;
    loop {
        tokio::select! {
            () = leaving.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let counters = metrics.counters();
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let rate = if elapsed > 0.0 {
            counters.done().saturating_sub(last.1) as f64 / elapsed
        } else {
            0.0
        };
        last = (now, counters.done());
        let entry = WorkerEntry {
            id: identity.id.clone(),
            host: identity.host.clone(),
            pid: identity.pid,
            version: identity.version.to_owned(),
            started_at: identity.started_at,
            updated_at: SystemTime::now(),
            heartbeat_interval: settings.heartbeat_interval,
            queue: identity.queue.clone(),
            concurrency: identity.concurrency,
            functions: identity.functions.clone(),
            metrics_addr: identity.metrics_addr,
            counters,
            tasks_per_second: (rate * 100.0).round() / 100.0,
            recent_errors: metrics.recent_errors(),
            pools: identity.pools.clone(),
            resources: capacity.total().clone(),
            resources_in_use: capacity.in_use(),
            usage: ProcessUsage::of_self(),
        };
        let written = write(&mut store, &settings, &entry).await;
        health.store.store(written.is_ok(), Ordering::Relaxed);
        match written {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("heartbeat stored again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "storing the heartbeat failed; retrying every interval");
            }
            Err(_) => {}
        }
    }
    if let Some(store) = &store {
        let removed =
            tokio::time::timeout(Duration::from_secs(2), ops::deregister(store, &identity.id))
                .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::debug!("could not leave the registry; the entry expires by itself");
        }
    }
}

/// Writes `entry`, connecting first if need be.
async fn write(
    store: &mut Option<Store>,
    settings: &Settings,
    entry: &WorkerEntry,
) -> rask_common::Result<()> {
    if store.is_none() {
        *store = Some(Store::connect(settings).await?);
    }
    let connected = store.as_ref().expect("connected above");
    ops::register(connected, entry, settings.heartbeat_ttl()).await
}
