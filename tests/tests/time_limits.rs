//! Time limits against real servers: a task past its limit fails with `TimedOut` naming the
//! limit, an async body is cancelled, a blocking one gives its slot back while it runs on, and
//! the worker's `task_time_limit` applies to tasks without a limit of their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rask::builtins::{inc, sleep_ms};
use rask::{FailureKind, TaskOptions};
use rask_tests::{failure, TestEnv, PATIENCE};
use rask_worker::Registry;

/// Set when the body of [`stuck`] is dropped.
static STUCK_DROPPED: AtomicBool = AtomicBool::new(false);
/// Set while the body of [`hold`] runs.
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Lets the body of [`hold`] return.
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Sets [`STUCK_DROPPED`] when dropped.
struct DropFlag;

impl Drop for DropFlag {
    fn drop(&mut self) {
        STUCK_DROPPED.store(true, Ordering::SeqCst);
    }
}

rask::task! {
    /// Never finishes on its own; records being dropped.
    async fn stuck(x: i64) -> i64 {
        let _flag = DropFlag;
        std::future::pending::<()>().await;
        x
    }
}

rask::task! {
    /// Blocks its thread until [`RELEASE`] is set, flagging [`HOLDING`] meanwhile.
    fn hold(x: i64) -> i64 {
        HOLDING.store(true, Ordering::SeqCst);
        while !RELEASE.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        HOLDING.store(false, Ordering::SeqCst);
        x
    }
}

fn registry() -> Registry {
    Registry::with_builtins().with::<stuck>().with::<hold>()
}

fn limit(limit: Duration) -> TaskOptions {
    TaskOptions::new().time_limit(limit)
}

#[tokio::test]
async fn an_async_task_past_its_limit_is_cancelled_and_times_out() {
    let env = TestEnv::new("asynclimit").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let future = client
        .submit_with(stuck, (1,), &limit(Duration::from_millis(200)))
        .await
        .unwrap();
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::TimedOut);
    assert!(f.message.contains("time limit of 200ms"), "{}", f.message);
    assert!(STUCK_DROPPED.load(Ordering::SeqCst), "the body was dropped");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_blocking_task_past_its_limit_frees_its_slot_while_it_runs_on() {
    let mut env = TestEnv::new("blockinglimit").await;
    env.settings.concurrency = 1;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let held = client
        .submit_with(hold, (1,), &limit(Duration::from_millis(200)))
        .await
        .unwrap();
    let next = client.submit(inc, (1,)).await.unwrap();

    let f = failure(held.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::TimedOut);
    assert!(f.message.contains("time limit of 200ms"), "{}", f.message);
    // The only slot ran the next task while the timed-out body still holds its thread.
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 2);
    assert!(HOLDING.load(Ordering::SeqCst), "the body is still running");

    RELEASE.store(true, Ordering::SeqCst);
    env.eventually("the body to return", || async {
        !HOLDING.load(Ordering::SeqCst)
    })
    .await;
    // Its late result was dropped: the stored outcome is still the timeout.
    let again = failure(held.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(again.kind, FailureKind::TimedOut);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_worker_time_limit_applies_to_tasks_without_their_own() {
    let mut env = TestEnv::new("workerlimit").await;
    env.settings.task_time_limit = Duration::from_millis(300);
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let unlimited = client.submit(sleep_ms, (60_000,)).await.unwrap();
    let own_limit = client
        .submit_with(sleep_ms, (600,), &limit(Duration::from_secs(30)))
        .await
        .unwrap();

    let f = failure(unlimited.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::TimedOut);
    assert!(f.message.contains("time limit of 300ms"), "{}", f.message);
    // A task's own limit wins over the worker's.
    assert_eq!(own_limit.result_within(PATIENCE).await.unwrap(), 600);
    worker.stop().await.unwrap();
}
