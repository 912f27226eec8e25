//! `million` (only when asked for): a `map` of 1,000,000 `inc`, one message per task, then
//! gathered, to show that the client streams: its peak RSS (`client_peak_rss_mib`, measured
//! around the run) and the throughput per message beside that of a 20,000-task map run just
//! before it in the same conditions (`ratio_to_20k`: 1.0 means no slower per message at fifty
//! times the size). The floor is the throughput floor at the same size.

use anyhow::Result;
use rask::Client;

use super::floor::Floor;
use super::report::Figures;
use super::throughput;

/// The size of the reference run.
const REFERENCE: usize = 20_000;

/// rask: [`throughput::rask`] with [`REFERENCE`] tasks, then with `n`.
pub(super) async fn rask(client: &Client, n: usize) -> Result<Figures> {
    let reference = throughput::rask(client, REFERENCE.min(n)).await?;
    let figures = throughput::rask(client, n).await?;
    let per_s = |f: &Figures| f.get("tasks_per_s").unwrap_or(0.0);
    let (big, small) = (per_s(&figures), per_s(&reference));
    Ok(figures
        .with("reference_tasks_per_s", small)
        .with("ratio_to_20k", if small > 0.0 { big / small } else { 0.0 }))
}

/// The floor: [`throughput::floor`] with `n` messages.
pub(super) async fn floor(floor: &mut Floor, n: usize) -> Result<Figures> {
    throughput::floor(floor, n).await
}
