//! Retries against real servers: a retryable failure is retried by the task's policy through a
//! delay queue in the broker (never by a worker holding the message), the final failure says how
//! many attempts were made, other errors are not retried, and graph tasks are retried too, their
//! dependents released only by the final outcome.

use std::time::{Duration, Instant};

use rask::builtins::add;
use rask::{Arg, FailureKind, RetryPolicy, TaskError, TaskOptions};
use rask_common::dependencies::Registration;
use rask_common::Store;
use rask_tests::{failure, Counter, TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// Counts its run in the Redis counter `counter`; the first `failures` runs fail (retryably
    /// when `retryable`), later ones return `x + 1`.
    async fn flaky(
        redis_url: String,
        counter: String,
        failures: i64,
        retryable: bool,
        x: i64
    ) -> Result<i64, TaskError> {
        let client = redis::Client::open(redis_url).map_err(|e| TaskError::new(e.to_string()))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| TaskError::new(e.to_string()))?;
        let run: i64 = redis::cmd("INCR")
            .arg(counter)
            .query_async(&mut conn)
            .await
            .map_err(|e| TaskError::new(e.to_string()))?;
        match run {
            n if n <= failures && retryable => Err(TaskError::retryable(format!("run {n} failed"))),
            n if n <= failures => Err(TaskError::new(format!("run {n} failed for good"))),
            _ => Ok(x + 1),
        }
    }
}

fn registry() -> Registry {
    Registry::with_builtins().with::<flaky>()
}

/// The arguments of a [`flaky`] call counted by `runs`.
fn args(
    runs: &Counter,
    failures: i64,
    retryable: bool,
    x: i64,
) -> (String, String, i64, bool, i64) {
    (runs.url.clone(), runs.key.clone(), failures, retryable, x)
}

/// Up to `attempts` attempts, 20 ms apart and then some (fast tests).
fn quick(attempts: u32) -> TaskOptions {
    let policy =
        RetryPolicy::new(attempts).backoff(Duration::from_millis(20), Duration::from_millis(100));
    TaskOptions::new().retry(policy)
}

#[tokio::test]
async fn a_task_failing_twice_succeeds_on_the_third_attempt() {
    let env = TestEnv::new("retry3").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "flaky");
    let future = client
        .submit_with(flaky, args(&runs, 2, true, 41), &quick(5))
        .await
        .unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 42);
    assert_eq!(runs.runs().await, 3);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_final_failure_says_how_many_attempts_were_made() {
    let env = TestEnv::new("retryfinal").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "flaky");
    let future = client
        .submit_with(flaky, args(&runs, 100, true, 0), &quick(3))
        .await
        .unwrap();
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!((f.kind, f.attempts), (FailureKind::Failed, 3));
    assert_eq!(f.message, "run 3 failed");
    assert!(f.to_string().contains("after 3 attempts"), "{f}");
    assert_eq!(runs.runs().await, 3);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_error_not_marked_retryable_is_not_retried() {
    let env = TestEnv::new("noretry").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "flaky");
    let future = client
        .submit_with(flaky, args(&runs, 100, false, 0), &quick(5))
        .await
        .unwrap();
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!((f.kind, f.attempts), (FailureKind::Failed, 1));
    assert!(!f.to_string().contains("attempts"), "{f}");
    assert_eq!(runs.runs().await, 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_retry_waits_in_the_broker_not_in_a_worker() {
    let env = TestEnv::new("retrywait").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "flaky");
    // The retry waits between 1 s and 2 s (jitter).
    let backoff = Duration::from_secs(2);
    let options = TaskOptions::new().retry(RetryPolicy::new(2).backoff(backoff, backoff));
    let future = client
        .submit_with(flaky, args(&runs, 1, true, 1), &options)
        .await
        .unwrap();
    env.eventually("the first attempt", || async { runs.runs().await == 1 })
        .await;
    let first_run = Instant::now();
    // A stopped worker has settled everything it held: had it kept the task to sleep on it, the
    // task would be back in the queue now.
    worker.stop().await.unwrap();
    let queue = env.settings.queue.clone();
    assert_eq!(
        env.queue_depth(&queue).await,
        (0, 0),
        "nothing in the task queue"
    );
    assert!(!future.done().await.unwrap());

    // With no worker at all, the broker puts the task back in the queue after the delay.
    env.eventually("the retry back in the task queue", || async {
        env.queue_depth(&queue).await.0 == 1
    })
    .await;
    let waited = first_run.elapsed();
    assert!(waited >= backoff / 2, "back after {waited:?}");
    assert_eq!(runs.runs().await, 1, "no attempt while it waited");

    let worker = env.run_worker(registry());
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 2);
    assert_eq!(runs.runs().await, 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn graph_tasks_are_retried_and_release_dependents_only_when_final() {
    let env = TestEnv::new("retrygraph").await;
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    let (root_runs, middle_runs) = (Counter::new(&env, "root"), Counter::new(&env, "middle"));
    // Nothing runs until the whole graph is in place: the worker starts last.
    let root = client
        .submit_with(flaky, args(&root_runs, 2, true, 10), &quick(5))
        .await
        .unwrap();
    // A graph task taking root's result, with a retry policy of its own.
    let (url, counter, failures, retryable, _) = args(&middle_runs, 1, true, 0);
    let middle = flaky.delayed(
        url,
        counter,
        failures,
        retryable,
        Arg::key(root.key().clone()),
    );
    let mut message = middle.node().message().unwrap();
    message.retry =
        Some(RetryPolicy::new(3).backoff(Duration::from_millis(20), Duration::from_millis(20)));
    let registered = store
        .register_tasks(std::slice::from_ref(&message))
        .await
        .unwrap();
    assert_eq!(registered, vec![Registration::Waiting]);
    let bottom = client
        .persist(&add.delayed(Arg::key(middle.key().clone()), 100))
        .await
        .unwrap();

    let worker = env.run_worker(registry());
    // Any intermediate failure stored would have failed `bottom` with DependencyFailed.
    assert_eq!(bottom.result_within(PATIENCE).await.unwrap(), 112);
    assert_eq!((root_runs.runs().await, middle_runs.runs().await), (3, 2));
    worker.stop().await.unwrap();
}
