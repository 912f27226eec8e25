//! `scale`: the throughput workload at ten times the tasks (200,000), to show how cost grows
//! with the size of a batch: tasks/s, and the peak RSS of the client and of the workers, which
//! the caller measures around every run (see `Probe` in `mod.rs`).

use anyhow::Result;
use rask::Client;

use super::floor::Floor;
use super::report::Figures;
use super::throughput;

/// rask: [`throughput::rask`] with `n` tasks.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    throughput::rask(client, n).await
}

/// The floor: [`throughput::floor`] with `n` messages.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    throughput::floor(floor, n).await
}
