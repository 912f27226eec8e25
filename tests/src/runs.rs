//! Long runs to break things in the middle of: tasks that last long enough to be hit, workers
//! that are consuming before the run is judged, and how far a run has got.

use std::ops::Range;

use rask::builtins::sleep_ms;
use rask::{Client, Future};
use rask_common::Store;
use tokio::time::Instant;

use crate::{TestEnv, PATIENCE};

/// `sleep_ms`'s argument for task `i`: 4-10 ms, so that a run of thousands of tasks lasts
/// seconds on a few slots and can be hit in the middle.
pub fn pause_of(i: usize) -> u64 {
    (i % 7 + 4) as u64
}

/// `map`s `sleep_ms` over the tasks of `range`, task `i` sleeping [`pause_of`]`(i)`.
pub async fn map_paced(client: &Client, range: Range<usize>) -> rask::Result<Vec<Future<u64>>> {
    client.map(sleep_ms, range.map(|i| (pause_of(i),))).await
}

/// How many of `futures` have a stored outcome, read through `store`. A read that fails (a
/// store going away is what these tests do) is made again, as rask's own reads are, until
/// [`PATIENCE`].
pub async fn stored<T>(store: &Store, futures: &[Future<T>]) -> usize {
    let keys: Vec<_> = futures.iter().map(|f| f.key().clone()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match store.get_outcomes(&keys).await {
            Ok(outcomes) => return outcomes.iter().filter(|o| o.is_some()).count(),
            Err(e) => {
                assert!(Instant::now() < deadline, "the store answers: {e}");
                eprintln!("reading outcomes failed ({e}); reading again");
            }
        }
    }
}

/// Waits (polling) until at least `n` of `futures` are stored; fails after [`PATIENCE`].
pub async fn until_stored<T>(env: &TestEnv, store: &Store, futures: &[Future<T>], n: usize) {
    env.eventually(&format!("{n} results stored"), || async {
        stored(store, futures).await >= n
    })
    .await;
}

/// Starts `n` stock worker processes of `env` and waits until each consumes.
pub async fn ready_workers(env: &TestEnv, n: usize) -> Vec<rask::local::Worker> {
    let mut workers = env.spawn_workers(n);
    for worker in &mut workers {
        worker.wait_ready(PATIENCE).await.expect("worker ready");
    }
    workers
}
