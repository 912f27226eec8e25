//! Options on graph nodes against real servers (`Delayed::with_options`, `Bag::with_options`):
//! a per-node retry policy is honoured while a sibling without one fails, a per-node time limit
//! times out that node only, the options are in the record a worker releases, a countdown on a
//! node is refused, and options leave content keys alone.

use std::time::Duration;

use rask::builtins::{add, inc, sum_ints};
use rask::{Arg, Bag, Error, FailureKind, RetryPolicy, TaskError, TaskKey, TaskOptions};
use rask_common::{Store, TaskMessage};
use rask_tests::{failure, Counter, TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// Counts its run in the Redis counter `counter`; the first `failures` runs fail retryably,
    /// later ones return `x`.
    async fn flaky(redis_url: String, counter: String, failures: i64, x: i64)
        -> Result<i64, TaskError>
    {
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
        if run <= failures {
            return Err(TaskError::retryable(format!("run {run} failed")));
        }
        Ok(x)
    }
}

rask::task! {
    /// Sleeps `ms` milliseconds without holding a thread, then returns them.
    async fn nap(ms: i64) -> i64 {
        tokio::time::sleep(Duration::from_millis(ms.unsigned_abs())).await;
        ms
    }
}

fn registry() -> Registry {
    Registry::with_builtins().with::<flaky>().with::<nap>()
}

/// Up to `attempts` attempts, 20 ms apart (fast tests).
fn retries(attempts: u32) -> TaskOptions {
    TaskOptions::new().retry(
        RetryPolicy::new(attempts).backoff(Duration::from_millis(20), Duration::from_millis(20)),
    )
}

#[tokio::test]
async fn a_per_node_retry_policy_is_honoured() {
    let env = TestEnv::new("noderetry").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let (kept, bare) = (Counter::new(&env, "kept"), Counter::new(&env, "bare"));
    // The node with a policy fails retryably twice, then gives 10.
    let retried = flaky
        .delayed(kept.url.clone(), kept.key.clone(), 2, 10)
        .with_options(retries(3));
    let root = add.delayed(&retried, inc.delayed(1));
    assert_eq!(client.compute(&root).await.unwrap(), 12);
    assert_eq!(kept.runs().await, 3, "two failures, then the success");

    // The same graph whose flaky node has no policy fails on the first run.
    let once = flaky.delayed(bare.url.clone(), bare.key.clone(), 2, 20);
    let root = add.delayed(&once, inc.delayed(1));
    let f = failure(client.compute(&root).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert!(f.message.contains(once.key().as_str()), "{}", f.message);
    assert_eq!(bare.runs().await, 1, "not retried");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_per_node_time_limit_times_out_that_node_only() {
    let env = TestEnv::new("nodelimit").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    // A minute-long leaf limited to 200 ms, beside leaves of 10-30 ms without a limit.
    let limited = nap
        .delayed(60_000)
        .with_options(TaskOptions::new().time_limit(Duration::from_millis(200)));
    let siblings: Vec<_> = (1..=3).map(|i| nap.delayed(i * 10)).collect();
    let mut leaves = siblings.clone();
    leaves.push(limited.clone());
    let f = failure(client.compute(&sum_ints.delayed(leaves)).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert!(f.message.contains(limited.key().as_str()), "{}", f.message);

    let f = failure(
        client
            .future::<i64>(limited.key().clone())
            .result_within(PATIENCE)
            .await
            .unwrap_err(),
    );
    assert_eq!(f.kind, FailureKind::TimedOut);
    assert!(f.message.contains("200ms"), "{}", f.message);
    for (i, sibling) in (1..=3).zip(&siblings) {
        let value = client
            .future::<i64>(sibling.key().clone())
            .result_within(PATIENCE)
            .await
            .unwrap();
        assert_eq!(value, i * 10);
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn options_are_in_the_record_a_worker_releases() {
    let env = TestEnv::new("noderecord").await;
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    // Waits for a key nobody computes: its record stays in Redis, as workers will publish it.
    let input = Arg::key(TaskKey::unique("never"));
    let options = TaskOptions::new()
        .priority(4)
        .time_limit(Duration::from_millis(1500))
        .retry(RetryPolicy::new(3));
    let node = inc.delayed(input).with_options(options);
    client.persist(&node).await.unwrap();
    let mut conn = store.connection();
    let record: Vec<u8> = redis::cmd("GET")
        .arg(store.keys().task(node.key()))
        .query_async(&mut conn)
        .await
        .unwrap();
    let message = TaskMessage::decode(&record).unwrap();
    // Clamped to the queue's `max_priority` (0 on quorum queues).
    assert_eq!(message.priority, 4.min(env.settings.max_priority));
    assert_eq!(message.time_limit_ms, Some(1500));
    assert_eq!(message.retry, Some(RetryPolicy::new(3)));
}

#[tokio::test]
async fn a_countdown_on_a_graph_node_is_refused() {
    let env = TestEnv::new("nodecountdown").await;
    let client = env.client().await;
    let node = inc
        .delayed(1)
        .with_options(TaskOptions::new().countdown(Duration::from_secs(5)));
    let root = add.delayed(&node, 1);
    match client.persist(&root).await {
        Err(Error::DelayedNode { key, function }) => {
            assert_eq!((&key, function.as_str()), (node.key(), "inc"));
        }
        other => panic!("expected DelayedNode, got {other:?}"),
    }
}

#[test]
fn options_do_not_change_content_keys() {
    let options = TaskOptions::new()
        .priority(9)
        .retry(RetryPolicy::new(5))
        .time_limit(Duration::from_secs(1));
    let plain = add.delayed(inc.delayed(1), 2);
    let with = add
        .delayed(inc.delayed(1).with_options(options.clone()), 2)
        .with_options(options.clone());
    assert_eq!(plain.key(), with.key());
    let bag = Bag::from_iter(0..10_i64, 3).map(inc);
    let keyed = bag.clone().with_options(options);
    assert_eq!(bag.keys(), keyed.keys());
}
