//! rask on a RabbitMQ cluster: three private nodes joined into one cluster, quorum task and
//! dead-letter queues, clients and workers given every node (`amqp_urls`). A node lost in the
//! middle of a run of 5,000 tasks (the one everybody is connected to, which also leads the
//! quorum queue) loses no task: workers and the client fail over to another node and resume.
//!
//! And on a single node: with a quorum queue, a poison task is dead-lettered by the queue's own
//! delivery count (`x-delivery-count`), with no counter in Redis.
//!
//! Every wait polls a condition with a deadline; nothing sleeps to synchronise.

use std::path::Path;
use std::time::Duration;

use rask::Future;
use rask_common::settings::QueueType;
use rask_common::{Keys, Store};
use rask_tests::runs::{assert_paced_values, map_paced, ready_workers, stored, until_stored};
use rask_tests::{rabbitmqctl, PrivateCluster, TestEnv};
use tokio::time::Instant;

/// Tasks per run.
const TASKS: usize = 5_000;
/// The longest any one wait of the cluster test may take.
const DEADLINE: Duration = Duration::from_secs(90);

/// `env`'s settings with quorum queues (and so no priorities).
fn quorum(env: &mut TestEnv) {
    env.settings.queue_type = QueueType::Quorum;
    env.settings.max_priority = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_cluster_node_loses_no_task_of_5000() {
    let started = Instant::now();
    let mut cluster = PrivateCluster::start("cluster", 3).await;
    eprintln!("3-node cluster up in {:?}", started.elapsed());
    let mut env = TestEnv::on(cluster.urls(), "cluster");
    env.settings.amqp_urls = cluster.amqp_urls();
    env.settings.concurrency = 8;
    quorum(&mut env);
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();

    // The client declared the queues on the first node: both are quorum queues of the cluster,
    // led from that node.
    let queues = rabbitmqctl(
        &cluster.specs[1],
        &["list_queues", "name", "type", "leader", "--quiet"],
    )
    .await;
    let first_node = format!("{}@localhost", cluster.specs[0].node_name);
    for queue in [&env.settings.queue, &env.settings.dead_letter_queue] {
        assert!(
            queues
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [queue.as_str(), "quorum", first_node.as_str()]),
            "{queue} is a quorum queue led by {first_node}: {queues}"
        );
    }

    let half = TASKS / 2;
    let first = map_paced(&client, 0..half).await.unwrap();
    let mut workers = ready_workers(&env, 2).await;
    until_stored(&env, &store, &first, 500).await;

    // The first node goes away as in a crash: the client's and both workers' connections, and
    // the quorum queue's leader, were there.
    cluster.nodes[0].kill().await.unwrap();
    let at_kill = stored(&store, &first).await;
    assert!(at_kill < half, "the run was over before the kill");

    // The client fails over to publish the second half; the workers fail over and run it all.
    let second = tokio::time::timeout(DEADLINE, map_paced(&client, half..TASKS))
        .await
        .expect("map returns after the failover")
        .expect("map succeeds after the failover");
    let futures: Vec<Future<u64>> = first.into_iter().chain(second).collect();
    let values = client.gather(&futures).timeout(DEADLINE).await.unwrap();
    assert_paced_values(&values, 0..TASKS);
    for worker in &mut workers {
        assert!(worker.is_running().unwrap(), "workers survive the failover");
    }
    // Nothing was dead-lettered on the way.
    let dead = env.settings.dead_letter_queue.clone();
    assert_eq!(env.queue_depth(&dead).await.0, 0);
    eprintln!("test done in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_poison_task_on_a_quorum_queue_is_dead_lettered_by_its_delivery_count() {
    let mut env = TestEnv::new("quorumpoison").await;
    quorum(&mut env);
    let program = Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    let poison = rask_tests::poison::dead_lettered_after_three_deliveries(&env, program).await;

    // The count came from the queue: no delivery counter was written to Redis.
    let counter = Keys::new(env.settings.key_prefix.as_str()).deliveries(&poison);
    let redis = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg(&counter)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "no Redis counter {counter}");
}
