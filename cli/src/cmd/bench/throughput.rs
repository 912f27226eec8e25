//! `throughput`: n trivial `inc` tasks submitted with one `map`, then all gathered; tasks/s from
//! the first submit to the last result. The floor publishes n messages of the same size, then
//! collects their values as they are announced. Both check every value after the clock stops.

use anyhow::{ensure, Result};
use rask::builtins::inc;
use rask::Client;
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape};
use super::report::Figures;
use super::{map_and_gather, release, unbatched};

/// rask: `map(inc, 0..n)`, then `gather`; checks every result is its input plus one.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    let (values, futures, seconds) =
        map_and_gather(client, inc, (0..n as i64).map(|i| (i,)), &unbatched()).await?;
    for (i, value) in values.iter().enumerate() {
        ensure!(
            *value == i as i64 + 1,
            "inc({i}) returned {value}, expected {}",
            i + 1
        );
    }
    release(client, &futures).await?;
    Ok(figures(n, seconds))
}

/// The floor: n messages shaped like `inc` calls, published, then every value collected.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    let last = n.saturating_sub(1) as i64;
    let shape = Shape::of(inc, (last,), last + 1, 1)?;
    let mut stage = floor.stage().await?;
    let mut values = vec![Vec::new(); n];
    let started = Instant::now();
    let keys = stage.publish(&shape, 0..n).await?;
    stage
        .collect(&shape, &keys, |i, value| {
            values[i] = value;
            Ok(())
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    stage.close().await?;
    for (i, value) in values.iter().enumerate() {
        check_value(&shape, i, value)?;
    }
    Ok(figures(n, seconds))
}

fn figures(n: usize, seconds: f64) -> Figures {
    Figures::default()
        .with("tasks", n as f64)
        .with("seconds", seconds)
        .with("tasks_per_s", n as f64 / seconds)
}
