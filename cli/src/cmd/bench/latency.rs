//! `latency`: sequential round trips, each submitting one `inc` and waiting for its result
//! (rask: `Client::call`);
//! p50/p90/p99 in µs. The first 5% of round trips (at least one) warm up connections and
//! caches and are not counted, for rask and the floor alike. The floor publishes one message,
//! its consumer stores the value and publishes a notification, and the client waits for that
//! notification and the publisher confirm at once and reads the value, as `call` does
//! (`p50_us`, ...). The floor also measures the order that waits for the confirm before waiting
//! for the value (`confirm_first_p50_us`, ...), interleaved round trip by round trip with the
//! first. Values are checked after each round trip's clock stops, for both.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rask::builtins::inc;
use rask::Client;
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape};
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

/// The floor: the same round trips straight through lapin and Redis, in both orders (confirm
/// and value at once, and confirm first), alternating which goes first.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    let warmup = warmup(n);
    let shape = Shape::of(inc, (n as i64,), n as i64 + 1, 2)?;
    let mut stage = floor.stage().await?;
    let mut at_once = Vec::with_capacity(n);
    let mut confirm_first = Vec::with_capacity(n);
    for i in 0..warmup + n {
        for first in [i % 2 == 0, i % 2 == 1] {
            // Message numbers 2i and 2i + 1: every value differs.
            let m = 2 * i + usize::from(first);
            let started = Instant::now();
            let value = stage.round_trip(&shape, m, first).await?;
            let elapsed = started.elapsed();
            check_value(&shape, m, &value)?;
            if i >= warmup {
                if first {
                    &mut confirm_first
                } else {
                    &mut at_once
                }
                .push(elapsed);
            }
        }
    }
    stage.close().await?;
    let mut figures = percentiles(at_once);
    for (key, value) in percentiles(confirm_first).entries() {
        if let Some(key) = CONFIRM_FIRST
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| *c)
        {
            figures.set(key, value);
        }
    }
    Ok(figures)
}

/// The confirm-first order's figures, by the name of the same figure of the other order.
const CONFIRM_FIRST: [(&str, &str); 3] = [
    ("p50_us", "confirm_first_p50_us"),
    ("p90_us", "confirm_first_p90_us"),
    ("p99_us", "confirm_first_p99_us"),
];

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
