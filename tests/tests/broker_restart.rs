//! A worker process survives a RabbitMQ restart: it reconnects with backoff and serves again,
//! and the durable queue keeps what was published: tasks queued with no worker to take them
//! are still there after the restart, and then run.

use rask::builtins::inc;
use rask_tests::{PrivateServers, TestEnv, PATIENCE};

/// Tasks queued across the restart.
const QUEUED: usize = 100;

#[tokio::test]
async fn a_worker_reconnects_after_the_broker_restarts() {
    let mut servers = PrivateServers::start("restart").await;
    // Two deployments on the same servers: one with a worker running across the restart, one
    // whose tasks wait in its queue with no worker until after it.
    let serving = TestEnv::on(servers.urls(), "restart");
    let waiting = TestEnv::on(servers.urls(), "restartqueued");
    let mut workers = serving.spawn_workers(1);
    workers[0].wait_ready(PATIENCE).await.unwrap();
    let before = serving.client().await;
    let first = before.submit(inc, (1,)).await.unwrap();
    assert_eq!(first.result_within(PATIENCE).await.unwrap(), 2);
    drop(before);

    let producer = waiting.client().await;
    let queued = producer
        .map(inc, (0..QUEUED as i64).map(|i| (1_000 + i,)))
        .await
        .unwrap();
    let depth = || waiting.queue_depth(&waiting.settings.queue);
    assert_eq!(depth().await, (QUEUED as u32, 0), "queued, no consumer");

    servers.rabbitmq.restart().await.unwrap();

    // The queue and its messages came back with the broker.
    assert_eq!(
        depth().await,
        (QUEUED as u32, 0),
        "the queued tasks outlived the restart"
    );
    // A client connected after the restart (the producer side of a restart: faults.rs).
    let client = serving.client().await;
    let futures = client.map(inc, (0..100).map(|i| (i,))).await.unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=100).collect::<Vec<i64>>());
    assert!(
        workers[0].is_running().unwrap(),
        "the same worker process served after the restart"
    );

    // The tasks queued before the restart run once a worker comes, each with its own value.
    let _late = waiting.spawn_workers(1);
    let values = producer.gather(&queued).timeout(PATIENCE).await.unwrap();
    assert_eq!(
        values,
        (0..QUEUED as i64).map(|i| 1_001 + i).collect::<Vec<_>>()
    );
    assert_eq!(depth().await, (0, 1), "drained by the new worker");
}
