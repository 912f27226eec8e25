//! Hedged execution against real servers (`TaskOptions::hedge`, `rask submit --hedge`): a task
//! whose first run stalls finishes through its hedge copy while the stalled run is stopped; the
//! outcome is written once; without hedging the same task waits for its slow run; a copy still
//! queued when the other copy's outcome is stored never runs; copies are signed when
//! `signing_keys` are set; `hedge_p95` copies the one task of a map far slower than the rest.
//!
//! The stall is decided by a Redis counter (only a task's first run stalls) and lasts until the
//! test opens the task's gate, so no test waits on a clock: each waits for results, counters or
//! the copy count.

use std::time::Duration;

use rask::builtins::inc;
use rask::{Client, TaskOptions};
use rask_tests::{read_counter, TestEnv, PATIENCE};
use rask_worker::Registry;

/// Counts into a Redis counter when dropped while armed: the stalled run's body was dropped
/// (its run stopped) rather than returning.
struct StopMark {
    url: String,
    key: String,
    armed: bool,
}

impl Drop for StopMark {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = redis::Client::open(self.url.as_str()).expect("a Redis URL");
        let mut conn = client.get_connection().expect("Redis answers");
        redis::cmd("INCR")
            .arg(&self.key)
            .exec(&mut conn)
            .expect("INCR succeeds");
    }
}

/// Counts a run of task `i` in `{prefix}:runs:{i}`; when `stall` and it is the first run, stalls
/// until the key `{prefix}:gate:{i}` exists (counting `{prefix}:stopped:{i}` if it is stopped
/// meanwhile); returns `(i, run)`, so the outcome says which run stored it.
async fn run_once_slowly(redis_url: String, prefix: String, i: u64, stall: bool) -> (u64, i64) {
    let client = redis::Client::open(redis_url.as_str()).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let run: i64 = redis::cmd("INCR")
        .arg(format!("{prefix}:runs:{i}"))
        .query_async(&mut conn)
        .await
        .expect("INCR succeeds");
    if stall && run == 1 {
        let mut mark = StopMark {
            url: redis_url.clone(),
            key: format!("{prefix}:stopped:{i}"),
            armed: true,
        };
        loop {
            let open: bool = redis::cmd("EXISTS")
                .arg(format!("{prefix}:gate:{i}"))
                .query_async(&mut conn)
                .await
                .expect("Redis answers");
            if open {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        mark.armed = false;
    }
    (i, run)
}

rask::task! {
    /// [`run_once_slowly`]: its first run stalls until its gate opens.
    async fn stall_first(redis_url: String, prefix: String, i: u64) -> (u64, i64) {
        run_once_slowly(redis_url, prefix, i, true).await
    }
}

rask::task! {
    /// [`run_once_slowly`]: the first run of task `stalled` stalls until its gate opens, the
    /// others are quick.
    async fn stall_one(redis_url: String, prefix: String, i: u64, stalled: u64) -> (u64, i64) {
        run_once_slowly(redis_url, prefix, i, i == stalled).await
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<stall_first>()
        .with::<stall_one>()
}

/// The test's Redis keys for task `i`.
struct Keys {
    url: String,
    prefix: String,
}

impl Keys {
    fn of(env: &TestEnv) -> Self {
        Keys {
            url: env.settings.redis_url.clone(),
            prefix: env.settings.key_prefix.clone(),
        }
    }

    fn args(&self, i: u64) -> (String, String, u64) {
        (self.url.clone(), self.prefix.clone(), i)
    }

    async fn runs(&self, i: u64) -> i64 {
        read_counter(&self.url, &format!("{}:runs:{i}", self.prefix)).await
    }

    async fn stopped(&self, i: u64) -> i64 {
        read_counter(&self.url, &format!("{}:stopped:{i}", self.prefix)).await
    }

    async fn open_gate(&self, i: u64) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SET")
            .arg(format!("{}:gate:{i}", self.prefix))
            .arg(1)
            .exec_async(&mut conn)
            .await
            .unwrap();
    }

    async fn has_outcome(&self, key: &rask::TaskKey) -> bool {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("EXISTS")
            .arg(rask_common::Keys::new(&self.prefix).result(key))
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

fn hedged(after_ms: u64) -> TaskOptions {
    TaskOptions::new().hedge(Duration::from_millis(after_ms))
}

async fn copies(client: &Client) -> u64 {
    client.hedge_copies("stall_first").await.unwrap()
}

#[tokio::test]
async fn a_stalled_run_is_overtaken_by_its_hedge_copy_and_stopped() {
    let env = TestEnv::new("hedgewins").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let keys = Keys::of(&env);

    let future = client
        .submit_with(stall_first, keys.args(1), &hedged(200))
        .await
        .unwrap();
    // The gate stays closed: only the copy can finish the task.
    assert_eq!(
        future.result_within(PATIENCE).await.unwrap(),
        (1, 2),
        "the outcome is the hedge copy's"
    );
    env.eventually("the stalled run to be stopped", || async {
        keys.stopped(1).await == 1
    })
    .await;
    assert_eq!(keys.runs(1).await, 2, "the stalled run and its copy");
    assert_eq!(copies(&client).await, 1, "one copy, counted");
    // Stopping the worker waits for every outcome it is writing, the stopped run's included.
    worker.stop().await.unwrap();
    let again = client.future::<(u64, i64)>(future.key().clone());
    assert_eq!(
        again.result_within(PATIENCE).await.unwrap(),
        (1, 2),
        "written once: the stopped run's outcome did not replace it"
    );
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
}

#[tokio::test]
async fn without_hedging_the_task_waits_for_its_slow_run() {
    let mut env = TestEnv::new("hedgewait").await;
    // A slot for each stalled run and one for the copy.
    env.settings.concurrency = 3;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let keys = Keys::of(&env);

    let plain = client.submit(stall_first, keys.args(1)).await.unwrap();
    let hedged = client
        .submit_with(stall_first, keys.args(2), &hedged(200))
        .await
        .unwrap();
    assert_eq!(hedged.result_within(PATIENCE).await.unwrap(), (2, 2));
    // By then the same stall, unhedged, is still stalled: no outcome, no copy.
    assert!(!keys.has_outcome(plain.key()).await, "the plain task waits");
    assert_eq!(keys.runs(1).await, 1);
    assert_eq!(copies(&client).await, 1, "only the hedged task got a copy");
    keys.open_gate(1).await;
    assert_eq!(plain.result_within(PATIENCE).await.unwrap(), (1, 1));
    assert_eq!(keys.runs(1).await, 1, "it ran once, slowly");
    assert_eq!(keys.stopped(1).await, 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_copy_still_queued_when_the_outcome_is_stored_never_runs() {
    let mut env = TestEnv::new("hedgequeued").await;
    // One slot, one delivery held: the copy waits in the queue behind the stalled run.
    env.settings.concurrency = 1;
    env.settings.prefetch = 1;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let keys = Keys::of(&env);

    let future = client
        .submit_with(stall_first, keys.args(1), &hedged(100))
        .await
        .unwrap();
    env.eventually("the copy to be published", || async {
        copies(&client).await == 1
    })
    .await;
    keys.open_gate(1).await;
    assert_eq!(
        future.result_within(PATIENCE).await.unwrap(),
        (1, 1),
        "the first run finished first"
    );
    // The copy is delivered next (it has the highest priority), then this marker.
    let marker = client.submit(inc, (41,)).await.unwrap();
    assert_eq!(marker.result_within(PATIENCE).await.unwrap(), 42);
    assert_eq!(keys.runs(1).await, 1, "the queued copy never ran");
    assert_eq!(keys.stopped(1).await, 0, "the first run was not stopped");
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn submit_hedge_on_the_command_line() {
    let env = TestEnv::new("hedgecli").await;
    let worker = env.run_worker(registry());
    let keys = Keys::of(&env);
    let out = env
        .rask(
            &[
                "submit",
                "--hedge",
                "200ms",
                "stall_first",
                &serde_json::to_string(&keys.url).unwrap(),
                &serde_json::to_string(&keys.prefix).unwrap(),
                "3",
            ],
            "",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the result as JSON");
    assert_eq!(printed, serde_json::json!([3, 2]), "the copy's outcome");
    env.eventually("the stalled run to be stopped", || async {
        keys.stopped(3).await == 1
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn hedge_copies_are_signed_like_any_task() {
    let mut env = TestEnv::new("hedgesigned").await;
    env.settings.signing_keys =
        vec!["0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".into()];
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let keys = Keys::of(&env);
    let future = client
        .submit_with(stall_first, keys.args(1), &hedged(200))
        .await
        .unwrap();
    // A copy that did not verify would be dead-lettered and the stall would never end.
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), (1, 2));
    env.eventually("the stalled run to be stopped", || async {
        keys.stopped(1).await == 1
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn hedge_p95_copies_the_task_far_slower_than_the_rest_of_its_map() {
    let env = TestEnv::new("hedgep95").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let keys = Keys::of(&env);
    // The last of 30 stalls: it is late once 20 others give the 95th percentile.
    let n = 30;
    let stalled = n - 1;
    let args = (0..n).map(|i| (keys.url.clone(), keys.prefix.clone(), i, stalled));
    let futures = client
        .map_with(stall_one, args, &TaskOptions::new().hedge_p95(2.0))
        .await
        .unwrap();
    let values = client
        .gather(&futures)
        .timeout(PATIENCE)
        .await
        .expect("every task finishes, the stalled one through its copy");
    for (i, (value, _run)) in values.iter().enumerate() {
        assert_eq!(*value, i as u64);
    }
    assert_eq!(values[stalled as usize], (stalled, 2), "the copy's outcome");
    env.eventually("the stalled run to be stopped", || async {
        keys.stopped(stalled).await == 1
    })
    .await;
    // Quick tasks may get copies too on a loaded machine; the stalled one surely did.
    assert!(client.hedge_copies("stall_one").await.unwrap() >= 1);
    worker.stop().await.unwrap();
}
