//! Resources against real servers: a worker runs a task needing a resource only while it has a
//! slot of it free, and each run holds a slot of its own; tasks needing nothing run while the
//! resource is exhausted; a task needing more than any live worker has fails with
//! `ResourceUnavailable` naming the resource; a worker without the resource hands the task on
//! to one that has it; `rask status` shows each worker's resources and what is in use.

use std::collections::BTreeSet;
use std::time::Duration;

use rask::builtins::{fail, inc, sleep_ms};
use rask::{FailureKind, Monitor, Settings, TaskOptions};
use rask_tests::tasks::{gpu_tree, hold_slot, registry};
use rask_tests::{failure, read_counter, TestEnv, PATIENCE};
use rask_worker::Worker;
use redis::AsyncCommands as _;
use tokio_util::sync::CancellationToken;

/// A worker inside the test process with `settings`, stopped when the token is cancelled.
struct InProcess {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<rask_worker::Result<()>>,
}

rask::task! {
    /// Panics.
    fn explode(text: String) -> i64 { panic!("boom: {text}") }
}

impl InProcess {
    fn start(settings: Settings) -> Self {
        let stop = CancellationToken::new();
        let worker = Worker::new(settings, registry().with::<explode>());
        let task = tokio::spawn(worker.run(stop.clone().cancelled_owned()));
        InProcess { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// `env`'s settings for a worker with `concurrency` and `resources`, heartbeating quickly.
fn worker_settings(env: &TestEnv, concurrency: usize, resources: &str) -> Settings {
    Settings {
        concurrency,
        resources: resources.parse().unwrap(),
        heartbeat_interval: Duration::from_millis(200),
        ..env.settings.clone()
    }
}

/// The test's key prefix for [`hold_slot`]'s counters.
fn prefix(env: &TestEnv, name: &str) -> String {
    format!("{}:{name}", env.settings.key_prefix)
}

fn gpus(n: u64) -> TaskOptions {
    TaskOptions::new().resources([("gpu", n)])
}

#[tokio::test]
async fn two_gpus_run_at_most_two_tasks_at_once_each_on_its_own_slot() {
    let env = TestEnv::new("resources-two").await;
    let worker = InProcess::start(worker_settings(&env, 6, "gpu=2"));
    let client = env.client().await;
    let p = prefix(&env, "two");
    let redis = env.settings.redis_url.clone();
    let args = (0..20).map(|_| (redis.clone(), p.clone(), 20));
    let futures = client.map_with(hold_slot, args, &gpus(1)).await.unwrap();
    let slots = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    let peak = read_counter(&redis, &format!("{p}:peak")).await;
    assert!(
        (1..=2).contains(&peak),
        "{peak} tasks ran at once on 2 GPUs"
    );
    let shared = read_counter(&redis, &format!("{p}:shared")).await;
    assert_eq!(shared, 0, "two runs held the same slot at once");
    assert!(slots.iter().all(|s| s.len() == 1), "{slots:?}");
    let seen: BTreeSet<u32> = slots.iter().flatten().copied().collect();
    // Slot 1 is only handed out while slot 0 is held: two ran at once.
    assert_eq!(seen, BTreeSet::from([0, 1]), "{slots:?}");
    client.close().await.unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn tasks_needing_nothing_run_while_the_resource_is_exhausted() {
    let env = TestEnv::new("resources-exhausted").await;
    let worker = InProcess::start(worker_settings(&env, 2, "gpu=1"));
    let client = env.client().await;
    let p = prefix(&env, "exhausted");
    let redis = env.settings.redis_url.clone();
    // Three tasks for one GPU, each holding it until the gate opens: one runs, two wait.
    let args = (0..3).map(|_| (redis.clone(), p.clone(), 600_000));
    let held = client.map_with(hold_slot, args, &gpus(1)).await.unwrap();
    let running = format!("{p}:running");
    env.eventually("a task holding the GPU", || async {
        read_counter(&redis, &running).await == 1
    })
    .await;
    // Those waiting hold no concurrency permit: tasks needing nothing still run.
    let plain = client.map(inc, (0..10).map(|i| (i,))).await.unwrap();
    let values = client.gather(&plain).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=10).collect::<Vec<i64>>());
    assert_eq!(
        read_counter(&redis, &running).await,
        1,
        "the GPU is still held"
    );

    // `rask status` shows the resource in use.
    let status = env
        .status_when("the GPU in use", |status| {
            status["workers"].as_array().is_some_and(|workers| {
                workers
                    .iter()
                    .any(|w| w["resources"]["gpu"] == 1 && w["resources_in_use"]["gpu"] == 1)
            })
        })
        .await;
    assert_eq!(status["workers"].as_array().unwrap().len(), 1);
    let screen = env.rask(&["status"], "").await;
    let screen = String::from_utf8_lossy(&screen.stdout);
    assert!(screen.contains("resources in use: gpu 1/1"), "{screen}");

    redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
        .set::<_, _, ()>(format!("{p}:gate"), 1)
        .await
        .unwrap();
    let slots = client.gather(&held).timeout(PATIENCE).await.unwrap();
    assert_eq!(slots, vec![vec![0]; 3]);
    assert_eq!(read_counter(&redis, &format!("{p}:peak")).await, 1);
    env.status_when("the GPU free again", |status| {
        status["workers"][0]["resources_in_use"]
            .as_object()
            .is_some_and(|in_use| in_use.is_empty())
    })
    .await;
    client.close().await.unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn a_task_needing_more_than_any_worker_has_fails_naming_the_resource() {
    let env = TestEnv::new("resources-unavailable").await;
    let worker = InProcess::start(worker_settings(&env, 2, "gpu=2,mem=1GiB"));
    let client = env.client().await;
    let too_many = client.submit_with(inc, (1,), &gpus(3)).await.unwrap();
    let f = failure(too_many.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::ResourceUnavailable, "{f}");
    assert!(
        f.message.contains("needs gpu=3") && f.message.contains("has is gpu=2"),
        "{f}"
    );
    let unknown = client
        .submit_with(inc, (1,), &TaskOptions::new().resources([("tpu", 1)]))
        .await
        .unwrap();
    let f = failure(unknown.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::ResourceUnavailable, "{f}");
    assert!(f.message.contains("needs tpu=1"), "{f}");
    // The worker goes on serving what fits.
    let fits = client.submit_with(inc, (41,), &gpus(2)).await.unwrap();
    assert_eq!(fits.result_within(PATIENCE).await.unwrap(), 42);

    // The CLI: the failure on stderr, exit code 1; a bad flag is refused before submitting.
    let out = env
        .rask(&["submit", "inc", "1", "--resources", "mem=2GiB"], "")
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("needs resources no live worker has") && stderr.contains("mem=2GiB"),
        "{stderr}"
    );
    let out = env
        .rask(&["submit", "inc", "1", "--resources", "gpu=1GB"], "")
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("GB are not accepted"), "{stderr}");
    let out = env
        .rask(&["map", "inc", "--resources", "gpu=1"], "[1]\n[2]\n")
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n3\n");
    client.close().await.unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_without_the_resource_hands_the_task_to_one_that_has_it() {
    let env = TestEnv::new("resources-handoff").await;
    // The GPU worker, a process given its GPU by `RASK_RESOURCES`, takes one delivery at a
    // time, so the plain worker receives most tasks.
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    let mut gpu_worker = env.spawn_program_with(
        program,
        1,
        &[
            ("RASK_RESOURCES", "gpu=1"),
            ("RASK_CONCURRENCY", "1"),
            ("RASK_PREFETCH", "1"),
            ("RASK_HEARTBEAT_INTERVAL", "200ms"),
        ],
    );
    // Consuming, so its queue exists (its registry entry comes earlier, once it can answer
    // broadcasts).
    gpu_worker[0]
        .wait_ready(PATIENCE)
        .await
        .expect("the GPU worker consumes");
    let monitor = Monitor::connect(env.settings.clone()).await.unwrap();
    env.eventually("the GPU worker registered", || async {
        let workers = monitor.workers().await.unwrap();
        workers.iter().any(|w| w.resources.get("gpu") == 1)
    })
    .await;
    let plain_worker = InProcess::start(worker_settings(&env, 4, ""));
    env.eventually("both workers consuming", || async {
        env.queue_depth(&env.settings.queue).await.1 == 2
    })
    .await;
    let client = env.client().await;
    let p = prefix(&env, "handoff");
    let redis = env.settings.redis_url.clone();
    let args = (0..6).map(|_| (redis.clone(), p.clone(), 10));
    let futures = client.map_with(hold_slot, args, &gpus(1)).await.unwrap();
    let slots = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(slots, vec![vec![0]; 6], "all ran on the GPU worker");
    // Handed on, not failed deliveries: nothing was dead-lettered.
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 0);
    client.close().await.unwrap();
    plain_worker.stop().await;
    drop(gpu_worker);
}

#[tokio::test]
async fn slots_are_given_back_whichever_way_a_run_ends() {
    let env = TestEnv::new("resources-every-path").await;
    let worker = InProcess::start(worker_settings(&env, 2, "gpu=1"));
    let client = env.client().await;
    let gpu = gpus(1);
    // An error, a panic and a time limit, each holding the only GPU in turn.
    let failed = client
        .submit_with(fail, ("no".into(),), &gpu)
        .await
        .unwrap();
    let panicked = client
        .submit_with(explode, ("x".into(),), &gpu)
        .await
        .unwrap();
    let limited = gpu.clone().time_limit(Duration::from_millis(100));
    let timed_out = client
        .submit_with(sleep_ms, (600_000,), &limited)
        .await
        .unwrap();
    let kind = |e| failure(e).kind;
    assert_eq!(
        kind(failed.result_within(PATIENCE).await.unwrap_err()),
        FailureKind::Failed
    );
    assert_eq!(
        kind(panicked.result_within(PATIENCE).await.unwrap_err()),
        FailureKind::Panicked
    );
    assert_eq!(
        kind(timed_out.result_within(PATIENCE).await.unwrap_err()),
        FailureKind::TimedOut
    );
    // Had any kept the GPU, this would wait for it forever.
    let p = prefix(&env, "every-path");
    let after = client
        .submit_with(hold_slot, (env.settings.redis_url.clone(), p, 1), &gpu)
        .await
        .unwrap();
    assert_eq!(
        after.result_within(Duration::from_secs(30)).await.unwrap(),
        vec![0]
    );
    client.close().await.unwrap();
    worker.stop().await;
}

#[tokio::test]
async fn a_task_waiting_for_tasks_it_launched_lends_them_its_only_gpu() {
    let env = TestEnv::new("res-nested").await;
    // One GPU and one slot: without lending, the root would hold the GPU its children need.
    let worker = InProcess::start(worker_settings(&env, 1, "gpu=1"));
    let client = env.client().await;
    let root = client
        .submit_with(gpu_tree, (3, 1), &gpus(1))
        .await
        .unwrap();
    let sum = tokio::time::timeout(PATIENCE, root.result())
        .await
        .expect("the tree completes")
        .unwrap();
    assert_eq!(sum, (8..16).sum::<u64>(), "the sum of the leaves' labels");
    worker.stop().await;
}
