//! `cpu`: n CPU-bound `spin_hash` tasks (a fixed number of rounds of integer hashing each, about
//! 8 ms)
//! submitted with one `map`, then gathered; tasks/s. Run once each with `--workers 1`, `2` and `4`
//! (and `--concurrency 1`) it shows how throughput scales with worker processes, and where the cores
//! run out. The floor is the same hashing on as many threads of the bench process as there are
//! workers, with no broker or store: what the cores give.

use anyhow::{ensure, Context, Result};
use rask::builtins::{spin, spin_hash};
use rask::Client;
use tokio::time::Instant;

use super::floor::Floor;
use super::report::Figures;
use super::{map_and_gather, release, unbatched};

/// Hashing rounds per task: about 8 ms on one of this machine's cores.
pub(super) const ROUNDS: u32 = 1_500_000;
/// Every this many results is checked by hashing again (all of them would double the work).
const CHECK_EVERY: usize = 50;

/// rask: `map(spin_hash, (i, ROUNDS))`, then `gather`; checks a sample of the results.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    let (values, futures, seconds) = map_and_gather(
        client,
        spin_hash,
        (0..n as u64).map(|i| (i, ROUNDS)),
        &unbatched(),
    )
    .await?;
    for (i, value) in values.iter().enumerate().step_by(CHECK_EVERY) {
        ensure!(
            *value == spin(i as u64, ROUNDS),
            "spin_hash({i}, {ROUNDS}) returned {value}, expected {}",
            spin(i as u64, ROUNDS)
        );
    }
    release(client, &futures).await?;
    Ok(figures(n, seconds))
}

/// The floor: the n hashes on one thread per worker.
pub(super) async fn floor(floor: &Floor, n: usize) -> Result<Figures> {
    let threads = floor.consumers().max(1);
    let started = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        handles.push(tokio::task::spawn_blocking(move || {
            (t..n)
                .step_by(threads)
                .map(|i| spin(i as u64, ROUNDS))
                .fold(0u64, |acc, v| acc ^ v)
        }));
    }
    let mut all = 0;
    for handle in handles {
        all ^= handle.await.context("a hashing thread panicked")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Keeps the work from being optimised away.
    std::hint::black_box(all);
    Ok(figures(n, seconds))
}

fn figures(n: usize, seconds: f64) -> Figures {
    Figures::default()
        .with("tasks", n as f64)
        .with("seconds", seconds)
        .with("tasks_per_s", n as f64 / seconds)
}
