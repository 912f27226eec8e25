//! Poison messages: a task that kills every worker process that runs it is run `max_deliveries`
//! times, then dead-lettered with the reason and failed on its future with `DeliveryLimit`,
//! while the tasks behind it run; with `max_deliveries = 0` there is no limit. And a redelivered
//! task that already has an outcome (its worker stored it, then vanished before acknowledging)
//! is not run again.

use std::path::Path;

use lapin::options::BasicGetOptions;
use rask::builtins::inc;
use rask_common::message::encode_value;
use rask_common::{broker, Keys, Outcome, Store};
use rask_tests::tasks::{abort_worker, abort_worker_until};
use rask_tests::{read_counter, Counter, TestEnv, PATIENCE};

/// Reads the Redis counter `key` of `env` (0 if unset).
async fn counter(env: &TestEnv, key: &str) -> i64 {
    read_counter(&env.settings.redis_url, key).await
}

#[tokio::test]
async fn a_task_that_kills_its_workers_is_dead_lettered_after_max_deliveries() {
    let env = TestEnv::new("poison").await;
    let program = Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    rask_tests::poison::dead_lettered_after_three_deliveries(&env, program).await;
}

#[tokio::test]
async fn a_redelivered_task_that_already_has_an_outcome_is_not_run_again() {
    let env = TestEnv::new("redelivered").await;
    let client = env.client().await;
    let runs = format!("{}:test-counter:poison", env.settings.key_prefix);
    let task = client
        .submit(abort_worker, (env.settings.redis_url.clone(), runs.clone()))
        .await
        .unwrap();
    // A worker that took the task, stored its outcome and vanished before acknowledging it.
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
        .expect("the task is queued");
    assert!(!taken.delivery.redelivered);
    let stored = Outcome::Value(encode_value(&7i64).unwrap())
        .encode()
        .unwrap();
    let store = Store::connect(&env.settings).await.unwrap();
    store
        .store_and_release(&[(task.key().clone(), stored)])
        .await
        .unwrap();
    connection.close(200, "vanishing".into()).await.unwrap();

    // One task at a time, in order: once the next task is done, the redelivered one is settled.
    let settings = [("RASK_CONCURRENCY", "1"), ("RASK_PREFETCH", "1")];
    let program = Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    let mut worker = env.spawn_program_with(program, 1, &settings).remove(0);
    let next = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(next.result_within(PATIENCE).await.unwrap(), 2);
    assert_eq!(counter(&env, &runs).await, 0, "the task did not run again");
    assert!(worker.is_running().unwrap());
    assert_eq!(task.result_within(PATIENCE).await.unwrap(), 7);
    let deliveries = Keys::new(env.settings.key_prefix.as_str()).deliveries(task.key());
    assert_eq!(
        counter(&env, &deliveries).await,
        1,
        "one redelivery counted"
    );
    let queue = env.settings.queue.clone();
    assert_eq!(env.queue_depth(&queue).await.0, 0, "nothing left to run");
}

#[tokio::test]
async fn with_max_deliveries_0_a_task_runs_however_often_its_workers_die() {
    let env = TestEnv::new("no-limit").await;
    // One task at a time and no other held, so that the task dies alone each time.
    let settings = [
        ("RASK_MAX_DELIVERIES", "0"),
        ("RASK_CONCURRENCY", "1"),
        ("RASK_PREFETCH", "1"),
    ];
    let client = env.client().await;
    let runs = Counter::new(&env, "no-limit");
    // More deaths than the default limit (5) allows.
    let aborts = 6;
    let task = client
        .submit(
            abort_worker_until,
            (runs.url.clone(), runs.key.clone(), aborts),
        )
        .await
        .unwrap();
    let program = Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    for death in 1..=aborts {
        let mut worker = env.spawn_program_with(program, 1, &settings).remove(0);
        let status = worker.wait(PATIENCE).await.unwrap();
        assert!(status.is_some(), "worker {death} dies running the task");
        assert_eq!(runs.runs().await, death);
    }
    let mut survivor = env.spawn_program_with(program, 1, &settings).remove(0);
    assert_eq!(task.result_within(PATIENCE).await.unwrap(), aborts + 1);
    assert!(survivor.is_running().unwrap());
    // Redeliveries are still counted (and checked for an outcome), just never refused.
    let deliveries = Keys::new(env.settings.key_prefix.as_str()).deliveries(task.key());
    assert_eq!(counter(&env, &deliveries).await, aborts);
}
