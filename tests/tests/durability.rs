//! How durable results are, and what rask says about it: a Redis that can lose results
//! (append-only file off, keys with a TTL evicted) is warned about when a worker or a client
//! starts; waits for replicas (`redis_wait_replicas`) have a connection of their own, cover
//! every write, and when they fall short the writes acknowledged without them are counted on
//! the worker's `/metrics`; `rask local up --fsync always` makes Redis fsync every write.

use std::time::Duration;

use rask::builtins::inc;
use rask_common::{Outcome, Store, TaskKey};
use rask_tests::replica::ReplicatedRedis;
use rask_tests::{
    http_get, metric, shared_servers, PrivateServers, ServerUrls, Stopped, TestEnv, PATIENCE,
};

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

/// The id of the client that Redis shows blocked (flag `b`) in `WAIT`, once there is one.
async fn client_blocked_in_wait(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(conn)
            .await
            .unwrap();
        let waiting = clients.lines().find(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or_default()
                    .to_owned()
            };
            field("cmd=") == "wait" && field("flags=").contains('b')
        });
        if let Some(line) = waiting {
            let id = line.split_whitespace().next().unwrap();
            return id.trim_start_matches("id=").parse().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client waits for replicas: {clients}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_wait_for_replicas_holds_up_no_other_command_and_covers_every_write() {
    let redis = ReplicatedRedis::start("waits").await;
    let mut env = TestEnv::on(
        ServerUrls {
            amqp: shared_servers().await.amqp,
            redis: redis.primary.url(),
        },
        "waits",
    );
    env.settings.redis_wait_replicas = 1;
    let store = Store::connect(&env.settings).await.unwrap();
    let mut inspector = redis::Client::open(redis.primary.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // With the replica stopped, storing a result waits for it (250 ms), in vain.
    let stopped = Stopped::stop(redis.replica_pid());
    let outcome = Outcome::Value(rmp_serde::to_vec(&42).unwrap())
        .encode()
        .unwrap();
    let first = TaskKey::new("waits-1").unwrap();
    let storing = {
        let (store, outcome, key) = (store.clone(), outcome.clone(), first.clone());
        tokio::spawn(async move { store.store_and_release(&[(key, outcome)]).await })
    };
    let waiting = client_blocked_in_wait(&mut inspector).await;
    // Meanwhile the store's own connection answers at once: the wait has a connection of its
    // own (before, this CLIENT ID queued behind the WAIT and named the waiting client).
    let id: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert_ne!(id, waiting, "WAIT runs on a connection of its own");
    storing.await.unwrap().expect("the result is stored");
    // The wait covered the write made on the other connection: it fell short.
    assert_eq!(store.replica_wait_counts().short(), 1);

    // For a while writes go on without waiting, each counted.
    let second = TaskKey::new("waits-2").unwrap();
    store.store_and_release(&[(second, outcome)]).await.unwrap();
    assert_eq!(store.replica_wait_counts().skipped(), 1);
    drop(stopped);
}

#[tokio::test]
async fn a_worker_shows_writes_acknowledged_without_replicas_on_its_metrics() {
    let redis = ReplicatedRedis::start("skipped").await;
    let mut env = TestEnv::on(
        ServerUrls {
            amqp: shared_servers().await.amqp,
            redis: redis.primary.url(),
        },
        "skipped",
    );
    env.settings.redis_wait_replicas = 1;
    let metrics = format!("127.0.0.1:{}", rask::local::free_port().unwrap());
    let mut workers = env.spawn_workers_with(1, &[("RASK_METRICS_LISTEN", &metrics)]);
    workers[0].wait_ready(PATIENCE).await.expect("worker ready");
    let client = env.client().await;

    let _stopped = Stopped::stop(redis.replica_pid());
    for i in 0..3 {
        let value = client.call(inc, (i,)).await.unwrap();
        assert_eq!(value, i + 1);
    }

    // A result is visible to the client as soon as it is written; the worker counts the wait
    // (or its skip) right after: read the metrics once all three are counted.
    let counted = || async {
        let (code, body) = http_get(&metrics, "/metrics").await;
        assert_eq!(code, 200);
        let waits = metric(&body, "rask_replica_waits_short_total")
            + metric(&body, "rask_replica_waits_skipped_total");
        (waits, body)
    };
    env.eventually("three waits counted", || async { counted().await.0 >= 3.0 })
        .await;
    let (_, body) = counted().await;
    let short = metric(&body, "rask_replica_waits_short_total");
    let skipped = metric(&body, "rask_replica_waits_skipped_total");
    assert!(short >= 1.0, "a short wait is counted: {body}");
    assert!(skipped >= 1.0, "skipped waits are counted: {body}");
    assert_eq!(short + skipped, 3.0, "one wait per result: {body}");
    let log = std::fs::read_to_string(workers[0].log_path()).unwrap();
    assert!(
        log.contains("fewer replicas than redis_wait_replicas"),
        "the short wait is logged: {log}"
    );
}

#[tokio::test]
async fn rask_local_up_fsync_always_makes_redis_fsync_every_write() {
    let dir = std::env::temp_dir().join(format!("rask-test-fsync-{}", std::process::id()));
    let port = || rask::local::free_port().unwrap().to_string();
    let redis_port = port();
    let env = TestEnv::new("fsync").await;
    let up = env
        .rask(
            &[
                "local",
                "up",
                "--workers",
                "0",
                "--fsync",
                "always",
                "--dir",
                &dir.display().to_string(),
                "--amqp-port",
                &port(),
                "--dist-port",
                &port(),
                "--redis-port",
                &redis_port,
            ],
            "",
        )
        .await;
    let redis = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/")).unwrap();
    let fsync = async {
        let mut conn = redis.get_multiplexed_async_connection().await?;
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async::<Vec<String>>(&mut conn)
            .await
    }
    .await;
    let down = env
        .rask(&["local", "down", "--dir", &dir.display().to_string()], "")
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up.status.success(), "rask local up: {up:?}");
    assert!(down.status.success(), "rask local down: {down:?}");
    assert_eq!(fsync.unwrap(), ["appendfsync", "always"]);
}
