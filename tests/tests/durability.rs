//! What rask says about how durable results are: a Redis that can lose results (append-only
//! file off, keys with a TTL evicted) is warned about when a worker or a client starts.

use rask_tests::{PrivateServers, TestEnv, PATIENCE};

#[tokio::test]
async fn a_worker_and_a_client_warn_when_redis_can_lose_results() {
    let servers = PrivateServers::start("risky").await;
    let redis = redis::Client::open(servers.urls().redis).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let env = TestEnv::on(servers.urls(), "risky");

    let mut workers = env.spawn_workers(1);
    workers[0].wait_ready(PATIENCE).await.expect("worker ready");
    let log = std::fs::read_to_string(workers[0].log_path()).unwrap();
    for warning in ["appendonly no", "maxmemory-policy volatile-lru"] {
        assert!(
            log.contains(warning),
            "the worker warns of {warning}: {log}"
        );
    }

    let out = env.rask(&["submit", "inc", "41"], "").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for warning in ["appendonly no", "maxmemory-policy volatile-lru"] {
        assert!(
            stderr.contains(warning),
            "the client warns of {warning}: {stderr}"
        );
    }
}

#[tokio::test]
async fn a_durable_redis_draws_no_warning() {
    // The shared servers are `rask local`'s: append-only, no eviction.
    let env = TestEnv::new("durable").await;
    let store = rask_common::Store::connect(&env.settings).await.unwrap();
    assert_eq!(store.risks().await.unwrap(), Vec::new());
}
