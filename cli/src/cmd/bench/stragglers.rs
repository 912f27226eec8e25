//! `stragglers` (not in the default run): a `map` of n `straggle` tasks of [`MS`] ms each, where
//! every *run* (not every argument: a straggler is a slow machine or a pause, not a slow input)
//! has a [`PER_MILLE`]‰ chance of taking [`SLOW_MS`] ms, 100 times longer. rask's side hedges
//! (`TaskOptions::hedge(`[`HEDGE_AFTER`]`)`); the other side ("floor" in the table) is the same
//! rask map without hedging, not the raw floor: what is compared is hedging. Figures: per-task
//! completion (from the map's start to each result, in completion order) p50 and p99 in ms, the
//! seconds to the last result, and the hedge copies published (`extra_runs`: the extra runs
//! hedging cost at most; a copy dropped because the other copy finished first never ran).
//! Every value is checked. With few worker slots (the default: one per core) the map is bound
//! by its backlog and p99 is near the total; `--concurrency 64` shows the tail itself.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use rask::builtins::straggle;
use rask::Client;
use tokio::time::Instant;

use super::report::Figures;
use super::{release, unbatched, PATIENCE};

/// The usual run time of a task, ms.
pub(super) const MS: u64 = 5;
/// A straggling run's time, ms (100 times [`MS`]).
pub(super) const SLOW_MS: u64 = 500;
/// Runs out of 1,000 that straggle.
pub(super) const PER_MILLE: u32 = 10;
/// When rask's side publishes a second copy of a task still running.
pub(super) const HEDGE_AFTER: Duration = Duration::from_millis(50);

/// rask with hedging.
pub(super) async fn hedged(client: &Client, n: usize) -> Result<Figures> {
    run(client, n, Some(HEDGE_AFTER)).await
}

/// The same map without hedging.
pub(super) async fn unhedged(client: &Client, n: usize) -> Result<Figures> {
    run(client, n, None).await
}

async fn run(client: &Client, n: usize, hedge: Option<Duration>) -> Result<Figures> {
    let mut options = unbatched();
    if let Some(after) = hedge {
        options = options.hedge(after);
    }
    let copies_before = client.hedge_copies(<straggle as rask::Task>::NAME).await?;
    let started = Instant::now();
    let futures = client
        .map_with(
            straggle,
            (0..n as u64).map(|i| (i, MS, SLOW_MS, PER_MILLE)),
            &options,
        )
        .await
        .context("submitting")?;
    let mut done = Vec::with_capacity(n);
    let mut completed = client.as_completed(&futures);
    while let Some(next) = tokio::time::timeout(PATIENCE, completed.next())
        .await
        .context("waiting for results")?
    {
        let (index, result) = next;
        let value = result.with_context(|| format!("straggle task {index}"))?;
        done.push(started.elapsed());
        ensure!(value == index as u64, "straggle({index}) returned {value}");
    }
    let seconds = started.elapsed().as_secs_f64();
    ensure!(done.len() == n, "{} results of {n}", done.len());
    let copies = client.hedge_copies(<straggle as rask::Task>::NAME).await? - copies_before;
    release(client, &futures).await?;
    done.sort_unstable();
    let ms = |q: usize| done[(n * q / 100).min(n - 1)].as_secs_f64() * 1e3;
    Ok(Figures::default()
        .with("tasks", n as f64)
        .with("p50_ms", ms(50))
        .with("p99_ms", ms(99))
        .with("seconds", seconds)
        .with("extra_runs", copies as f64))
}
