//! Pools against real servers: a task runs only on workers of its pool (chosen by
//! `TaskOptions::pool`, by the routing table, or the default pool), graph tasks and released
//! dependents go to their own pool, retries stay in their pool, routes no live worker serves are
//! reported, `wait_for_workers` waits for the n-th worker of a pool, a purge empties every
//! pool's queues, and a graph's nodes each run in the pool of their own options.
//!
//! The workers of the default pool and those of pool `gpu` register functions of the same names
//! whose bodies say which pool ran them, so every value tells where its task ran.

use std::time::Duration;

use rask::{Client, FailureKind, Pool, RetryPolicy, Settings, TaskOptions};
use rask_tests::{failure, Counter, RunningWorker, TestEnv, PATIENCE};
use rask_worker::{Registry, Worker};

/// The functions of one pool's workers: the same names in each pool, each returning (or
/// counting under) its pool's name.
macro_rules! pool_functions {
    ($module:ident, $pool:literal) => {
        mod $module {
            use rask::TaskError;

            /// The pool whose worker ran it, after `x` (`x>pool`).
            pub(crate) const POOL: &str = $pool;

            rask::task! {
                /// `x>pool`: which pool ran it, after what it was given.
                pub(crate) fn tag(x: String) -> String {
                    format!("{x}>{}", POOL)
                }
            }

            rask::task! {
                /// `[a,b,…]>pool`: which pool joined the parts.
                pub(crate) fn join(parts: Vec<String>) -> String {
                    format!("[{}]>{}", parts.join(","), POOL)
                }
            }

            rask::task! {
                /// Counts its run in the Redis counter `{counter}:{pool}`; fails retryably
                /// until that count reaches `succeed_on`, then returns its pool's name.
                pub(crate) async fn flaky(
                    redis_url: String,
                    counter: String,
                    succeed_on: i64
                ) -> Result<String, TaskError> {
                    let client = redis::Client::open(redis_url)
                        .map_err(|e| TaskError::new(e.to_string()))?;
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| TaskError::new(e.to_string()))?;
                    let run: i64 = redis::cmd("INCR")
                        .arg(format!("{counter}:{}", POOL))
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| TaskError::new(e.to_string()))?;
                    if run < succeed_on {
                        return Err(TaskError::retryable(format!("run {run} failed")));
                    }
                    Ok(POOL.to_owned())
                }
            }
        }
    };
}

pool_functions!(on_default, "default");
pool_functions!(on_gpu, "gpu");

rask::task! {
    /// Registered by the default pool's workers only.
    fn default_only(x: i64) -> i64 {
        x
    }
}

fn gpu() -> Pool {
    Pool::new("gpu").unwrap()
}

/// `settings` serving `pools`, with a quick heartbeat so that the registry follows fast.
fn serving(settings: &Settings, pools: &[Pool]) -> Settings {
    Settings {
        pools: pools.to_vec(),
        heartbeat_interval: Duration::from_millis(100),
        ..settings.clone()
    }
}

/// A worker of the default pool (with [`default_only`]) in this process.
fn default_worker(env: &TestEnv) -> (String, RunningWorker) {
    let registry = Registry::new()
        .with::<on_default::tag>()
        .with::<on_default::join>()
        .with::<on_default::flaky>()
        .with::<default_only>();
    run(serving(&env.settings, &[Pool::default()]), registry)
}

/// A worker of pool `gpu` in this process.
fn gpu_worker(env: &TestEnv) -> (String, RunningWorker) {
    let registry = Registry::new()
        .with::<on_gpu::tag>()
        .with::<on_gpu::join>()
        .with::<on_gpu::flaky>();
    run(serving(&env.settings, &[gpu()]), registry)
}

/// Runs a worker with `settings` and `registry` until the handle stops it; with its id.
fn run(settings: Settings, registry: Registry) -> (String, RunningWorker) {
    let worker = Worker::new(settings, registry);
    let id = worker.id().to_owned();
    (id, RunningWorker::start(worker))
}

/// A client with the routing table `routes`.
async fn routed(env: &TestEnv, routes: &[(&str, Pool)]) -> Client {
    let settings = Settings {
        routes: routes
            .iter()
            .map(|(f, p)| ((*f).to_owned(), p.clone()))
            .collect(),
        ..env.settings.clone()
    };
    Client::connect(settings).await.unwrap()
}

/// Values of `futures`, each within [`PATIENCE`].
async fn values(futures: Vec<rask::Future<String>>) -> Vec<String> {
    let mut values = Vec::new();
    for future in futures {
        values.push(future.result_within(PATIENCE).await.unwrap());
    }
    values
}

#[tokio::test]
async fn functions_run_only_on_workers_of_their_pool() {
    let env = TestEnv::new("pools-run").await;
    let (_, default) = default_worker(&env);
    let (gpu_id, on_gpu_pool) = gpu_worker(&env);
    let client = env.client().await;
    let to_gpu = TaskOptions::new().pool(gpu());

    let inputs = |prefix: &str| {
        (0..10)
            .map(|i| (format!("{prefix}{i}"),))
            .collect::<Vec<_>>()
    };
    let plain = client.map(on_default::tag, inputs("d")).await.unwrap();
    let pooled = client
        .map_with(on_default::tag, inputs("g"), &to_gpu)
        .await
        .unwrap();
    let expected = |prefix: &str, pool: &str| {
        (0..10)
            .map(|i| format!("{prefix}{i}>{pool}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(plain).await, expected("d", "default"));
    assert_eq!(values(pooled).await, expected("g", "gpu"));

    // A function the gpu pool's workers do not have fails there, named by that worker.
    let future = client
        .submit_with(default_only, (7,), &to_gpu)
        .await
        .unwrap();
    let failed = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(failed.kind, FailureKind::UnknownTask);
    assert_eq!(failed.worker, gpu_id);
    // The default pool's worker runs it.
    let future = client.submit(default_only, (7,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 7);
    // A pool name that would break queue names is refused before anything is published.
    let bad = TaskOptions::new().pool("gpu.shard1");
    let error = client
        .submit_with(default_only, (8,), &bad)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("gpu.shard1"), "{error}");

    on_gpu_pool.stop().await.unwrap();
    default.stop().await.unwrap();
}

#[tokio::test]
async fn the_routing_table_sends_functions_and_graph_tasks_to_their_pool() {
    let env = TestEnv::new("pools-routes").await;
    let (_, default) = default_worker(&env);
    let (_, on_gpu_pool) = gpu_worker(&env);

    let client = routed(&env, &[("tag", gpu())]).await;
    let future = client.submit(on_default::tag, ("a".into(),)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), "a>gpu");
    assert_eq!(
        client.call(on_default::tag, ("b".into(),)).await.unwrap(),
        "b>gpu"
    );
    // An explicit pool wins over the table.
    let options = TaskOptions::new().pool(Pool::default());
    let future = client
        .submit_with(on_default::tag, ("c".into(),), &options)
        .await
        .unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), "c>default");
    // Graph tasks are routed too, and a dependent released by a worker of the default pool
    // goes to the gpu pool.
    let unrouted = env.client().await;
    let graph = on_default::tag.delayed(&future);
    assert_eq!(client.compute(&graph).await.unwrap(), "c>default>gpu");
    let chain = on_default::tag.delayed(on_default::tag.delayed("d".to_owned()));
    assert_eq!(unrouted.compute(&chain).await.unwrap(), "d>default>default");

    on_gpu_pool.stop().await.unwrap();
    default.stop().await.unwrap();
}

#[tokio::test]
async fn a_dependent_released_by_a_gpu_worker_runs_in_the_default_pool() {
    let env = TestEnv::new("pools-release").await;
    let (_, default) = default_worker(&env);
    let (_, on_gpu_pool) = gpu_worker(&env);
    let client = env.client().await;
    // The leaf is persisted to the gpu pool; its dependent, waiting as a record, is released
    // by the gpu worker that stores the leaf's result, into the default pool.
    let leaf = client
        .submit_with(
            on_default::tag,
            ("e".into(),),
            &TaskOptions::new().pool(gpu()),
        )
        .await
        .unwrap();
    let root = on_default::tag.delayed(&leaf);
    assert_eq!(client.compute(&root).await.unwrap(), "e>gpu>default");
    on_gpu_pool.stop().await.unwrap();
    default.stop().await.unwrap();
}

#[tokio::test]
async fn a_graph_whose_leaves_go_to_gpu_and_root_to_default_runs_each_where_it_should() {
    let env = TestEnv::new("pools-node-options").await;
    let (_, default) = default_worker(&env);
    let (_, on_gpu_pool) = gpu_worker(&env);
    let leaves = |prefix: &str| -> Vec<_> {
        (0..4)
            .map(|i| {
                on_default::tag
                    .delayed(format!("{prefix}{i}"))
                    .with_options(TaskOptions::new().pool("gpu"))
            })
            .collect()
    };
    let expected = |prefix: &str| {
        let parts: Vec<String> = (0..4).map(|i| format!("{prefix}{i}>gpu")).collect();
        format!("[{}]>default", parts.join(","))
    };

    // The root has no options: the default pool.
    let client = env.client().await;
    let root = on_default::join.delayed(leaves("a"));
    assert_eq!(client.compute(&root).await.unwrap(), expected("a"));

    // A routing table sending both functions to gpu: the leaves' pool is theirs anyway, and
    // the root's own option wins over the table; persisted rather than computed.
    let routed = routed(&env, &[("tag", gpu()), ("join", gpu())]).await;
    let root = on_default::join
        .delayed(leaves("b"))
        .with_options(TaskOptions::new().pool(Pool::default()));
    let future = routed.persist(&root).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), expected("b"));

    on_gpu_pool.stop().await.unwrap();
    default.stop().await.unwrap();
}

#[tokio::test]
async fn routes_no_live_worker_serves_are_reported() {
    let env = TestEnv::new("pools-unserved").await;
    let (_, on_gpu_pool) = gpu_worker(&env);
    let client = routed(&env, &[("tag", gpu()), ("default_only", gpu())]).await;
    client
        .wait_for_workers(1)
        .pool(gpu())
        .timeout(PATIENCE)
        .await
        .unwrap();
    let unserved = client.check_routes().await.unwrap();
    let found: Vec<(&str, &str, usize)> = unserved
        .iter()
        .map(|r| (r.function.as_str(), r.pool.as_str(), r.workers))
        .collect();
    assert_eq!(found, [("default_only", "gpu", 1)]);

    // A function published to the default pool, which has no worker at all.
    let future = client
        .submit_with(
            on_default::tag,
            ("f".into(),),
            &TaskOptions::new().pool(Pool::default()),
        )
        .await
        .unwrap();
    let unserved = client.check_routes().await.unwrap();
    let found: Vec<(&str, &str, usize)> = unserved
        .iter()
        .map(|r| (r.function.as_str(), r.pool.as_str(), r.workers))
        .collect();
    assert_eq!(found, [("default_only", "gpu", 1), ("tag", "default", 0)]);

    // `rask status` says the same about the routing table, and shows each pool.
    let monitor = rask::Monitor::connect(client.settings().clone())
        .await
        .unwrap();
    let status = monitor.status().await.unwrap();
    assert_eq!(
        status.unserved_routes.len(),
        1,
        "{:?}",
        status.unserved_routes
    );
    assert_eq!(status.unserved_routes[0].function, "default_only");
    let pools: Vec<(&str, usize, Option<u64>)> = status
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.workers, p.queued))
        .collect();
    assert_eq!(pools, [("default", 0, Some(1)), ("gpu", 1, Some(0))]);
    assert_eq!(status.workers[0].pools, [gpu()]);
    drop(future);
    on_gpu_pool.stop().await.unwrap();
}

#[tokio::test]
async fn wait_for_workers_returns_when_the_nth_registers_and_times_out_otherwise() {
    let env = TestEnv::new("pools-wait").await;
    let client = env.client().await;
    let (_, first) = gpu_worker(&env);
    let (_, other) = default_worker(&env);
    let found = client
        .wait_for_workers(1)
        .pool(gpu())
        .timeout(PATIENCE)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    client.wait_for_workers(2).timeout(PATIENCE).await.unwrap();

    let error = client
        .wait_for_workers(2)
        .pool(gpu())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        matches!(
            error,
            rask::Error::WorkersTimeout {
                wanted: 2,
                found: 1,
                ..
            }
        ),
        "{error:?}"
    );

    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .wait_for_workers(2)
                .pool(gpu())
                .timeout(PATIENCE)
                .await
        }
    });
    let (second_id, second) = gpu_worker(&env);
    let found = waiting.await.unwrap().unwrap();
    assert_eq!(found.len(), 2);
    assert!(found.iter().any(|w| w.id == second_id), "{found:?}");

    for worker in [first, other, second] {
        worker.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_retried_task_stays_in_its_pool() {
    let env = TestEnv::new("pools-retry").await;
    let (_, default) = default_worker(&env);
    let (_, on_gpu_pool) = gpu_worker(&env);
    let client = env.client().await;
    let runs = Counter::new(&env, "flaky");
    let policy = RetryPolicy::new(5).backoff(Duration::from_millis(20), Duration::from_millis(100));
    let options = TaskOptions::new().pool(gpu()).retry(policy);
    let future = client
        .submit_with(
            on_default::flaky,
            (runs.url.clone(), runs.key.clone(), 3),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), "gpu");
    let on = |pool: &str| Counter {
        url: runs.url.clone(),
        key: format!("{}:{pool}", runs.key),
    };
    assert_eq!(
        on("gpu").runs().await,
        3,
        "three attempts, all on the gpu pool"
    );
    assert_eq!(on("default").runs().await, 0, "none on the default pool");
    on_gpu_pool.stop().await.unwrap();
    default.stop().await.unwrap();
}

#[tokio::test]
async fn purge_empties_every_pools_queues() {
    let env = TestEnv::new("pools-purge").await;
    let client = env.client().await;
    let to_gpu = TaskOptions::new().pool(gpu());
    let args = (0..5).map(|i| (format!("p{i}"),));
    client
        .map_with(on_default::tag, args, &to_gpu)
        .await
        .unwrap();
    let later = to_gpu.clone().countdown(Duration::from_secs(600));
    client
        .submit_with(on_default::tag, ("later".into(),), &later)
        .await
        .unwrap();
    let gpu_queue = env.settings.for_pool(&gpu()).queue;
    assert_eq!(env.queue_depth(&gpu_queue).await.0, 5);

    let purged = client.purge_report().await.unwrap();
    let of = |name: &str| {
        purged
            .queues
            .iter()
            .find(|q| q.name == name)
            .map(|q| q.messages)
    };
    assert_eq!(of(&gpu_queue), Some(5), "{purged:?}");
    assert_eq!(purged.delayed_messages(), 1, "{purged:?}");
    assert_eq!(env.queue_depth(&gpu_queue).await.0, 0);
}

#[tokio::test]
async fn a_pool_has_its_own_dead_letter_queue() {
    let env = TestEnv::new("pools-dead").await;
    let (gpu_id, on_gpu_pool) = gpu_worker(&env);
    let _default_client = env.client().await; // declares the default pool's queues
    let gpu_settings = env.settings.for_pool(&gpu());
    // Declares the gpu pool's queues, as any producer of the pool does.
    let gpu_client = Client::connect(gpu_settings.clone()).await.unwrap();
    let connection = rask_common::broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            env.settings.exchange.as_str().into(),
            gpu_settings.queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"\xc1 not a task",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    // The gpu worker copies it to the gpu pool's dead-letter queue, not the default one.
    env.eventually("a dead letter in the gpu pool", || async {
        env.queue_depth(&gpu_settings.dead_letter_queue).await.0 == 1
    })
    .await;
    let letters = gpu_client.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].worker.as_deref(), Some(gpu_id.as_str()));
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 0);
    on_gpu_pool.stop().await.unwrap();
}
