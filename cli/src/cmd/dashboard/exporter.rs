//! The dashboard's `/metrics`: cluster-level Prometheus gauges that no single worker can serve,
//! read at scrape time (never on the task path): per queue of every pool, the messages ready
//! and the consumers (passive declarations, as `rask status`); per pool, the live workers; per
//! worker, its resident memory and CPU time from its last heartbeat; the task event stream's
//! lag and length. Names, types and labels are listed in docs/protocol.md ("Cluster metrics").

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rask::{ClusterStatus, EventStreamHead};
use std::sync::atomic::AtomicU64;

/// A gauge of floating-point values.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The labels of a queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    pool: String,
    role: &'static str,
}

/// The label of a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

/// The label of a worker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: String,
}

/// The cluster's metrics in the OpenMetrics text format, from `status` and `events` read just
/// now (`now_ms`: the time of the read, Unix ms).
pub(super) fn encode(status: &ClusterStatus, events: &EventStreamHead, now_ms: u64) -> String {
    let mut registry = Registry::with_prefix("rask");
    let ready = Family::<QueueLabels, Gauge>::default();
    let consumers = Family::<QueueLabels, Gauge>::default();
    for queue in &status.queues {
        let labels = QueueLabels {
            queue: queue.name.clone(),
            pool: queue.pool.to_string(),
            role: match queue.role {
                rask::QueueRole::Tasks => "tasks",
                rask::QueueRole::DeadLetter => "dead_letter",
            },
        };
        // A queue not declared yet has no series (rather than a made-up 0).
        if let (Some(m), Some(c)) = (queue.messages, queue.consumers) {
            ready.get_or_create(&labels).set(i64::from(m));
            consumers.get_or_create(&labels).set(i64::from(c));
        }
    }
    registry.register(
        "queue_messages_ready",
        "Messages ready in a queue (waiting for a consumer), by queue, pool and role (tasks, dead_letter)",
        ready,
    );
    registry.register(
        "queue_consumers",
        "Consumers of a queue, by queue, pool and role",
        consumers,
    );
    let live = Family::<PoolLabel, Gauge>::default();
    for pool in &status.pools {
        live.get_or_create(&PoolLabel {
            pool: pool.name.to_string(),
        })
        .set(i64::try_from(pool.workers).unwrap_or(i64::MAX));
    }
    registry.register(
        "live_workers",
        "Live workers in the registry, by pool",
        live,
    );
    let memory = Family::<WorkerLabel, Gauge>::default();
    let cpu = Family::<WorkerLabel, Counter<f64, AtomicU64>>::default();
    for worker in &status.workers {
        let Some(usage) = worker.usage else { continue };
        let label = WorkerLabel {
            worker: worker.id.clone(),
        };
        memory
            .get_or_create(&label)
            .set(i64::try_from(usage.resident_bytes).unwrap_or(i64::MAX));
        cpu.get_or_create(&label).inc_by(usage.cpu_seconds);
    }
    registry.register(
        "worker_resident_memory_bytes",
        "Resident memory of each live worker process at its last heartbeat",
        memory,
    );
    registry.register(
        "worker_cpu_seconds",
        "CPU time (user + system) of each live worker process at its last heartbeat",
        cpu,
    );
    let entries: Gauge = Gauge::default();
    entries.set(i64::try_from(events.entries).unwrap_or(i64::MAX));
    registry.register(
        "event_stream_entries",
        "Entries (batches of task events) in the event stream",
        entries,
    );
    if let Some(lag) = events.lag_seconds(now_ms) {
        let gauge = FloatGauge::default();
        gauge.set(lag);
        registry.register(
            "event_lag_seconds",
            "Age of the newest task event in the event stream (absent while it is empty)",
            gauge,
        );
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "cluster metrics do not encode");
    }
    text
}
