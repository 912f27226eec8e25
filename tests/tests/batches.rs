//! Batched small tasks: a `map` packs calls into batch messages, each call keeping its own key,
//! outcome, failure and retries; a worker killed mid-batch loses nothing, and the redelivered
//! batch reruns only the calls without an outcome; `--batch 1` publishes one message per task.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use rask::builtins::inc;
use rask::{FailureKind, RetryPolicy, TaskOptions};
use rask_common::message::encode_value;
use rask_common::{broker, Outcome, Store, TaskMessage};
use rask_tests::tasks::counted;
use rask_tests::{failure, read_counter, TestEnv, PATIENCE};

fn program() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rask-test-worker"))
}

/// No call of [`counted`] aborts its worker.
const NO_ABORT: u64 = u64::MAX;

#[tokio::test]
async fn a_batched_map_packs_calls_into_messages_and_batch_1_publishes_one_per_task() {
    let env = TestEnv::new("batch-packing").await;
    let client = env.client().await;
    let queue = env.settings.queue.clone();
    // No worker yet: the queue holds what was published.
    let batched = client
        .map_with(inc, (0..100).map(|i| (i,)), &TaskOptions::new().batch(30))
        .await
        .unwrap();
    assert_eq!(
        env.queue_depth(&queue).await.0,
        4,
        "30 + 30 + 30 + 10 calls"
    );
    let unbatched = client
        .map_with(
            inc,
            (0..7).map(|i| (1000 + i,)),
            &TaskOptions::new().batch(1),
        )
        .await
        .unwrap();
    assert_eq!(env.queue_depth(&queue).await.0, 4 + 7);
    let cli = |batch: &'static str| {
        let env = &env;
        async move {
            let out = env
                .rask(
                    &["map", "inc", "--keys-only", "--batch", batch],
                    "[1]\n[2]\n[3]\n",
                )
                .await;
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let one_each = cli("1").await;
    assert_eq!(env.queue_depth(&queue).await.0, 4 + 7 + 3);
    let packed = cli("3").await;
    assert_eq!(env.queue_depth(&queue).await.0, 4 + 7 + 3 + 1);

    let _workers = env.spawn_program_with(program(), 1, &[]);
    let values = client.gather(&batched).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=100).collect::<Vec<i64>>());
    let values = client.gather(&unbatched).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1001..=1007).collect::<Vec<i64>>());
    // Each call has a key of its own, as an unbatched call has: `{function}-{32 hex digits}`.
    for future in batched.iter().chain(&unbatched) {
        let key = future.key().as_str();
        assert!(key.starts_with("inc-") && key.len() == 4 + 32, "{key}");
    }
    for keys in [one_each, packed] {
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 3);
        let out = env.rask(&["gather", keys[0], keys[1], keys[2]], "").await;
        assert!(out.status.success(), "{out:?}");
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.split_whitespace().collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
    }
    client.close().await.unwrap();
}

#[tokio::test]
async fn map_batches_a_function_once_workers_measured_it_quick() {
    let env = TestEnv::new("batch-pace").await;
    let client = env.client().await;
    let queue = env.settings.queue.clone();
    // Not measured yet: one message per task.
    let first = client.map(inc, (0..5).map(|i| (i,))).await.unwrap();
    assert_eq!(env.queue_depth(&queue).await.0, 5);
    let settings = [("RASK_HEARTBEAT_INTERVAL", "100ms")];
    let mut worker = env.spawn_program_with(program(), 1, &settings).remove(0);
    let values = client.gather(&first).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=5).collect::<Vec<i64>>());
    let store = Store::connect(&env.settings).await.unwrap();
    env.eventually("the worker to publish inc's run time", || async {
        rask_common::batch::read_pace(&store, "inc")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    worker.kill().await.unwrap();
    env.eventually("the worker to be gone", || async {
        env.queue_depth(&queue).await.1 == 0
    })
    .await;
    // Measured quick (microseconds; more on a loaded machine's debug build): 50 calls go in as
    // few messages as the measured run time allows (at most 25: it is under a millisecond).
    let pace = rask_common::batch::read_pace(&store, "inc").await.unwrap();
    let pace = pace.expect("inc's run time was published");
    assert!(
        pace < rask_common::batch::UNBATCHED_FROM,
        "inc took {pace:?}"
    );
    let size = rask_common::batch::size_for(Some(pace));
    let second = client.map(inc, (0..50).map(|i| (i,))).await.unwrap();
    let messages = u32::try_from(50usize.div_ceil(size)).unwrap();
    assert_eq!(
        env.queue_depth(&queue).await.0,
        messages,
        "inc took {pace:?}"
    );
    let _workers = env.spawn_program_with(program(), 1, &[]);
    let values = client.gather(&second).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=50).collect::<Vec<i64>>());
    client.close().await.unwrap();
}

#[tokio::test]
async fn one_failing_call_fails_only_itself_with_its_typed_error() {
    let env = TestEnv::new("batch-failure").await;
    let _workers = env.spawn_program_with(program(), 1, &[]);
    let client = env.client().await;
    let args = [1, 2, i64::MAX, 4, 5];
    let futures = client
        .map_with(inc, args.map(|a| (a,)), &TaskOptions::new().batch(5))
        .await
        .unwrap();
    for (future, arg) in futures.iter().zip(args) {
        let result = future.result_within(PATIENCE).await;
        if arg == i64::MAX {
            let f = failure(result.unwrap_err());
            assert_eq!(f.kind, FailureKind::Failed);
            assert_eq!(&f.key, future.key(), "the failure names its own call");
            assert_eq!(f.task, "inc");
        } else {
            assert_eq!(result.unwrap(), arg + 1);
        }
    }
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_retried_call_leaves_its_batch_alone_and_the_others_run_once() {
    let env = TestEnv::new("batch-retries").await;
    let _workers = env.spawn_program_with(program(), 1, &[]);
    let client = env.client().await;
    let prefix = format!("{}:test-runs", env.settings.key_prefix);
    let url = env.settings.redis_url.clone();
    // Call 2 fails twice then succeeds; call 4 fails more often than its policy allows.
    let fails = |i: u64| match i {
        2 => 2,
        4 => 10,
        _ => 0,
    };
    let policy = RetryPolicy::new(3).backoff(Duration::from_millis(20), Duration::from_millis(50));
    let options = TaskOptions::new().batch(6).retry(policy);
    let futures = client
        .map_with(
            counted,
            (0..6).map(|i| (url.clone(), prefix.clone(), i, fails(i), NO_ABORT)),
            &options,
        )
        .await
        .unwrap();
    for (i, future) in (0u64..).zip(&futures) {
        let result = future.result_within(PATIENCE).await;
        if i == 4 {
            let f = failure(result.unwrap_err());
            assert_eq!(f.kind, FailureKind::Failed);
            assert_eq!(f.attempts, 3);
            assert_eq!(&f.key, future.key());
        } else {
            assert_eq!(result.unwrap(), i * 10 + 7, "call {i}");
        }
    }
    for i in 0..6u64 {
        let expected = match i {
            2 => 3,
            4 => 3,
            _ => 1,
        };
        let runs = read_counter(&url, &format!("{prefix}:{i}")).await;
        assert_eq!(
            runs, expected,
            "runs of call {i}: a retry reruns no other call"
        );
    }
    client.close().await.unwrap();
}

#[tokio::test]
async fn a_redelivered_batch_reruns_only_the_calls_without_an_outcome() {
    let env = TestEnv::new("batch-killed").await;
    let client = env.client().await;
    let prefix = format!("{}:test-runs", env.settings.key_prefix);
    let url = env.settings.redis_url.clone();
    // Call 6 kills the worker running it, the first time.
    let futures = client
        .map_with(
            counted,
            (0..10).map(|i| (url.clone(), prefix.clone(), i, 0, 6)),
            &TaskOptions::new().batch(10),
        )
        .await
        .unwrap();

    // A worker took the batch, stored the outcomes of calls 0-2 and vanished before acking.
    let connection = broker::connect(&env.settings, "test vanishing worker")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let taken = channel
        .basic_get(
            env.settings.queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the batch is queued");
    let batch = TaskMessage::decode(&taken.delivery.data).unwrap();
    assert_eq!(batch.calls.len(), 10, "one message for the ten calls");
    let store = Store::connect(&env.settings).await.unwrap();
    let earlier: Vec<_> = futures[..3]
        .iter()
        .zip(500u64..)
        .map(|(f, v)| {
            let outcome = Outcome::Value(encode_value(&v).unwrap());
            (f.key().clone(), outcome.encode().unwrap())
        })
        .collect();
    store.store_and_release(&earlier).await.unwrap();
    connection.close(200, "vanishing".into()).await.unwrap();

    // The first worker dies on call 6, mid-batch, before storing anything of this delivery.
    let mut first = env.spawn_program_with(program(), 1, &[]).remove(0);
    let status = first
        .wait(PATIENCE)
        .await
        .unwrap()
        .expect("the worker dies on call 6");
    assert_eq!(status.signal(), Some(nix::libc::SIGABRT));
    // The next one runs what is left, and nothing is lost.
    let mut second = env.spawn_program_with(program(), 1, &[]).remove(0);
    for (i, future) in (0u64..).zip(&futures) {
        let expected = if i < 3 { 500 + i } else { i * 10 + 7 };
        let value = future.result_within(PATIENCE).await.unwrap();
        assert_eq!(value, expected, "call {i}");
    }
    for i in 0..10u64 {
        let expected = match i {
            0..=2 => 0, // stored before: never run again
            3..=6 => 2, // ran before the kill, and again
            _ => 1,     // never reached before the kill
        };
        let runs = read_counter(&url, &format!("{prefix}:{i}")).await;
        assert_eq!(runs, expected, "runs of call {i}");
    }
    assert!(second.is_running().unwrap());
    let queue = env.settings.queue.clone();
    env.eventually("the queue to be empty", || async {
        env.queue_depth(&queue).await.0 == 0
    })
    .await;
    client.close().await.unwrap();
}
