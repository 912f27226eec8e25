//! Time limits against real servers: a task past its limit fails with `TimedOut` naming the
//! limit, an async body is cancelled, a blocking one gives its slot back while it runs on (its
//! thread counted, and the worker stopping when `max_overrun_threads` of them run on), and the
//! worker's `task_time_limit` applies to tasks without a limit of their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rask::builtins::{inc, sleep_ms};
use rask::{FailureKind, TaskOptions};
use rask_common::Store;
use rask_tests::{failure, http_get, metric, TestEnv, PATIENCE};
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

rask::task! {
    /// Blocks its thread for `ms` milliseconds, then returns them.
    fn nap(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<stuck>()
        .with::<hold>()
        .with::<nap>()
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

#[tokio::test]
async fn a_worker_stops_when_max_overrun_threads_run_on_past_their_limit() {
    let mut env = TestEnv::new("overruns").await;
    env.settings.concurrency = 1;
    env.settings.max_overrun_threads = 2;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    let overrun_threads = || async {
        let workers = rask_common::ops::live_workers(&store).await.unwrap();
        let address = workers[0].metrics_addr.expect("the worker serves metrics");
        let (_, text) = http_get(&address.to_string(), "/metrics").await;
        metric(&text, "rask_overrun_threads")
    };
    let overrun = || async {
        let future = client
            .submit_with(nap, (3_000,), &limit(Duration::from_millis(100)))
            .await
            .unwrap();
        let f = failure(future.result_within(PATIENCE).await.unwrap_err());
        assert_eq!(f.kind, FailureKind::TimedOut, "{}", f.message);
    };

    // One thread runs on past its limit: counted, and the worker serves on.
    overrun().await;
    assert_eq!(overrun_threads().await, 1.0);
    let next = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 2);

    // The second reaches the bound: the worker stops of its own accord (it leaves the registry
    // and stops consuming) and says why; what is submitted meanwhile waits in the queue.
    overrun().await;
    env.eventually("the worker to leave the registry", || async {
        rask_common::ops::live_workers(&store)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let waiting = client.submit(inc, (41,)).await.unwrap();
    let queue = env.settings.queue.clone();
    env.eventually("the task waiting with no consumer", || async {
        env.queue_depth(&queue).await == (1, 0)
    })
    .await;
    match worker.stop().await {
        Err(rask_worker::Error::Overruns { max, .. }) => assert_eq!(max, 2),
        other => panic!("expected the overrun bound, got {other:?}"),
    }
    // A fresh worker runs it.
    let fresh = env.run_worker(registry());
    assert_eq!(waiting.result_within(PATIENCE).await.unwrap(), 42);
    fresh.stop().await.unwrap();
}
