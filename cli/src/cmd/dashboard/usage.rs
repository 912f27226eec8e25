//! Each worker's memory and CPU over time, for the dashboard's charts: a sampler reads the
//! worker registry every second and keeps, per worker, the usage of each new heartbeat
//! ([`rask::WorkerEntry::usage`]) of the last [`KEPT`]; `/api/usage` serves them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use rask::Monitor;
use serde::Serialize;

/// How far back the samples go.
const KEPT: Duration = Duration::from_secs(15 * 60);

/// How often the registry is read.
const EVERY: Duration = Duration::from_secs(1);

/// One heartbeat's usage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Sample {
    /// When the worker wrote it (Unix ms).
    at: u64,
    /// Its resident memory, in bytes.
    resident_bytes: u64,
    /// Its CPU time so far, in seconds.
    cpu_seconds: f64,
}

/// The samples of every worker seen, by worker id, oldest first.
#[derive(Debug, Default)]
pub(super) struct UsageHistory {
    workers: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl UsageHistory {
    /// Adds the usage `sample` of worker `id` unless it is the one last kept (same heartbeat),
    /// and forgets samples older than [`KEPT`] before `now_ms`.
    fn record(&self, id: &str, sample: Sample, now_ms: u64) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let samples = workers.entry(id.to_owned()).or_default();
        if samples.back().is_none_or(|last| last.at < sample.at) {
            samples.push_back(sample);
        }
        let oldest = now_ms.saturating_sub(u64::try_from(KEPT.as_millis()).unwrap_or(u64::MAX));
        for samples in workers.values_mut() {
            while samples.front().is_some_and(|s| s.at < oldest) {
                samples.pop_front();
            }
        }
        workers.retain(|_, samples| !samples.is_empty());
    }

    /// Every worker's samples, by worker id.
    pub(super) fn snapshot(&self) -> BTreeMap<String, Vec<Sample>> {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers
            .iter()
            .map(|(id, samples)| (id.clone(), samples.iter().copied().collect()))
            .collect()
    }
}

/// Reads the registry every second into `history`, for as long as the dashboard runs.
pub(super) async fn sample(monitor: Arc<Monitor>, history: Arc<UsageHistory>) {
    let mut ticker = tokio::time::interval(EVERY);
    loop {
        ticker.tick().await;
        let workers = match monitor.workers().await {
            Ok(workers) => workers,
            Err(e) => {
                tracing::debug!(error = %e, "reading the worker registry for usage");
                continue;
            }
        };
        let now_ms = rask_common::events::now_ms();
        for worker in workers {
            let Some(usage) = worker.usage else { continue };
            let at = worker
                .updated_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let sample = Sample {
                at,
                resident_bytes: usage.resident_bytes,
                cpu_seconds: usage.cpu_seconds,
            };
            history.record(&worker.id, sample, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64) -> Sample {
        Sample {
            at,
            resident_bytes: at,
            cpu_seconds: 0.0,
        }
    }

    #[test]
    fn each_heartbeat_is_kept_once_and_old_ones_forgotten() {
        let history = UsageHistory::default();
        let kept = u64::try_from(KEPT.as_millis()).unwrap();
        history.record("a", sample(1_000), 1_000);
        history.record("a", sample(1_000), 1_500);
        history.record("a", sample(2_000), 2_000);
        history.record("b", sample(2_000), 2_000);
        assert_eq!(history.snapshot()["a"], [sample(1_000), sample(2_000)]);
        history.record("b", sample(kept + 1_500), kept + 1_500);
        let snapshot = history.snapshot();
        assert_eq!(snapshot["a"], [sample(2_000)]);
        assert_eq!(snapshot["b"], [sample(2_000), sample(kept + 1_500)]);
        history.record("b", sample(kept + 2_500), kept + 2_500);
        assert!(!history.snapshot().contains_key("a"), "a worker gone");
    }
}
