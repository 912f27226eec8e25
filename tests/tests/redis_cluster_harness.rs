//! The Redis Cluster harness itself: [`PrivateRedisCluster`] starts 3 primaries with a replica
//! each, and `fail_over` hands a primary's slots to its replica.

use rask_tests::redis_cluster::PrivateRedisCluster;
use tokio::time::Instant;

#[tokio::test]
async fn harness_cluster_fails_over() {
    let started = Instant::now();
    let cluster = PrivateRedisCluster::start("rcharness").await;
    eprintln!("Redis Cluster up in {:?}", started.elapsed());
    assert_eq!(cluster.urls().len(), 6, "six seed nodes");

    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "three primaries: {primaries:?}");
    let old = primaries[0];
    let replica = cluster.replica_of(old).await;
    assert!(!primaries.contains(&replica), "{replica} is a replica");

    let failed_over = Instant::now();
    let promoted = cluster.fail_over(old).await;
    eprintln!("failed over in {:?}", failed_over.elapsed());
    assert_eq!(promoted, replica, "the primary's own replica took over");
    let now = cluster.primaries().await;
    assert_eq!(now.len(), 3, "still three primaries: {now:?}");
    assert!(now.contains(&promoted), "{promoted} is a primary: {now:?}");
    assert!(!now.contains(&old), "{old} is no longer a primary: {now:?}");
    assert_eq!(
        cluster.replica_of(promoted).await,
        old,
        "the old primary replicates it"
    );
}
