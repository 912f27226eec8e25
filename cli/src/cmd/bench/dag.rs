//! `dag`: a binary reduction tree of `leaf(i) = i % 7 + 1` tasks summed pairwise by `add` tasks
//! (1,024 leaves and 1,023 adds: 2,047 tasks); seconds until the root's result is back, whose
//! sum is checked. rask submits the tree as one graph; the floor, which has no dependency
//! tracking, runs it level by level from the client (publish a level, wait for it, publish the
//! next) with messages of the same sizes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rask::builtins::{add, leaf};
use rask::{Client, Delayed, TaskKey};
use rask_common::batch::read_pace;
use tokio::time::Instant;

use super::floor::{check_value, Floor, Shape};
use super::report::Figures;
use super::PATIENCE;

/// rask: the tree over `leaves` leaves (a power of two), built with `delayed` and computed as one
/// graph: workers release each `add` as its inputs are stored, with no client round trip per
/// level. Leaves are impure (fresh keys), so repeated runs cannot reuse earlier results.
/// Measured on a cluster that has run `leaf` and `add` before ([`warm_up`]).
pub(super) async fn rask(client: &Client, leaves: usize) -> Result<Figures> {
    ensure!(
        leaves.is_power_of_two(),
        "the tree needs a power-of-two number of leaves"
    );
    warm_up(client).await?;
    let started = Instant::now();
    let mut level: Vec<Delayed<i64>> = (0..leaves as i64)
        .map(|i| leaf.delayed(i).impure())
        .collect();
    let mut keys: Vec<TaskKey> = level.iter().map(|d| d.key().clone()).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| add.delayed(&p[0], &p[1])).collect();
        keys.extend(level.iter().map(|d| d.key().clone()));
    }
    let value = tokio::time::timeout(PATIENCE, client.compute(&level[0]))
        .await
        .context("waiting for the root")?
        .context("computing the tree")?;
    let seconds = started.elapsed().as_secs_f64();
    let expected: i64 = (0..leaves as i64).map(|i| i % 7 + 1).sum();
    ensure!(
        value == expected,
        "the tree summed to {value}, expected {expected}"
    );
    for chunk in keys.chunks(10_000) {
        client.release(chunk).await.context("releasing results")?;
    }
    Ok(figures(leaves, seconds))
}

/// Makes sure the workers have published the run times of `leaf` and `add`, as on any cluster
/// that has run them before: a graph's ready sources are batched by their function's run time
/// (`rask_common::batch`), and on a fresh cluster, before the workers' first heartbeat after
/// running them, each source is a message of its own. If not yet published, computes a tree of
/// two leaves and waits for them (outside the clock).
async fn warm_up(client: &Client) -> Result<()> {
    let store = rask_common::Store::connect(client.settings())
        .await
        .context("connecting to Redis")?;
    let measured = || async {
        let leaves = read_pace(&store, "leaf").await?;
        let adds = read_pace(&store, "add").await?;
        anyhow::Ok(leaves.is_some() && adds.is_some())
    };
    if measured().await? {
        return Ok(());
    }
    let leaves = [leaf.delayed(0).impure(), leaf.delayed(1).impure()];
    let tree = add.delayed(&leaves[0], &leaves[1]);
    let keys = [leaves[0].key(), leaves[1].key(), tree.key()].map(Clone::clone);
    let value = tokio::time::timeout(PATIENCE, client.compute(&tree))
        .await
        .context("waiting for the warm-up tree")?
        .context("computing the warm-up tree")?;
    ensure!(value == 3, "the warm-up tree summed to {value}, expected 3");
    client.release(&keys).await.context("releasing results")?;
    let deadline = Instant::now() + PATIENCE;
    while !measured().await? {
        ensure!(
            Instant::now() < deadline,
            "the workers did not publish the run times of leaf and add within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The floor: the same levels (`leaves`, `leaves / 2`, ..., 1 messages), each published then
/// collected before the next.
pub(super) async fn floor(floor: &mut Floor, leaves: usize) -> Result<Figures> {
    ensure!(
        leaves.is_power_of_two(),
        "the tree needs a power-of-two number of leaves"
    );
    let total: i64 = (0..leaves as i64).map(|i| i % 7 + 1).sum();
    let leaf_shape = Shape::of(leaf, (leaves as i64 - 1,), 7, 3)?;
    let mut stage = floor.stage().await?;
    // Every level's values, checked once the clock has stopped (as rask's root is).
    let mut levels = Vec::new();
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
        let mut values = vec![Vec::new(); width];
        stage
            .collect(&shape, &keys, |i, value| {
                values[i] = value;
                Ok(())
            })
            .await?;
        levels.push((shape, values));
        width /= 2;
        level += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    stage.close().await?;
    for (shape, values) in &levels {
        for (i, value) in values.iter().enumerate() {
            check_value(shape, i, value)?;
        }
    }
    Ok(figures(leaves, seconds))
}

fn figures(leaves: usize, seconds: f64) -> Figures {
    Figures::default()
        .with("tasks", (2 * leaves - 1) as f64)
        .with("seconds", seconds)
}
