//! rask on a Redis Cluster of 3 primaries and 3 replicas (`redis_cluster_urls`): task keys
//! carry hash tags, pipelines are split by slot, graph bookkeeping keeps each script in one
//! slot. A primary failing over to its replica (`CLUSTER FAILOVER`), or killed while writes
//! wait for a replica (`redis_wait_replicas = 1`), in the middle of a run of 5,000 tasks loses
//! no result; graphs whose inputs live on other nodes run; `purge` reaches every primary.
//!
//! Every wait polls a condition with a deadline; nothing sleeps to synchronise.

use std::time::Duration;

use rask::builtins::{add, inc};
use rask::Delayed;
use rask_common::Store;
use rask_tests::redis_cluster::PrivateRedisCluster;
use rask_tests::runs::{assert_paced_values, map_paced, ready_workers, stored, until_stored};
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;
use tokio::time::Instant;

/// Tasks of the fail-over run.
const TASKS: usize = 5_000;
/// The longest any one wait may take.
const DEADLINE: Duration = Duration::from_secs(90);

/// A test environment on the shared RabbitMQ whose store is `cluster`.
fn on_cluster(cluster: &PrivateRedisCluster, env: TestEnv) -> TestEnv {
    let mut env = env;
    env.settings.redis_cluster_urls = cluster.urls();
    env
}

/// How a primary goes away in the middle of a run.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// `CLUSTER FAILOVER` on its replica: planned, nothing unreplicated.
    FailOver,
    /// Killed: whatever its replica did not hold is gone, so writes wait for one replica
    /// (`redis_wait_replicas = 1`).
    Kill,
}

/// Runs 5,000 tasks on two worker processes over a Redis Cluster, loses a primary as `loss`
/// says once 500 results are stored, and checks that every result is gathered.
async fn five_thousand_tasks_survive(name: &str, loss: Loss) {
    let started = Instant::now();
    let mut cluster = PrivateRedisCluster::start(name).await;
    eprintln!("Redis Cluster up in {:?}", started.elapsed());
    let mut env = on_cluster(&cluster, TestEnv::new(name).await);
    if let Loss::Kill = loss {
        env.settings.redis_wait_replicas = 1;
    }
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    let futures = map_paced(&client, 0..TASKS).await.unwrap();
    let mut workers = ready_workers(&env, 2).await;
    until_stored(&env, &store, &futures, 500).await;

    let primary = cluster.primaries().await[0];
    assert!(
        stored(&store, &futures).await < TASKS,
        "the run is not over when the primary goes away"
    );
    let promoted = match loss {
        Loss::FailOver => cluster.fail_over(primary).await,
        Loss::Kill => cluster.kill_primary(primary).await,
    };
    assert!(cluster.primaries().await.contains(&promoted));
    eprintln!(
        "{loss:?} of {primary} (now {promoted}) at {:?}",
        started.elapsed()
    );

    let values = client.gather(&futures).timeout(DEADLINE).await.unwrap();
    eprintln!("gathered at {:?}", started.elapsed());
    assert_paced_values(&values, 0..TASKS);
    for worker in &mut workers {
        assert!(worker.is_running().unwrap(), "workers survive the loss");
    }
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 0);
    eprintln!("test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_failing_over_loses_no_result_of_5000() {
    five_thousand_tasks_survive("rcfailover", Loss::FailOver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_loses_no_result_of_5000_with_a_replica_wait() {
    five_thousand_tasks_survive("rckill", Loss::Kill).await;
}

#[tokio::test]
async fn graphs_run_with_inputs_on_every_node() {
    let cluster = PrivateRedisCluster::start("rcgraph").await;
    let env = on_cluster(&cluster, TestEnv::new("rcgraph").await);
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;

    // A reduction tree of 64 leaves: 127 tasks whose keys hash all over the slots.
    let mut level: Vec<Delayed<i64>> = (0..64).map(|i| inc.delayed(i)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| add.delayed(&pair[0], &pair[1]))
            .collect();
    }
    let root = client.persist(&level[0]).await.unwrap();
    assert_eq!(
        root.result_within(PATIENCE).await.unwrap(),
        (1..=64).sum::<i64>()
    );

    // A graph on an input that is already stored registers as ready at once.
    let input = client.persist(&inc.delayed(41)).await.unwrap();
    assert_eq!(input.result_within(PATIENCE).await.unwrap(), 42);
    let on_stored = client
        .persist(&add.delayed(&input, inc.delayed(0)))
        .await
        .unwrap();
    assert_eq!(on_stored.result_within(PATIENCE).await.unwrap(), 43);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn purge_deletes_results_on_every_primary() {
    let cluster = PrivateRedisCluster::start("rcpurge").await;
    let env = on_cluster(&cluster, TestEnv::new("rcpurge").await);
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client.map(inc, (0..300).map(|i| (i,))).await.unwrap();
    client.gather(&futures).timeout(PATIENCE).await.unwrap();
    let store = Store::connect(&env.settings).await.unwrap();
    assert_eq!(stored(&store, &futures).await, 300);

    let (_, deleted) = client.purge().await.unwrap();
    assert_eq!(deleted, 300);
    assert_eq!(stored(&store, &futures).await, 0);
    worker.stop().await.unwrap();
}
