//! `latency`: sequential round trips, each submitting one `inc` and waiting for its result
//! (rask: `Client::call`);
//! p50/p90/p99 in µs. The first 5% of round trips (at least one) warm up connections and
//! caches and are not counted, for rask and the floor alike. The floor publishes one message,
//! its consumer stores the value and publishes a notification, and the client waits for that
//! notification and reads the value.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rask::builtins::inc;
use rask::Client;
use tokio::time::Instant;

use super::floor::{Floor, Shape, PREFETCH};
use super::report::Figures;
use super::PATIENCE;

/// Round trips not counted before the `n` that are.
fn warmup(n: usize) -> usize {
    (n / 20).max(1)
}

/// rask: `call(inc, i)` (submit and wait in one step, the confirm overlapping the run), `n`
/// times after the warm-up; checks every result. Results are purged afterwards.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    let warmup = warmup(n);
    let mut samples = Vec::with_capacity(n);
    for i in 0..(warmup + n) as i64 {
        let started = Instant::now();
        let value = tokio::time::timeout(PATIENCE, client.call(inc, (i,)))
            .await
            .context("waiting for the result")?
            .context("calling inc")?;
        let elapsed = started.elapsed();
        ensure!(
            value == i + 1,
            "inc({i}) returned {value}, expected {}",
            i + 1
        );
        if i as usize >= warmup {
            samples.push(elapsed);
        }
    }
    client.purge().await.context("purging results")?;
    Ok(percentiles(samples))
}

/// The floor: the same round trips straight through lapin and Redis.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    let warmup = warmup(n);
    let shape = Shape::of(inc, (n as i64,), n as i64 + 1, 2)?;
    let mut stage = floor.stage(true, PREFETCH).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let started = Instant::now();
        stage.round_trip(&shape, i).await?;
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    stage.close().await?;
    Ok(percentiles(samples))
}

/// p50, p90 and p99 (nearest rank) of `samples`, in µs.
fn percentiles(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1e6
    };
    Figures::default()
        .with("round_trips", samples.len() as f64)
        .with("p50_us", at(0.50))
        .with("p90_us", at(0.90))
        .with("p99_us", at(0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let p = percentiles(samples);
        assert_eq!(p.get("p50_us"), Some(50.0));
        assert_eq!(p.get("p90_us"), Some(90.0));
        assert_eq!(p.get("p99_us"), Some(99.0));
        let one = percentiles(vec![Duration::from_micros(7)]);
        assert_eq!(one.get("p99_us"), Some(7.0));
    }
}
