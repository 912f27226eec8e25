//! Worker state, task context and tasks that launch tasks, against real servers: the state is
//! built once per worker process and shared by its tasks; a task sees its own key, attempt and
//! worker; a tree of tasks that wait for their children completes on one worker with
//! concurrency 1 (the waiting parents give their slot back and do not count against the
//! prefetch window); a state that cannot be built stops the worker with exit code 78.

use std::collections::BTreeSet;
use std::time::Duration;

use rask::builtins::fail;
use rask::{RetryPolicy, TaskOptions};
use rask_tests::tasks::{
    registry, tree, tree_blocking, tree_sum, use_probe, whoami, COUNT_STATE_VAR,
    FAIL_STATE_MESSAGE, FAIL_STATE_VAR, STATE_INITS,
};
use rask_tests::{failure, read_counter, TestEnv, PATIENCE};
use rask_worker::Worker;

/// Starts `n` `rask-test-worker` processes of `env` with the extra variables `extra`, and waits
/// until each consumes.
async fn test_workers(env: &TestEnv, n: usize, extra: &[(&str, &str)]) -> Vec<rask::local::Worker> {
    let program = rask::local::sibling_binary("rask-test-worker")
        .expect("rask-test-worker is built (cargo builds it for the tests of rask-tests)");
    let mut workers = env.spawn_program_with(&program, n, extra);
    for worker in &mut workers {
        worker.wait_ready(PATIENCE).await.expect("worker ready");
    }
    workers
}

#[tokio::test]
async fn the_state_is_built_once_per_worker_process_and_shared_by_its_tasks() {
    let env = TestEnv::new("state-once").await;
    let _workers = test_workers(&env, 2, &[(COUNT_STATE_VAR, "1")]).await;
    let client = env.client().await;
    let futures = client
        .map(use_probe, (0..1000u64).map(|i| (i,)))
        .await
        .unwrap();
    let results = client.gather(&futures).await.unwrap();
    let inits = format!("{}:{STATE_INITS}", env.settings.key_prefix);
    assert_eq!(
        read_counter(&env.settings.redis_url, &inits).await,
        2,
        "one build per worker process"
    );
    // Each task used one of the two builds, and each build's uses were counted once per task:
    // the uses seen before a task are distinct per build, and together they number 1,000.
    let mut seen: [BTreeSet<u64>; 2] = Default::default();
    for (i, (index, build, before)) in results.into_iter().enumerate() {
        assert_eq!(index, i as u64, "task {i} returned its own index");
        assert!((1..=2).contains(&build), "task {i} used build {build}");
        assert!(
            seen[(build - 1) as usize].insert(before),
            "use {before} of build {build} seen twice"
        );
    }
    assert_eq!(seen[0].len() + seen[1].len(), 1000);
    for uses in &seen {
        // Uses 0..n: one value shared by all the tasks of its worker.
        assert_eq!(
            uses.iter().copied().collect::<Vec<_>>(),
            (0..uses.len() as u64).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_task_sees_its_key_attempt_and_worker() {
    let env = TestEnv::new("whoami").await;
    let worker = Worker::new(env.settings.clone(), registry());
    let id = worker.id().to_owned();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    let client = env.client().await;

    let first = client.submit(whoami, (7, 0)).await.unwrap();
    let (key, attempt, worker, x) = first.result_within(PATIENCE).await.unwrap();
    assert_eq!(
        (key.as_str(), attempt, worker.as_str(), x),
        (first.key().as_str(), 0, id.as_str(), 7)
    );

    // With a retry policy, the attempt rises with each retry; the key stays.
    let retries = TaskOptions::new()
        .retry(RetryPolicy::new(4).backoff(Duration::from_millis(10), Duration::from_millis(50)));
    let third = client.submit_with(whoami, (8, 2), &retries).await.unwrap();
    let (key, attempt, worker, x) = third.result_within(PATIENCE).await.unwrap();
    assert_eq!(
        (key.as_str(), attempt, worker.as_str(), x),
        (third.key().as_str(), 2, id.as_str(), 8)
    );

    // The same id as in the failures the worker stores.
    let failed = client.submit(fail, ("no".into(),)).await.unwrap();
    let failed = failure(failed.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(failed.worker, id);

    stop.cancel();
    running.await.unwrap().unwrap();
}

/// Runs a [`tree`] (or [`tree_blocking`] when `blocking`) of depth 8 on one worker process
/// with concurrency 1 and prefetch `prefetch` (0: the default, 16 here) and checks its sum.
async fn tree_on_one_slot(name: &str, blocking: bool, prefetch: &str) {
    let mut env = TestEnv::new(name).await;
    env.settings.concurrency = 1;
    let _worker = test_workers(&env, 1, &[("RASK_PREFETCH", prefetch)]).await;
    let client = env.client().await;
    let depth = 8;
    let sum = if blocking {
        let root = client.submit(tree_blocking, (depth, 1)).await.unwrap();
        root.result_within(PATIENCE).await.unwrap()
    } else {
        let root = client.submit(tree, (depth, 1)).await.unwrap();
        root.result_within(PATIENCE).await.unwrap()
    };
    // 511 tasks, up to 255 of them waiting at once on a worker that runs one at a time and
    // holds 16 deliveries.
    assert_eq!(sum, tree_sum(depth));
}

#[tokio::test]
async fn a_tree_of_nested_tasks_completes_on_one_slot() {
    tree_on_one_slot("tree", false, "0").await;
}

#[tokio::test]
async fn a_tree_of_plain_nested_tasks_completes_on_one_slot_with_a_prefetch_of_one() {
    tree_on_one_slot("tree-blocking", true, "1").await;
}

#[tokio::test]
async fn a_state_that_cannot_be_built_stops_the_worker_with_exit_78() {
    let env = TestEnv::new("state-fails").await;
    let program =
        rask::local::sibling_binary("rask-test-worker").expect("rask-test-worker is built");
    let mut worker = env
        .spawn_program_with(&program, 1, &[(FAIL_STATE_VAR, "1")])
        .remove(0);
    let status = worker
        .wait(PATIENCE)
        .await
        .unwrap()
        .expect("the worker stops instead of serving without its state");
    let log = std::fs::read_to_string(worker.log_path()).unwrap();
    assert_eq!(status.code(), Some(78), "exit code EX_CONFIG; log:\n{log}");
    let named =
        format!("building worker state rask_tests::tasks::Probe failed: {FAIL_STATE_MESSAGE}");
    assert!(log.contains(&named), "{log}");
    assert!(!worker.is_ready(), "it never consumed: {log}");
}
