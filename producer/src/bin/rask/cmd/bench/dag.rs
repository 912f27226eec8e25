//! `dag`: a binary reduction tree of `leaf(i) = i % 7 + 1` tasks summed pairwise by `add` tasks
//! (1,024 leaves and 1,023 adds: 2,047 tasks); seconds until the root's result is back, whose
//! sum is checked. Until rask can submit a graph, the client runs it level by level: map a
//! level, gather it, map the next level over the pairs of results. The floor does the same
//! levels with messages of the same sizes.

use anyhow::{ensure, Context, Result};
use rask::builtins::{add, leaf};
use rask::Client;
use tokio::time::Instant;

use super::floor::{Floor, Shape, PREFETCH};
use super::report::Figures;
use super::{release, PATIENCE};

/// rask: the tree over `leaves` leaves (a power of two), level by level.
pub(super) async fn rask(client: &Client, leaves: usize) -> Result<Figures> {
    ensure!(
        leaves.is_power_of_two(),
        "the tree needs a power-of-two number of leaves"
    );
    let started = Instant::now();
    let futures = client
        .map(leaf, (0..leaves as i64).map(|i| (i,)))
        .await
        .context("submitting the leaves")?;
    let mut values: Vec<i64> = client
        .gather(&futures)
        .timeout(PATIENCE)
        .await
        .context("gathering the leaves")?;
    let mut keys = vec![futures];
    while values.len() > 1 {
        let pairs: Vec<(i64, i64)> = values.chunks(2).map(|p| (p[0], p[1])).collect();
        let futures = client.map(add, pairs).await.context("submitting a level")?;
        values = client
            .gather(&futures)
            .timeout(PATIENCE)
            .await
            .context("gathering a level")?;
        keys.push(futures);
    }
    let seconds = started.elapsed().as_secs_f64();
    let expected: i64 = (0..leaves as i64).map(|i| i % 7 + 1).sum();
    ensure!(
        values == [expected],
        "the tree summed to {values:?}, expected {expected}"
    );
    for level in &keys {
        release(client, level).await?;
    }
    Ok(figures(leaves, seconds))
}

/// The floor: the same levels (`leaves`, `leaves / 2`, ..., 1 messages), each published then
/// polled for before the next.
pub(super) async fn floor(floor: &mut Floor, leaves: usize) -> Result<Figures> {
    ensure!(
        leaves.is_power_of_two(),
        "the tree needs a power-of-two number of leaves"
    );
    let total: i64 = (0..leaves as i64).map(|i| i % 7 + 1).sum();
    let leaf_shape = Shape::of(leaf, (leaves as i64 - 1,), 7, 3)?;
    let mut stage = floor.stage(false, PREFETCH).await?;
    let started = Instant::now();
    let mut width = leaves;
    let mut level = 0;
    while width >= 1 {
        let shape = if level == 0 {
            leaf_shape.clone()
        } else {
            // As long as the encodings of the largest sums, near the root.
            Shape::of(add, (total / 2, total / 2), total, 4 + level)?
        };
        let keys = stage.publish(&shape, 0..width).await?;
        stage.collect(&shape, 0, &keys).await?;
        width /= 2;
        level += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    stage.close().await?;
    Ok(figures(leaves, seconds))
}

fn figures(leaves: usize, seconds: f64) -> Figures {
    Figures::default()
        .with("tasks", (2 * leaves - 1) as f64)
        .with("seconds", seconds)
}
