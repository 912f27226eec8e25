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

use rask::builtins::{fail, inc, sum_ints};
use rask::{Delayed, FailureKind, Future};
use rask_tests::runs::spawn_test_workers;
use rask_tests::tasks::paced;
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

/// Far above the maps' inputs (`round * 10_000 + i`): trees' leaves are `inc(BIG + ..)` and
/// sleepy tasks return `2 * BIG + ..`, so that no two tasks share a value.
const BIG: i64 = 1 << 40;

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
    let workers = Arc::new(Mutex::new(spawn_test_workers(&env, 3)));
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
                pool[victim] = spawn_test_workers(&env, 1).pop().unwrap();
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
        // Leaves of their own, far above the maps' inputs: `inc(BIG + base + i)`.
        let leaves: Vec<Delayed<i64>> = (0..64).map(|i| inc.delayed(BIG + base + i)).collect();
        let leaf_values: Vec<i64> = (0..64).map(|i| BIG + base + i + 1).collect();
        let expected_sum: i64 = leaf_values.iter().sum();
        let tree = client
            .persist(&sum_ints.delayed(leaves.clone()))
            .await
            .unwrap();
        let failing = client
            .map(fail, (0..20).map(|i| (format!("soak {round}/{i}"),)))
            .await
            .unwrap();
        // 5-12 ms each, returning an id of their own.
        let sleepy_ids: Vec<u64> = (0..8).map(|i| (2 * BIG + base + i) as u64).collect();
        let sleepy = client
            .map(paced, sleepy_ids.iter().zip(5..).map(|(&id, ms)| (id, ms)))
            .await
            .unwrap();

        let values = client.gather(&mapped).timeout(PATIENCE).await.unwrap();
        assert_eq!(
            values,
            inputs.iter().map(|i| i + 1).collect::<Vec<_>>(),
            "round {round}"
        );
        assert_eq!(tree.result_within(PATIENCE).await.unwrap(), expected_sum);
        // Each leaf by its key: the sum cannot tell two swapped leaves apart.
        let leaf_futures: Vec<Future<i64>> = leaves
            .iter()
            .map(|leaf| client.future(leaf.key().clone()))
            .collect();
        let leaf_results = client.gather(&leaf_futures).timeout(PATIENCE).await;
        assert_eq!(leaf_results.unwrap(), leaf_values, "round {round}");
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
        assert_eq!(slept, sleepy_ids, "round {round}");
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
