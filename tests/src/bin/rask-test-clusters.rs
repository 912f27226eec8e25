//! `rask-test-clusters ENV_FILE`: starts a 3-node RabbitMQ cluster (quorum queues), a Redis
//! Cluster of 3 primaries and 3 replicas, and a single Redis for the tests' own counters, all
//! private and on loopback; writes the `RASK_TEST_*` variables that point test suites at them
//! to ENV_FILE (`NAME=value` lines, written once everything is up), then runs until SIGTERM
//! or SIGINT, and stops them all. `scripts/test.sh` runs the
//! core and graph suites on them.

use std::io::Write as _;

use anyhow::Context as _;
use rask_tests::redis_cluster::PrivateRedisCluster;
use rask_tests::PrivateCluster;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: rask-test-clusters ENV_FILE")?;
    let (rabbitmq, redis) = tokio::join!(
        PrivateCluster::start("suite-rabbitmq", 3),
        PrivateRedisCluster::start("suite-redis")
    );
    let vars = [
        ("RASK_TEST_AMQP_URL", rabbitmq.amqp_urls()[0].clone()),
        ("RASK_TEST_AMQP_URLS", rabbitmq.amqp_urls().join(",")),
        ("RASK_TEST_QUEUE_TYPE", "quorum".to_owned()),
        ("RASK_TEST_REDIS_URL", rabbitmq.urls().redis),
        ("RASK_TEST_REDIS_CLUSTER_URLS", redis.urls().join(",")),
    ];
    // Written whole under another name, then renamed: a reader never sees half a file.
    let partial = format!("{path}.partial");
    let mut file =
        std::fs::File::create(&partial).with_context(|| format!("creating {partial}"))?;
    for (name, value) in vars {
        writeln!(file, "{name}={value}")?;
    }
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    eprintln!("rask-test-clusters: up; variables in {path}");

    rask_worker::shutdown_signal().await;
    drop((rabbitmq, redis));
    Ok(())
}
