//! Task queue shards (`queue_shards`): a producer spreads tasks over the shards by key, a worker
//! consumes every shard, and every task completes.

use rask::builtins::inc;
use rask_tests::{TestEnv, PATIENCE};

/// Tasks submitted.
const TASKS: usize = 600;
/// Shards.
const SHARDS: u16 = 3;

#[tokio::test]
async fn tasks_are_spread_over_shards_and_one_worker_consumes_them_all() {
    let mut env = TestEnv::new("shards").await;
    env.settings.queue_shards = SHARDS;
    let shards = env.settings.task_queues();
    assert_eq!(shards.len(), usize::from(SHARDS));
    let client = env.client().await;
    let futures = client
        .map(inc, (0..TASKS as i64).map(|i| (i,)))
        .await
        .unwrap();
    // Before any worker: every shard holds about a third of the tasks.
    let mut total = 0;
    for shard in &shards {
        let (ready, consumers) = env.queue_depth(shard).await;
        assert_eq!(consumers, 0);
        let third = (TASKS / usize::from(SHARDS)) as u32;
        assert!(
            (third / 2..third * 3 / 2).contains(&ready),
            "{shard} holds {ready} of {TASKS}"
        );
        total += ready;
    }
    assert_eq!(total as usize, TASKS, "every task is in one shard");

    let mut workers = env.spawn_workers(1);
    workers[0].wait_ready(PATIENCE).await.unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=TASKS as i64).collect::<Vec<_>>());
    for shard in &shards {
        assert_eq!(
            env.queue_depth(shard).await,
            (0, 1),
            "{shard}: drained, one consumer"
        );
    }
}
