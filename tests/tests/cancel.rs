//! Force cancel against real servers (`client.cancel(..).force()`, `rask cancel --force`): a
//! running task is stopped and its worker serves on, a queued revoked task never runs (on a
//! worker running then, or one started after the revocation), a plain function that ignores its
//! cancellation is abandoned after `cancel_grace`, the outcome stays `Cancelled`, and a
//! revocation whose announcement a worker missed reaches it by the periodic rescan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rask::builtins::{inc, sleep_ms};
use rask::{Client, FailureKind, Future};
use rask_tests::{failure, Counter, TestEnv, PATIENCE};
use rask_worker::Registry;
use tokio::time::Instant;

/// Set while the body of [`sleeper`] runs (cleared when it is dropped).
static SLEEPING: AtomicBool = AtomicBool::new(false);
/// Set when the body of [`sleeper`] is dropped.
static SLEEPER_DROPPED: AtomicBool = AtomicBool::new(false);
/// Set while the body of [`hold`] runs.
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Lets the body of [`hold`] return.
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Marks [`sleeper`] dropped.
struct Dropped;

impl Drop for Dropped {
    fn drop(&mut self) {
        SLEEPING.store(false, Ordering::SeqCst);
        SLEEPER_DROPPED.store(true, Ordering::SeqCst);
    }
}

rask::task! {
    /// Sleeps `ms` milliseconds, flagging [`SLEEPING`] meanwhile and [`SLEEPER_DROPPED`] when
    /// its future is dropped (as `sleep_ms`, but observable).
    async fn sleeper(ms: u64) -> u64 {
        SLEEPING.store(true, Ordering::SeqCst);
        let _dropped = Dropped;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

rask::task! {
    /// Blocks its thread until [`RELEASE`] is set, ignoring any cancellation, flagging
    /// [`HOLDING`] meanwhile.
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
    /// Counts its run in the Redis counter `counter` (`INCR`) first thing, on its own thread (a
    /// plain function, so that once it starts the count is made whatever happens to its task),
    /// then returns the count.
    fn count_run(redis_url: String, counter: String) -> i64 {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client.get_connection().expect("Redis answers");
        redis::cmd("INCR")
            .arg(counter)
            .query::<i64>(&mut conn)
            .expect("INCR succeeds")
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<sleeper>()
        .with::<hold>()
        .with::<count_run>()
}

/// Cancels `future` with `force`; returns how many tasks had no outcome (0 or 1).
async fn force_cancel<T>(client: &Client, future: &Future<T>) -> usize {
    let cancel = client.cancel(std::slice::from_ref(future));
    cancel.force().await.expect("the cancellation is stored")
}

/// An environment whose workers run one task at a time and hold one delivery, so that queued
/// tasks stay in the queue in order.
async fn one_at_a_time(name: &str) -> TestEnv {
    let mut env = TestEnv::new(name).await;
    env.settings.concurrency = 1;
    env.settings.prefetch = 1;
    env
}

#[tokio::test]
async fn a_running_async_task_is_stopped_and_the_worker_serves_on() {
    let env = one_at_a_time("cancelrunning").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let running = client.submit(sleeper, (60_000,)).await.unwrap();
    env.eventually("the sleeper to run", || async {
        SLEEPING.load(Ordering::SeqCst)
    })
    .await;

    let cancelled = Instant::now();
    assert_eq!(force_cancel(&client, &running).await, 1);
    env.eventually("the sleeper's body to be dropped", || async {
        SLEEPER_DROPPED.load(Ordering::SeqCst)
    })
    .await;
    // The only slot is free again: the next task runs.
    let next = client.submit(inc, (41,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 42);
    assert!(
        cancelled.elapsed() < Duration::from_secs(30),
        "a 60 s task stopped well before its end"
    );
    let f = failure(running.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    // The queue is empty and nothing is left unacknowledged.
    env.eventually("the queue to drain", || async {
        env.queue_depth(&env.settings.queue).await.0 == 0
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn cancel_force_on_the_command_line_stops_a_running_sleep_ms() {
    let env = one_at_a_time("cancelcli").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let running = client.submit(sleep_ms, (60_000,)).await.unwrap();
    // With one slot and a prefetch of one, the delivery leaving the queue is the task starting.
    env.eventually("sleep_ms to be taken", || async {
        env.queue_depth(&env.settings.queue).await.0 == 0
    })
    .await;
    let cancelled = Instant::now();
    let key = running.key().to_string();
    let out = env.rask(&["cancel", "--force", &key], "").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let f = failure(running.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    let next = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 2);
    assert!(
        cancelled.elapsed() < Duration::from_secs(30),
        "the worker was free long before the 60 s sleep would end"
    );
    // Cancelling again finds the outcome: nothing more to cancel.
    let again = env.rask(&["cancel", "--force", &key], "").await;
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "0");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_queued_revoked_task_never_runs() {
    let env = one_at_a_time("cancelqueued").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let counter = Counter::new(&env, "queued");
    let blocker = client.submit(sleeper, (60_000,)).await.unwrap();
    env.eventually("the blocker to run", || async {
        SLEEPING.load(Ordering::SeqCst)
    })
    .await;
    let queued = client
        .submit(count_run, (counter.url.clone(), counter.key.clone()))
        .await
        .unwrap();
    assert_eq!(force_cancel(&client, &queued).await, 1);
    // Free the slot; the queued task comes next, then a marker.
    client.cancel(&[blocker]).force().await.unwrap();
    let marker = client.submit(inc, (7,)).await.unwrap();
    assert_eq!(marker.result_within(PATIENCE).await.unwrap(), 8);

    assert_eq!(counter.runs().await, 0, "the revoked task never ran");
    let f = failure(queued.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    env.eventually("the queue to drain", || async {
        env.queue_depth(&env.settings.queue).await.0 == 0
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_started_after_the_revocation_honours_it() {
    let env = one_at_a_time("cancellater").await;
    let client = env.client().await;
    let counter = Counter::new(&env, "later");
    let queued = client
        .submit(count_run, (counter.url.clone(), counter.key.clone()))
        .await
        .unwrap();
    let kept = client
        .submit(count_run, (counter.url.clone(), counter.key.clone()))
        .await
        .unwrap();
    assert_eq!(force_cancel(&client, &queued).await, 1);

    let worker = env.run_worker(registry());
    // One slot, in queue order: once the task after it ran, the revoked one was dropped.
    assert_eq!(kept.result_within(PATIENCE).await.unwrap(), 1);
    assert_eq!(counter.runs().await, 1, "only the task not revoked ran");
    let f = failure(queued.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    env.eventually("the queue to drain", || async {
        env.queue_depth(&env.settings.queue).await.0 == 0
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_plain_function_ignoring_its_cancellation_is_abandoned_after_the_grace() {
    let mut env = one_at_a_time("cancelblocking").await;
    env.settings.cancel_grace = Duration::from_millis(300);
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let held = client.submit(hold, (5,)).await.unwrap();
    env.eventually("the plain function to run", || async {
        HOLDING.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(force_cancel(&client, &held).await, 1);

    // The only slot runs the next task while the abandoned body still holds its thread.
    let next = client.submit(inc, (2,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 3);
    assert!(HOLDING.load(Ordering::SeqCst), "the body still runs");
    let f = failure(held.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);

    RELEASE.store(true, Ordering::SeqCst);
    env.eventually("the body to return", || async {
        !HOLDING.load(Ordering::SeqCst)
    })
    .await;
    // Its late result was dropped: the outcome is still the cancellation.
    let again = failure(held.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(again.kind, FailureKind::Cancelled);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_revocation_whose_announcement_was_missed_is_found_by_the_rescan() {
    let mut env = one_at_a_time("cancelrescan").await;
    // Rescans every 6 pings: every 600 ms.
    env.settings.redis_ping_interval = Duration::from_millis(100);
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let running = client.submit(sleeper, (60_000,)).await.unwrap();
    env.eventually("the sleeper to run", || async {
        SLEEPING.load(Ordering::SeqCst)
    })
    .await;
    // Cancelled without force, then revoked behind the workers' backs: in the set, unannounced.
    assert_eq!(
        client.cancel(std::slice::from_ref(&running)).await.unwrap(),
        1
    );
    let store = rask_common::Store::connect(&env.settings).await.unwrap();
    let expires = rask_common::revocations::unix_ms(std::time::SystemTime::now()) + 60_000;
    let () = redis::cmd("ZADD")
        .arg(store.keys().revoked())
        .arg(expires)
        .arg(running.key().as_str())
        .query_async(&mut store.connection())
        .await
        .unwrap();

    env.eventually("the sleeper's body to be dropped", || async {
        SLEEPER_DROPPED.load(Ordering::SeqCst)
    })
    .await;
    let next = client.submit(inc, (9,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 10);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_force_cancel_of_thousands_of_queued_tasks_runs_none_of_them() {
    let env = TestEnv::new("cancelmany").await;
    let client = env.client().await;
    let counter = Counter::new(&env, "many");
    let futures = client
        .map(
            count_run,
            (0..2_500).map(|_| (counter.url.clone(), counter.key.clone())),
        )
        .await
        .unwrap();
    // Revoked in chunks of 1,000 keys before any worker runs.
    let cancel = client.cancel(&futures);
    assert_eq!(cancel.force().await.unwrap(), 2_500);

    let worker = env.run_worker(registry());
    env.eventually("the queue to drain", || async {
        env.queue_depth(&env.settings.queue).await.0 == 0
    })
    .await;
    worker.stop().await.unwrap();
    // Stopped gracefully: a delivery not acknowledged would be back in the queue.
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
    assert_eq!(counter.runs().await, 0, "no revoked task ran");
    let f = failure(futures[1_234].result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
}
