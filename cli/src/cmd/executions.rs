//! How many times the live workers started a function, read from their Prometheus `/metrics`
//! (`rask_tasks_started_total{function="…"}`): what `rask demo` compares before and after its
//! final compute to tell whether a persisted result was reused or computed again. Also how
//! many times they built a worker state (`rask_states_built_total{state="…"}`), which the demo
//! reports at its end.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::Duration;

use rask::Monitor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one worker's `/metrics` may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Starts of `function` per live worker (by id), or `None` if a worker that may still run tasks
/// cannot be read (no metrics endpoint, or it does not answer). A worker whose endpoint refuses
/// connections has exited (its registry entry outlives it for a few heartbeats) and is left out.
pub(crate) async fn started(monitor: &Monitor, function: &str) -> Option<BTreeMap<String, u64>> {
    let series = format!("rask_tasks_started_total{{function=\"{function}\"}}");
    read(monitor, &series).await
}

/// Builds of the worker state of type `state` (its type name) per live worker (by id), or
/// `None` as for [`started`].
pub(crate) async fn states_built(monitor: &Monitor, state: &str) -> Option<BTreeMap<String, u64>> {
    let series = format!("rask_states_built_total{{state=\"{state}\"}}");
    read(monitor, &series).await
}

/// The value of the counter `series` per live worker (by id), or `None` as for [`started`].
async fn read(monitor: &Monitor, series: &str) -> Option<BTreeMap<String, u64>> {
    let status = monitor.status().await.ok()?;
    let mut counts = BTreeMap::new();
    for worker in status.workers {
        let address = worker.metrics_addr?;
        match tokio::time::timeout(TIMEOUT, get_metrics(address)).await {
            Ok(Ok(text)) => {
                counts.insert(worker.id, count(&text, series));
            }
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {}
            _ => return None,
        }
    }
    Some(counts)
}

/// Starts of `function` between two readings of [`started`]: `None` unless both readings
/// count the same workers.
pub(crate) fn between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Option<u64> {
    if !before.keys().eq(after.keys()) {
        return None;
    }
    before.iter().map(|(id, n)| after[id].checked_sub(*n)).sum()
}

/// Starts between two readings of [`started`], summed by the pools the workers serve (`gpu`,
/// `default,gpu`). A worker missing from the first reading started since (its counters start
/// at 0); one missing from the second has exited, and what it ran meanwhile is not counted.
pub(crate) async fn by_pools(
    monitor: &Monitor,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Option<BTreeMap<String, u64>> {
    let status = monitor.status().await.ok()?;
    let mut sums = BTreeMap::new();
    for worker in status.workers {
        let Some(after) = after.get(&worker.id) else {
            continue;
        };
        let ran = after.saturating_sub(before.get(&worker.id).copied().unwrap_or(0));
        let pools: Vec<&str> = worker.pools.iter().map(|p| p.as_str()).collect();
        *sums.entry(pools.join(",")).or_default() += ran;
    }
    Some(sums)
}

/// The body of `GET /metrics` at `address`.
async fn get_metrics(address: std::net::SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: rask\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The value of the counter `series` (name and labels) in an OpenMetrics text (0 if the worker
/// never counted it).
fn count(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_per_function_and_compared_per_worker() {
        let text = "# TYPE rask_tasks_started counter\n\
                    rask_tasks_started_total{function=\"image_summary\"} 3\n\
                    rask_tasks_started_total{function=\"image_stats\"} 48\n";
        let started = |f: &str| format!("rask_tasks_started_total{{function=\"{f}\"}}");
        assert_eq!(count(text, &started("image_summary")), 3);
        assert_eq!(count(text, &started("image_stats")), 48);
        assert_eq!(count(text, &started("inc")), 0);
        let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let before = map(&[("a", 1), ("b", 0)]);
        assert_eq!(between(&before, &map(&[("a", 3), ("b", 2)])), Some(4));
        assert_eq!(between(&before, &map(&[("a", 3)])), None, "a worker left");
        assert_eq!(
            between(&before, &map(&[("a", 0), ("b", 0)])),
            None,
            "a restart"
        );
    }
}
