//! A worker process survives a RabbitMQ restart: it reconnects with backoff and serves again,
//! and the durable queue keeps what was published.

use rask::builtins::inc;
use rask_tests::{PrivateServers, TestEnv, PATIENCE};

#[tokio::test]
async fn a_worker_reconnects_after_the_broker_restarts() {
    let mut servers = PrivateServers::start("restart").await;
    let env = TestEnv::on(servers.urls(), "restart");
    let mut workers = env.spawn_workers(1);
    workers[0].wait_ready(PATIENCE).await.unwrap();
    let before = env.client().await;
    let first = before.submit(inc, (1,)).await.unwrap();
    assert_eq!(first.result_within(PATIENCE).await.unwrap(), 2);
    drop(before);

    servers.rabbitmq.restart().await.unwrap();

    // A client connected after the restart (the producer side of a restart: faults.rs).
    let client = env.client().await;
    let futures = client.map(inc, (0..100).map(|i| (i,))).await.unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=100).collect::<Vec<i64>>());
    assert!(
        workers[0].is_running().unwrap(),
        "the same worker process served after the restart"
    );
}
