//! The soak: minutes of mixed load (maps, graphs, failing tasks, sleepy tasks) on private servers
//! and 3 worker processes, while a worker is SIGKILLed and restarted every few seconds and Redis
//! and RabbitMQ each restart once. Every task must end with the right value or its expected
//! failure: nothing lost, nothing wrong, nothing hanging.
//!
//! Not part of CI (it runs for minutes); run it with
//! `RASK_SOAK_SECS=600 cargo nextest run -p rask-tests --test soak --run-ignored only --no-capture`
//! (default 60 s). It prints one `SOAK ...` line with the figures (see docs/reliability.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rask::builtins::{fail, inc, leaf, sleep_ms, sum_ints};
use rask::{Delayed, FailureKind};
use rask_tests::{PrivateServers, TestEnv, PATIENCE};
use tokio::sync::Mutex;

/// A small xorshift generator: the soak needs variety, not quality.
struct Random(u64);

impl Random {
    fn new() -> Self {
        Random(u64::from(std::process::id()) << 32 | 0x9e37_79b9)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Default)]
struct Tally {
    rounds: AtomicU64,
    tasks: AtomicU64,
    failures_expected: AtomicU64,
    kills: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run by hand (see the module docs)"]
async fn soak_mixed_load_with_worker_kills_and_server_restarts() {
    let seconds: u64 = std::env::var("RASK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let servers = Arc::new(Mutex::new(PrivateServers::start("soak").await));
    let env = Arc::new(TestEnv::on(servers.lock().await.urls(), "soak"));
    let workers = Arc::new(Mutex::new(env.spawn_workers(3)));
    let client = env.client().await;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);

    // The chaos: kill a random worker every 2-6 s and start a fresh one in its place; restart
    // Redis at a third of the run and RabbitMQ at two thirds.
    let chaos = {
        let (workers, servers, tally, env) =
            (workers.clone(), servers.clone(), tally.clone(), env.clone());
        tokio::spawn(async move {
            let mut random = Random::new();
            let (mut redis_done, mut rabbit_done) = (false, false);
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2000 + random.below(4000))).await;
                let mut pool = workers.lock().await;
                let victim = usize::try_from(random.below(pool.len() as u64)).unwrap();
                pool[victim].kill().await.unwrap();
                pool[victim] = env.spawn_workers(1).pop().unwrap();
                tally.kills.fetch_add(1, Ordering::Relaxed);
                drop(pool);
                let elapsed = started.elapsed().as_secs();
                if !redis_done && elapsed * 3 >= seconds {
                    servers.lock().await.redis.restart().await.unwrap();
                    redis_done = true;
                    eprintln!("soak: restarted Redis at {elapsed}s");
                }
                if !rabbit_done && elapsed * 3 >= seconds * 2 {
                    servers.lock().await.rabbitmq.restart().await.unwrap();
                    rabbit_done = true;
                    eprintln!("soak: restarted RabbitMQ at {elapsed}s");
                }
            }
        })
    };

    let mut random = Random::new();
    while Instant::now() < deadline {
        let round = tally.rounds.fetch_add(1, Ordering::Relaxed);
        let n = 500 + random.below(1500);
        let base = i64::try_from(round * 10_000).unwrap();
        let inputs: Vec<i64> = (0..i64::try_from(n).unwrap()).map(|i| base + i).collect();
        let mapped = client.map(inc, inputs.iter().map(|&i| (i,))).await.unwrap();
        let leaves: Vec<Delayed<i64>> = (0..64).map(|i| leaf.delayed(base + i)).collect();
        let expected_sum: i64 = (0..64).map(|i| (base + i).rem_euclid(7) + 1).sum();
        let tree = client.persist(&sum_ints.delayed(leaves)).await.unwrap();
        let failing = client
            .map(fail, (0..20).map(|i| (format!("soak {round}/{i}"),)))
            .await
            .unwrap();
        let sleepy = client
            .map(sleep_ms, (0..8).map(|i| (5 + i,)))
            .await
            .unwrap();

        let values = client.gather(&mapped).timeout(PATIENCE).await.unwrap();
        assert_eq!(
            values,
            inputs.iter().map(|i| i + 1).collect::<Vec<_>>(),
            "round {round}"
        );
        assert_eq!(tree.result_within(PATIENCE).await.unwrap(), expected_sum);
        for (i, result) in client
            .gather(&failing)
            .timeout(PATIENCE)
            .each()
            .await
            .unwrap()
            .into_iter()
            .enumerate()
        {
            let failure = result.unwrap_err();
            let failure = failure.failure().expect("a task failure");
            assert_eq!(failure.kind, FailureKind::Failed);
            assert_eq!(failure.message, format!("soak {round}/{i}"));
        }
        let slept = client.gather(&sleepy).timeout(PATIENCE).await.unwrap();
        assert_eq!(slept, (5..13).collect::<Vec<u64>>());
        tally
            .tasks
            .fetch_add(n + 64 + 1 + 20 + 8, Ordering::Relaxed);
        tally.failures_expected.fetch_add(20, Ordering::Relaxed);
    }
    chaos.await.unwrap();
    println!(
        "SOAK seconds={} rounds={} tasks={} expected_failures={} worker_kills={} lost=0 wrong=0",
        started.elapsed().as_secs(),
        tally.rounds.load(Ordering::Relaxed),
        tally.tasks.load(Ordering::Relaxed),
        tally.failures_expected.load(Ordering::Relaxed),
        tally.kills.load(Ordering::Relaxed),
    );
    client.close().await.unwrap();
}
