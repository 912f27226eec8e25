//! `fine`: 200,000 `inc` through one batched `map` ([`BATCH`] calls per message), then all
//! gathered: tasks/s. The floor batches the same way: one persistent, confirmed message carries
//! [`BATCH`] calls, its consumer stores their values in one pipeline before acking it, and the
//! client checks every value. Both check every value after the clock stops.

use anyhow::{ensure, Result};
use rask::builtins::inc;
use rask::{Client, TaskOptions};
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape};
use super::report::Figures;
use super::{map_and_gather, release};

/// Calls per message, for rask and the floor alike.
pub(super) const BATCH: usize = 100;

/// rask: `map_with(inc, 0..n, batch(BATCH))`, then `gather`; checks every result is its input
/// plus one.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    let options = TaskOptions::new().batch(BATCH);
    let (values, futures, seconds) =
        map_and_gather(client, inc, (0..n as i64).map(|i| (i,)), &options).await?;
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

/// The floor: n calls shaped like `inc` calls, [`BATCH`] per message as long as rask's batch
/// message, published, then every value collected.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    let last = n.saturating_sub(1) as i64;
    let shape = Shape::of(inc, (last,), last + 1, 3)?;
    let body_len = Shape::batch_len(inc, (last,), BATCH)?;
    let mut stage = floor.stage().await?;
    let mut values = vec![Vec::new(); n];
    let started = Instant::now();
    let keys = stage.publish_batched(&shape, 0..n, BATCH, body_len).await?;
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
        .with("messages_per_s", n.div_ceil(BATCH) as f64 / seconds)
}
