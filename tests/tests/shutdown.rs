//! Graceful shutdown of a worker process: SIGTERM finishes what runs (within the grace period),
//! stores and acknowledges it, and exits 0; what outlives the grace period goes back to the queue.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rask::builtins::sleep_ms;
use rask_common::broker;
use rask_tests::{TestEnv, PATIENCE};

/// Waits until the broker has delivered every task of the environment's queue (none ready).
async fn until_all_delivered(env: &TestEnv) {
    let connection = broker::connect(&env.settings, "test observer")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    tokio::time::timeout(PATIENCE, async {
        loop {
            let queue = channel
                .queue_declare(
                    env.settings.queue.as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await
                .unwrap();
            if queue.message_count() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the worker takes the tasks");
}

#[tokio::test]
async fn sigterm_finishes_the_tasks_in_flight_and_exits_zero() {
    let env = TestEnv::new("sigterm").await;
    let mut workers = env.spawn_workers(1);
    workers[0].wait_ready(PATIENCE).await.unwrap();
    let client = env.client().await;
    let futures = client.map(sleep_ms, [(300,), (300,)]).await.unwrap();
    until_all_delivered(&env).await;

    workers[0].signal_term().unwrap();
    let status = workers[0]
        .wait(PATIENCE)
        .await
        .unwrap()
        .expect("the worker exits");
    assert_eq!(status.code(), Some(0));
    // No other worker runs: the stopped one stored both results before it exited.
    let values = client
        .gather(&futures)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(values, vec![300, 300]);
}

#[tokio::test]
async fn tasks_outliving_the_grace_period_go_back_to_the_queue() {
    let env = TestEnv::new("grace").await;
    let mut first = env.spawn_workers_with(1, &[("RASK_SHUTDOWN_GRACE", "100ms")]);
    first[0].wait_ready(PATIENCE).await.unwrap();
    let client = env.client().await;
    let futures = client.map(sleep_ms, [(1500,), (1500,)]).await.unwrap();
    until_all_delivered(&env).await;

    first[0].signal_term().unwrap();
    let status = first[0]
        .wait(PATIENCE)
        .await
        .unwrap()
        .expect("the worker exits");
    assert_eq!(status.code(), Some(0));
    assert!(!futures[0].done().await.unwrap() && !futures[1].done().await.unwrap());

    // Nothing was lost: another worker runs them.
    let _second = env.spawn_workers(1);
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, vec![1500, 1500]);
}
