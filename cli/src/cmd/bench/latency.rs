//! `latency`: sequential round trips, each submitting one `inc` and waiting for its result
//! (rask: `Client::call`);
//! p50/p90/p99 in µs. The first 5% of round trips (at least one) warm up connections and
//! caches and are not counted, for rask and the floor alike. The floor publishes one message,
//! its consumer stores the value and publishes a notification, and the client waits for that
//! notification and the publisher confirm at once and reads the value (`p50_us`, ...). The floor
//! also measures the order that waits for the confirm before waiting for the value
//! (`confirm_first_p50_us`, ...), and the round trip `call` makes now, the value sent to the
//! client in a reply as it is stored (`reply_p50_us`, ...; [`rask_common::reply`]), interleaved
//! round trip by round trip with the first. Values are checked after each round trip's clock
//! stops, for all.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rask::builtins::inc;
use rask::Client;
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape, Wait};
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

/// The floor: the same round trips straight through lapin and Redis, in three ways (confirm
/// and value at once, confirm first, and value by reply), taking turns at going first.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    const WAITS: [Wait; 3] = [Wait::AtOnce, Wait::ConfirmFirst, Wait::Reply];
    let warmup = warmup(n);
    let shape = Shape::of(inc, (n as i64,), n as i64 + 1, 2)?;
    let mut stage = floor.stage().await?;
    let mut samples: [Vec<Duration>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
    for i in 0..warmup + n {
        for turn in 0..WAITS.len() {
            let way = (i + turn) % WAITS.len();
            // Message numbers 3i, 3i + 1 and 3i + 2: every value differs.
            let m = WAITS.len() * i + way;
            let started = Instant::now();
            let value = stage.round_trip(&shape, m, WAITS[way]).await?;
            let elapsed = started.elapsed();
            check_value(&shape, m, &value)?;
            if i >= warmup {
                samples[way].push(elapsed);
            }
        }
    }
    stage.close().await?;
    let [at_once, confirm_first, reply] = samples;
    let mut figures = percentiles(at_once);
    for (names, samples) in [(CONFIRM_FIRST, confirm_first), (REPLY, reply)] {
        for (key, value) in percentiles(samples).entries() {
            if let Some(name) = names.iter().find(|(k, _)| *k == key).map(|(_, n)| *n) {
                figures.set(name, value);
            }
        }
    }
    Ok(figures)
}

/// The confirm-first way's figures, by the name of the same figure of the first way.
const CONFIRM_FIRST: [(&str, &str); 3] = [
    ("p50_us", "confirm_first_p50_us"),
    ("p90_us", "confirm_first_p90_us"),
    ("p99_us", "confirm_first_p99_us"),
];

/// The reply way's figures, by the name of the same figure of the first way.
const REPLY: [(&str, &str); 3] = [
    ("p50_us", "reply_p50_us"),
    ("p90_us", "reply_p90_us"),
    ("p99_us", "reply_p99_us"),
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
