//! A worker's task counters and its HTTP endpoint: Prometheus `/metrics` and `/health`.
//!
//! [`Metrics`] counts every task the worker runs ([`Metrics::start`] returns a [`TaskRun`] that
//! settles as finished or retried), both as Prometheus families labelled by function (and
//! failure kind) and as plain totals plus the last few failures for the worker registry entry
//! (`presence.rs`). Function labels are limited to the functions the worker knows: its
//! registry's names and the element-wise operations of lazy collections
//! ([`rask_common::bag_ops::ELEMENT_OPS`]), matched exactly; every other name is `unknown`, so
//! a stream of made-up task names (`rask.x1`, `rask.x2`, …) cannot blow up the number of series.
//!
//! Metric names: `rask_tasks_started_total`, `rask_tasks_succeeded_total`,
//! `rask_tasks_failed_total` (labels `function`, `kind`), `rask_tasks_retried_total`,
//! `rask_task_duration_seconds` (histogram), `rask_tasks_in_flight`, `rask_reconnects_total`,
//! `rask_overrun_threads` (threads of plain functions past their time limit, `overrun.rs`),
//! `rask_broadcasts_refused_total` (label `reason`: `too_large`, `signature`, `window`,
//! `malformed`; `broadcast.rs`), `rask_states_built_total` (label `state`, the type name of a
//! worker state: how many times this process built it, once), `rask_replica_waits_short_total`
//! and `rask_replica_waits_skipped_total` (writes acknowledged with fewer replicas than
//! `redis_wait_replicas`: see `rask_common::replica_waits`), `rask_redeliveries_total`
//! (deliveries RabbitMQ marked redelivered), `rask_dead_lettered_total` (label `cause`, a
//! [`DeadLetterCause`]: messages this worker sent to a dead-letter queue),
//! `rask_process_resident_memory_bytes` and `rask_process_cpu_seconds_total` (read from `/proc`
//! at each scrape, [`rask_common::usage`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rask_common::bag_ops;
use rask_common::ops::{RecentError, WorkerCounters, RECENT_ERRORS};
use rask_common::store::ReplicaWaitCounts;
use rask_common::usage::ProcessUsage;
use rask_common::Outcome;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ops::Health;
use crate::overrun::Overruns;

/// The `function` label of every function the worker does not know.
const UNKNOWN: &str = "unknown";

/// The `function` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

/// The label of a refused broadcast request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The label of a worker state: its type's name (`Registry::with_state`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// Why a worker sent a message to a dead-letter queue (the `cause` label of
/// `rask_dead_lettered_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum DeadLetterCause {
    /// Its signature did not verify (`signing_keys`).
    Signature,
    /// It was not a task message of this protocol, or over `max_message_bytes`.
    BadMessage,
    /// It was delivered `max_deliveries` times without an outcome.
    DeliveryLimit,
    /// Redis refused its outcome for good.
    StoreRefused,
}

impl DeadLetterCause {
    /// Every cause, so that each series exists (at 0) from the start.
    const ALL: [DeadLetterCause; 4] = [
        DeadLetterCause::Signature,
        DeadLetterCause::BadMessage,
        DeadLetterCause::DeliveryLimit,
        DeadLetterCause::StoreRefused,
    ];

    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            DeadLetterCause::Signature => "signature",
            DeadLetterCause::BadMessage => "bad_message",
            DeadLetterCause::DeliveryLimit => "delivery_limit",
            DeadLetterCause::StoreRefused => "store_refused",
        }
    }
}

/// The label of a dead-lettered message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabel {
    cause: &'static str,
}

/// The labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    function: String,
    kind: String,
}

/// Duration histogram buckets: 1 ms to about 4.4 minutes, ×4 each.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 10))
}

/// Every counter of one worker process (lives across reconnects).
pub(crate) struct Metrics {
    registry: prometheus_client::registry::Registry,
    known: BTreeSet<String>,
    started: Family<FunctionLabel, Counter>,
    succeeded: Family<FunctionLabel, Counter>,
    failed: Family<FailedLabels, Counter>,
    retried: Family<FunctionLabel, Counter>,
    duration: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    reconnects: Counter,
    refused_broadcasts: Family<ReasonLabel, Counter>,
    states_built: Family<StateLabel, Counter>,
    redeliveries: Counter,
    dead_lettered: Family<CauseLabel, Counter>,
    overruns: Arc<Overruns>,
    replica_waits: Arc<ReplicaWaitCounts>,
    totals: [AtomicU64; 4],
    recent: Mutex<VecDeque<RecentError>>,
}

/// Indices into [`Metrics::totals`].
const STARTED: usize = 0;
const SUCCEEDED: usize = 1;
const FAILED: usize = 2;
const RETRIED: usize = 3;

impl Metrics {
    /// Counters for a worker that knows the functions `known` (its registry's names; the
    /// element-wise operations are added here) and tolerates `max_overruns` overrun threads.
    pub(crate) fn new(known: Vec<String>, max_overruns: usize) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("rask");
        let started = Family::<FunctionLabel, Counter>::default();
        let succeeded = Family::<FunctionLabel, Counter>::default();
        let failed = Family::<FailedLabels, Counter>::default();
        let retried = Family::<FunctionLabel, Counter>::default();
        let duration: Family<FunctionLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let in_flight = Gauge::default();
        let reconnects = Counter::default();
        let refused_broadcasts = Family::<ReasonLabel, Counter>::default();
        let overrun_threads = Gauge::default();
        registry.register(
            "tasks_started",
            "Tasks this worker started running",
            started.clone(),
        );
        registry.register(
            "tasks_succeeded",
            "Tasks whose outcome was a value",
            succeeded.clone(),
        );
        registry.register(
            "tasks_failed",
            "Tasks whose outcome was a failure, by failure kind",
            failed.clone(),
        );
        registry.register(
            "tasks_retried",
            "Failed attempts scheduled to run again",
            retried.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "How long tasks took from start to outcome",
            duration.clone(),
        );
        registry.register("tasks_in_flight", "Tasks running now", in_flight.clone());
        registry.register(
            "reconnects",
            "Times the worker connected again after losing RabbitMQ or Redis",
            reconnects.clone(),
        );
        registry.register(
            "overrun_threads",
            "Threads of plain functions still running past their time limit",
            overrun_threads.clone(),
        );
        registry.register(
            "broadcasts_refused",
            "Broadcast requests refused unrun, by reason",
            refused_broadcasts.clone(),
        );
        let states_built = Family::<StateLabel, Counter>::default();
        registry.register(
            "states_built",
            "Times this worker process built a worker state, by its type (once each)",
            states_built.clone(),
        );
        let replica_waits = Arc::<ReplicaWaitCounts>::default();
        registry.register_collector(Box::new(ReplicaWaitCollector(replica_waits.clone())));
        let redeliveries = Counter::default();
        registry.register(
            "redeliveries",
            "Deliveries RabbitMQ marked redelivered (their earlier delivery went back to the queue unacknowledged)",
            redeliveries.clone(),
        );
        let dead_lettered = Family::<CauseLabel, Counter>::default();
        for cause in DeadLetterCause::ALL {
            // Created at 0, so that a dashboard sees every series before the first dead letter.
            let _ = dead_lettered.get_or_create(&CauseLabel {
                cause: cause.as_str(),
            });
        }
        registry.register(
            "dead_lettered",
            "Messages this worker sent to a dead-letter queue, by cause",
            dead_lettered.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            redeliveries,
            dead_lettered,
            registry,
            replica_waits,
            known: known
                .into_iter()
                .chain(bag_ops::ELEMENT_OPS.map(String::from))
                .collect(),
            started,
            succeeded,
            failed,
            retried,
            duration,
            in_flight,
            reconnects,
            refused_broadcasts,
            states_built,
            overruns: Arc::new(Overruns::new(max_overruns, overrun_threads)),
            totals: Default::default(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_ERRORS)),
        }
    }

    /// Counts the start of a task calling `function`; settle the returned run with
    /// [`TaskRun::finished`] or [`TaskRun::retried`] (dropping it unsettled only ends it as in
    /// flight, e.g. when the worker stops mid-task).
    pub(crate) fn start(&self, function: &str) -> TaskRun<'_> {
        let label = FunctionLabel {
            function: if self.known.contains(function) {
                function
            } else {
                UNKNOWN
            }
            .to_owned(),
        };
        self.started.get_or_create(&label).inc();
        self.totals[STARTED].fetch_add(1, Ordering::Relaxed);
        self.in_flight.inc();
        TaskRun {
            metrics: self,
            label,
            since: Instant::now(),
        }
    }

    /// The counts of short and skipped waits for replicas, for the worker's stores to count
    /// into.
    pub(crate) fn replica_waits(&self) -> Arc<ReplicaWaitCounts> {
        self.replica_waits.clone()
    }

    /// The threads past their time limit, and their bound.
    pub(crate) fn overruns(&self) -> &Arc<Overruns> {
        &self.overruns
    }

    /// Counts a broadcast request refused for `reason` (a fixed word, see the module docs).
    pub(crate) fn broadcast_refused(&self, reason: &'static str) {
        self.refused_broadcasts
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a build of the worker state of type `state` (its type name).
    pub(crate) fn state_built(&self, state: &'static str) {
        self.states_built.get_or_create(&StateLabel { state }).inc();
    }

    /// Counts a delivery RabbitMQ marked redelivered.
    pub(crate) fn redelivered(&self) {
        self.redeliveries.inc();
    }

    /// Counts a message sent to a dead-letter queue for `cause`.
    pub(crate) fn dead_lettered(&self, cause: DeadLetterCause) {
        self.dead_lettered
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// Counts a reconnection after a lost connection.
    pub(crate) fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// The totals since the worker started.
    pub(crate) fn counters(&self) -> WorkerCounters {
        let total = |i: usize| self.totals[i].load(Ordering::Relaxed);
        WorkerCounters {
            started: total(STARTED),
            succeeded: total(SUCCEEDED),
            failed: total(FAILED),
            retried: total(RETRIED),
            in_flight: u64::try_from(self.in_flight.get()).unwrap_or(0),
        }
    }

    /// The last few failures, oldest first.
    pub(crate) fn recent_errors(&self) -> Vec<RecentError> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "metrics do not encode");
        }
        text
    }
}

/// Exposes [`ReplicaWaitCounts`] (kept by the store, which knows nothing of Prometheus) as
/// two counters, read at each scrape.
#[derive(Debug)]
struct ReplicaWaitCollector(Arc<ReplicaWaitCounts>);

impl Collector for ReplicaWaitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "replica_waits_short",
                "Waits for redis_wait_replicas replicas that reached fewer in time",
                self.0.short(),
            ),
            (
                "replica_waits_skipped",
                "Writes acknowledged without waiting for replicas, in the pause after a short wait",
                self.0.skipped(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// This process's resident memory and CPU time, read from `/proc` at each scrape (nothing is
/// written where it cannot be read).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(usage) = ProcessUsage::of_self() else {
            return Ok(());
        };
        let memory = ConstGauge::new(usage.resident_bytes);
        memory.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the worker process",
            None,
            memory.metric_type(),
        )?)?;
        let cpu = ConstCounter::new(usage.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "CPU time of the worker process, user + system, all threads",
            None,
            cpu.metric_type(),
        )?)?;
        Ok(())
    }
}

/// One task being counted (see [`Metrics::start`]).
pub(crate) struct TaskRun<'a> {
    metrics: &'a Metrics,
    label: FunctionLabel,
    since: Instant,
}

impl TaskRun<'_> {
    /// The task ended with `outcome` (stored next).
    pub(crate) fn finished(self, outcome: &Outcome) {
        let m = self.metrics;
        m.duration
            .get_or_create(&self.label)
            .observe(self.since.elapsed().as_secs_f64());
        match outcome {
            Outcome::Value(_) => {
                m.succeeded.get_or_create(&self.label).inc();
                m.totals[SUCCEEDED].fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failure(failure) => {
                let labels = FailedLabels {
                    function: self.label.function.clone(),
                    kind: format!("{:?}", failure.kind),
                };
                m.failed.get_or_create(&labels).inc();
                m.totals[FAILED].fetch_add(1, Ordering::Relaxed);
                let mut recent = m.recent.lock().unwrap_or_else(PoisonError::into_inner);
                if recent.len() == RECENT_ERRORS {
                    recent.pop_front();
                }
                recent.push_back(RecentError {
                    at: SystemTime::now(),
                    key: failure.key.clone(),
                    function: failure.task.clone(),
                    kind: failure.kind,
                    message: failure.message.chars().take(500).collect(),
                });
            }
        }
    }

    /// The attempt failed and another is scheduled.
    pub(crate) fn retried(self) {
        let m = self.metrics;
        m.duration
            .get_or_create(&self.label)
            .observe(self.since.elapsed().as_secs_f64());
        m.retried.get_or_create(&self.label).inc();
        m.totals[RETRIED].fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for TaskRun<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// Serves `/metrics` and `/health` on `listener` until `stop` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let report = health.report();
                async move {
                    let status = if report.ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(report)).into_response()
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use rask_common::{FailureKind, TaskFailure, TaskKey};

    use super::*;

    #[test]
    fn counts_outcomes_by_function_and_kind() {
        let metrics = Metrics::new(vec!["inc".into()], 1);
        metrics.start("inc").finished(&Outcome::Value(vec![1]));
        let failure = TaskFailure::new(
            FailureKind::TimedOut,
            "slow",
            "inc",
            TaskKey::new("inc-1").unwrap(),
            "w",
        );
        metrics.start("inc").finished(&Outcome::Failure(failure));
        metrics.start("whatever").retried();
        let running = metrics.start("inc");
        let counters = metrics.counters();
        assert_eq!(
            (counters.started, counters.succeeded, counters.failed),
            (4, 1, 1)
        );
        assert_eq!((counters.retried, counters.in_flight), (1, 1));
        drop(running);
        assert_eq!(metrics.counters().in_flight, 0);
        let text = metrics.encode();
        assert!(
            text.contains(r#"rask_tasks_failed_total{function="inc",kind="TimedOut"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rask_tasks_retried_total{function="unknown"} 1"#),
            "{text}"
        );
        assert!(text.contains("rask_task_duration_seconds_bucket"), "{text}");
        assert_eq!(metrics.recent_errors()[0].kind, FailureKind::TimedOut);
    }

    #[test]
    fn redeliveries_dead_letters_and_the_process_are_exported() {
        let metrics = Metrics::new(vec![], 1);
        let text = metrics.encode();
        assert!(text.contains("rask_redeliveries_total 0"), "{text}");
        for cause in DeadLetterCause::ALL {
            let line = format!("rask_dead_lettered_total{{cause=\"{}\"}} 0", cause.as_str());
            assert!(text.contains(&line), "{line}: {text}");
        }
        metrics.redelivered();
        metrics.redelivered();
        metrics.dead_lettered(DeadLetterCause::DeliveryLimit);
        let text = metrics.encode();
        assert!(text.contains("rask_redeliveries_total 2"), "{text}");
        assert!(
            text.contains(r#"rask_dead_lettered_total{cause="delivery_limit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("rask_process_resident_memory_bytes "),
            "{text}"
        );
        assert!(text.contains("rask_process_cpu_seconds_total "), "{text}");
    }

    #[test]
    fn state_builds_are_counted_by_type() {
        let metrics = Metrics::new(vec![], 1);
        metrics.state_built("rask_demo::image::LumaTable");
        let text = metrics.encode();
        assert!(
            text.contains(r#"rask_states_built_total{state="rask_demo::image::LumaTable"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn only_known_functions_and_element_operations_get_their_own_series() {
        let metrics = Metrics::new(vec!["inc".into()], 1);
        for i in 0..100 {
            metrics
                .start(&format!("rask.made-up-{i}"))
                .finished(&Outcome::Value(vec![]));
            metrics
                .start(&format!("rask.bag.map{i}"))
                .finished(&Outcome::Value(vec![]));
        }
        for op in bag_ops::ELEMENT_OPS {
            metrics.start(op).finished(&Outcome::Value(vec![]));
        }
        metrics.start("inc").finished(&Outcome::Value(vec![]));
        let text = metrics.encode();
        let mut labels: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("rask_tasks_started_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        labels.sort_unstable();
        let mut expected = vec!["inc", UNKNOWN];
        expected.extend(bag_ops::ELEMENT_OPS);
        expected.sort_unstable();
        assert_eq!(labels, expected, "{text}");
        assert!(
            text.contains(r#"rask_tasks_started_total{function="unknown"} 200"#),
            "{text}"
        );
    }
}
