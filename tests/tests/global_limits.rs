//! Global limits against real servers: with 3 workers and a rate of 50/s, 500 tasks start over
//! 10 s (± 10 %); with a concurrency of 2 across 3 workers never more than 2 run at once,
//! including after a worker is SIGKILLed while it holds a lease (which then expires, so that
//! its slot is used again); a task sent back to wait by a limit is not counted against
//! `max_deliveries`; running workers pick up a limit set or removed later; `rask limit
//! set|list|remove` print what they did.

use std::time::Duration;

use rask::{Limit, LimitSource};
use rask_tests::tasks::{hold_lease, started_at};
use rask_tests::{read_counter, TestEnv, PATIENCE};
use redis::AsyncCommands as _;

fn test_worker() -> std::path::PathBuf {
    rask::local::sibling_binary("rask-test-worker")
        .expect("rask-test-worker is built (cargo builds it for the tests of rask-tests)")
}

async fn ready(mut workers: Vec<rask::local::Worker>) -> Vec<rask::local::Worker> {
    for worker in &mut workers {
        worker.wait_ready(PATIENCE).await.expect("worker ready");
    }
    workers
}

fn limit(text: &str) -> Limit {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_rate_of_50_per_second_spreads_500_tasks_over_10_seconds_across_3_workers() {
    let env = TestEnv::new("limit-rate").await;
    let client = env.client().await;
    client
        .set_limit("started_at", limit("rate=50/s"))
        .await
        .unwrap();
    let _workers = ready(env.spawn_program_with(&test_worker(), 3, &[])).await;
    let futures = client
        .map(started_at, (0..500u64).map(|i| (i,)))
        .await
        .unwrap();
    let starts = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    let first = starts.iter().min().unwrap();
    let last = starts.iter().max().unwrap();
    let spread = Duration::from_millis(last - first);
    // 500 starts at 50/s, the first at once: 499 intervals of 20 ms.
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&spread),
        "500 tasks at 50/s started over {spread:?}"
    );
}

#[tokio::test]
async fn a_pool_rate_limits_every_task_of_the_pool_and_no_other() {
    let env = TestEnv::new("limit-pool").await;
    let client = env.client().await;
    let gpu = rask::Pool::new("gpu").unwrap();
    client
        .set_pool_limit(&gpu, limit("rate=20/s"))
        .await
        .unwrap();
    let both = [("RASK_POOLS", "default,gpu")];
    let _workers = ready(env.spawn_program_with(&test_worker(), 2, &both)).await;
    let spread = |starts: Vec<u64>| {
        Duration::from_millis(starts.iter().max().unwrap() - starts.iter().min().unwrap())
    };
    let on_gpu = rask::TaskOptions::new().pool("gpu");
    let futures = client
        .map_with(started_at, (0..60u64).map(|i| (i,)), &on_gpu)
        .await
        .unwrap();
    let limited = spread(client.gather(&futures).timeout(PATIENCE).await.unwrap());
    // 60 starts at 20/s, the first at once: 59 intervals of 50 ms.
    assert!(
        (Duration::from_millis(2_655)..=Duration::from_millis(3_245)).contains(&limited),
        "60 tasks of pool gpu at 20/s started over {limited:?}"
    );
    // The same function on the default pool is not limited.
    let futures = client
        .map(started_at, (60..120u64).map(|i| (i,)))
        .await
        .unwrap();
    let free = spread(client.gather(&futures).timeout(PATIENCE).await.unwrap());
    assert!(free < Duration::from_millis(2_000), "unlimited: {free:?}");
    assert!(client.remove_pool_limit(&gpu).await.unwrap());
}

/// The members of `{prefix}:running` left by worker process `pid`, removed (it was killed:
/// its tasks do not run any more).
async fn forget_killed(redis: &mut redis::aio::MultiplexedConnection, prefix: &str, pid: u32) {
    let running: Vec<String> = redis.smembers(format!("{prefix}:running")).await.unwrap();
    for member in running.iter().filter(|m| m.starts_with(&format!("{pid}:"))) {
        let _: u64 = redis
            .srem(format!("{prefix}:running"), member)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_concurrency_of_2_holds_across_3_workers_and_a_killed_holders_lease_expires() {
    let env = TestEnv::new("limit-concurrency").await;
    let client = env.client().await;
    client
        .set_limit("hold_lease", limit("concurrency=2"))
        .await
        .unwrap();
    // Leases live 3 heartbeats (1.5 s) without renewal.
    let fast = [
        ("RASK_HEARTBEAT_INTERVAL", "500ms"),
        ("RASK_CONCURRENCY", "3"),
    ];
    let mut workers = ready(env.spawn_program_with(&test_worker(), 3, &fast)).await;
    let url = env.settings.redis_url.clone();
    let prefix = format!("{}:hold", env.settings.key_prefix);
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The first two hold their leases past the lease's life: renewed, they keep them.
    let args = (0..40u64).map(|i| {
        let hold = if i < 2 { 2500 } else { 300 };
        (url.clone(), prefix.clone(), i, hold)
    });
    let futures = client.map(hold_lease, args).await.unwrap();

    // Kill a worker while one of its tasks holds a lease.
    let victim = std::sync::Mutex::new(None);
    let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
    env.eventually("a task runs", || {
        let (mut redis, running, pids, victim) =
            (redis.clone(), format!("{prefix}:running"), &pids, &victim);
        async move {
            let running: Vec<String> = redis.smembers(running).await.unwrap();
            let found = running
                .iter()
                .filter_map(|m| m.split_once(':')?.0.parse::<u32>().ok())
                .find_map(|pid| pids.iter().position(|p| *p == pid));
            *victim.lock().unwrap() = found;
            found.is_some()
        }
    })
    .await;
    let victim = victim.lock().unwrap().take().unwrap();
    let mut killed = workers.remove(victim);
    let pid = killed.pid();
    killed.kill().await.unwrap();
    forget_killed(&mut redis, &prefix, pid).await;
    let peak_before = read_counter(&url, &format!("{prefix}:peak")).await;
    let _: () = redis.set(format!("{prefix}:peak"), 0).await.unwrap();

    let done = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(done, (0..40).collect::<Vec<u64>>(), "every task ran");
    let peak_after = read_counter(&url, &format!("{prefix}:peak")).await;
    assert!(
        (1..=2).contains(&peak_before),
        "{peak_before} ran at once before the kill"
    );
    assert_eq!(
        peak_after, 2,
        "after the kill, 2 ran at once again (the dead worker's lease expired) and never more"
    );
    // Every lease is given back before its task's outcome is stored, but a lease may still be
    // held when the gather returns: execution is at least once, and the killed worker may have
    // been cut off between publishing a deferred copy of a task (confirmed) and acking its
    // delivery, so that both copies run; the gather returns with the first copy's outcome while
    // the second still runs under its lease (once seen under CI's load). So this checks that no
    // lease outlives its run and its life (3 heartbeats), not the instant the gather returns.
    let store = rask_common::Store::connect(&env.settings).await.unwrap();
    env.eventually("no lease is left held", || async {
        rask_common::limits::store::leases_held(&store, "hold_lease")
            .await
            .unwrap()
            == 0
    })
    .await;
}

#[tokio::test]
async fn tasks_sent_back_by_a_limit_are_not_counted_as_deliveries() {
    let env = TestEnv::new("limit-deliveries").await;
    let client = env.client().await;
    // One at a time, 200 ms each: the last of 8 tasks is sent back several times.
    client
        .set_limit("hold_lease", limit("concurrency=1 rate=20/s"))
        .await
        .unwrap();
    let vars = [("RASK_MAX_DELIVERIES", "1"), ("RASK_CONCURRENCY", "4")];
    let _workers = ready(env.spawn_program_with(&test_worker(), 2, &vars)).await;
    let url = env.settings.redis_url.clone();
    let prefix = format!("{}:once", env.settings.key_prefix);
    let args = (0..8u64).map(|i| (url.clone(), prefix.clone(), i, 200));
    let futures = client.map(hold_lease, args).await.unwrap();
    let done = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(done, (0..8).collect::<Vec<u64>>());
    assert_eq!(read_counter(&url, &format!("{prefix}:peak")).await, 1);
    let (dead, _) = env.queue_depth(&env.settings.dead_letter_queue).await;
    assert_eq!(dead, 0, "nothing dead-lettered");
}

#[tokio::test]
async fn running_workers_pick_up_a_limit_set_and_removed_later() {
    let env = TestEnv::new("limit-refresh").await;
    let client = env.client().await;
    let _workers = ready(env.spawn_program_with(&test_worker(), 1, &[])).await;
    let bucket = format!("{}:limit-bucket:started_at", env.settings.key_prefix);
    let mut redis = redis::Client::open(env.settings.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let run_one = |i: u64| {
        let client = &client;
        async move {
            let future = client.submit(started_at, (i,)).await.unwrap();
            future.result_within(PATIENCE).await.unwrap();
        }
    };
    run_one(0).await;
    let exists: bool = redis.exists(&bucket).await.unwrap();
    assert!(!exists, "no bucket without a limit");

    client
        .set_limit("started_at", limit("rate=1000/s"))
        .await
        .unwrap();
    let mut i = 1;
    env.eventually("the worker takes tokens once it reads the limit", || {
        i += 1;
        let (run, mut redis, bucket) = (run_one(i), redis.clone(), bucket.clone());
        async move {
            run.await;
            redis.exists::<_, bool>(&bucket).await.unwrap()
        }
    })
    .await;

    // Removing it deletes the bucket; a worker still applying the limit makes it again.
    assert!(client.remove_limit("started_at").await.unwrap());
    env.eventually(
        "the worker stops taking tokens once it reads the removal",
        || {
            i += 1;
            let (run, mut redis, bucket) = (run_one(i), redis.clone(), bucket.clone());
            async move {
                run.await;
                let exists: bool = redis.exists(&bucket).await.unwrap();
                if exists {
                    let _: u64 = redis.del(&bucket).await.unwrap();
                }
                !exists
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_cli_sets_lists_and_removes_limits() {
    let env = TestEnv::new("limit-cli").await;
    let out = env
        .rask(
            &["limit", "set", "send", "--rate", "100/s", "--burst", "5"],
            "",
        )
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "limited send: rate=100/s burst=5\n"
    );
    let out = env
        .rask(&["limit", "set", "resize", "--concurrency", "2"], "")
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = env.rask(&["limit", "list"], "").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "resize\t-\t-\t2\tredis\nsend\t100/s\t5\t-\tredis\n"
    );
    let out = env.rask(&["limit", "list", "--json"], "").await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([
            {"function": "resize", "rate": null, "burst": null, "concurrency": 2, "source": "redis"},
            {"function": "send", "rate": "100/s", "burst": 5, "concurrency": null, "source": "redis"},
        ])
    );
    let out = env.rask(&["limit", "set", "send"], "").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give a rate, a concurrency or both"),
        "{out:?}"
    );
    let out = env.rask(&["limit", "remove", "send"], "").await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "removed the limit of send\n"
    );
    let out = env.rask(&["limit", "remove", "send"], "").await;
    assert_eq!(out.status.code(), Some(1));
    // A pool's limit: its subject is `pool:NAME`.
    let out = env
        .rask(&["limit", "set", "--pool", "gpu", "--rate", "5/s"], "")
        .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "limited pool:gpu: rate=5/s\n"
    );
    let out = env.rask(&["limit", "list"], "").await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pool:gpu\t5/s\t1\t-\tredis\n"),
        "{out:?}"
    );
    let out = env.rask(&["limit", "remove", "--pool", "gpu"], "").await;
    assert!(out.status.success(), "{out:?}");
    let out = env
        .rask(&["limit", "set", "pool:g/pu", "--rate", "5/s"], "")
        .await;
    assert!(!out.status.success(), "a pool subject names a valid pool");
    let client = env.client().await;
    let left = client.limits().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].function, "resize");
    assert_eq!(left[0].source, LimitSource::Redis);
}
