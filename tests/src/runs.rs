//! Long runs to break things in the middle of: tasks that last long enough to be hit and
//! return a value of their own, workers that are consuming before the run is judged, and how far
//! a run has got.

use std::ops::Range;

use rask::{Client, Future};
use rask_common::Store;
use tokio::time::Instant;

use crate::tasks::paced;
use crate::{TestEnv, PATIENCE};

/// How long task `i` sleeps: 4-10 ms, so that a run of thousands of tasks lasts seconds on a
/// few slots and can be hit in the middle.
pub fn pause_of(i: usize) -> u64 {
    (i % 7 + 4) as u64
}

/// The value task `i` returns: its own, unlike any other task's, so that a result stored under
/// the wrong key (or gathered into the wrong place) fails the check.
pub fn value_of(i: usize) -> u64 {
    i as u64
}

/// `map`s [`paced`] over the tasks of `range`: task `i` sleeps [`pause_of`]`(i)` and returns
/// [`value_of`]`(i)`. Only [`ready_workers`] run it.
pub async fn map_paced(client: &Client, range: Range<usize>) -> rask::Result<Vec<Future<u64>>> {
    client
        .map(paced, range.map(|i| (value_of(i), pause_of(i))))
        .await
}

/// Checks that `values`, gathered from [`map_paced`]`(range)`, are each task's own.
pub fn assert_paced_values(values: &[u64], range: Range<usize>) {
    assert_eq!(values.len(), range.len(), "one value per task");
    for (i, value) in range.zip(values) {
        assert_eq!(*value, value_of(i), "task {i}");
    }
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

/// Starts `n` worker processes of `env` that run [`paced`]: `rask-test-worker`, the stock
/// worker plus [`crate::tasks`] (cargo builds it next to the test binaries).
pub fn spawn_test_workers(env: &TestEnv, n: usize) -> Vec<rask::local::Worker> {
    let program = rask::local::sibling_binary("rask-test-worker")
        .expect("rask-test-worker is built (cargo builds it for the tests of rask-tests)");
    env.spawn_program_with(&program, n, &[])
}

/// Starts `n` worker processes of `env` that run [`paced`] ([`spawn_test_workers`]) and waits
/// until each consumes.
pub async fn ready_workers(env: &TestEnv, n: usize) -> Vec<rask::local::Worker> {
    let mut workers = spawn_test_workers(env, n);
    for worker in &mut workers {
        worker.wait_ready(PATIENCE).await.expect("worker ready");
    }
    workers
}
