//! The `rask` command line through the built binary, against real servers and worker processes.

use std::process::Output;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rask_tests::TestEnv;

/// Runs `rask ARGS` with the environment's settings, feeding `stdin`.
async fn rask(env: &TestEnv, args: &[&str], stdin: &str) -> Output {
    env.rask(args, stdin).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn submit_prints_the_result_as_json() {
    let env = TestEnv::new("cli-submit").await;
    let _workers = env.spawn_workers(1);
    let out = rask(&env, &["submit", "inc", "41"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42\n");
    let out = rask(&env, &["submit", "sum", "[1, 2, 3.5]"], "").await;
    assert_eq!(stdout(&out), "6.5\n");
    let out = rask(&env, &["submit", "echo", r#"{"a": [1, "b"]}"#], "").await;
    assert_eq!(stdout(&out), "{\"a\":[1,\"b\"]}\n");
}

#[tokio::test]
async fn a_failed_task_prints_its_error_and_exits_non_zero() {
    let env = TestEnv::new("cli-fail").await;
    let _workers = env.spawn_workers(1);
    let out = rask(&env, &["submit", "fail", r#""out of cheese""#], "").await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "null\n");
    assert!(
        stderr(&out).contains("out of cheese") && stderr(&out).contains("fail"),
        "{}",
        stderr(&out)
    );
    let out = rask(&env, &["submit", "inc", "not json"], "").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
}

/// The message that used to abort every stock worker that took it: a batch of no images, each
/// a million pixels square, made `image_stats` allocate 8 TB (issue 15, items 5 and 13).
const HUGE_EMPTY_BATCH: &str = r#"{"id":0,"width":1000000,"height":1000000,"count":0,"pixels":[]}"#;

#[tokio::test]
async fn a_batch_of_huge_images_is_refused_and_the_worker_keeps_serving() {
    let env = TestEnv::new("cli-huge-batch").await;
    let mut workers = env.spawn_workers(1);
    let out = rask(&env, &["submit", "image_stats", HUGE_EMPTY_BATCH], "").await;
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("image_stats")
            && text.contains("got bad arguments")
            && text.contains("1000000x1000000"),
        "a typed error naming the task and the cause: {text}"
    );
    assert!(workers[0].is_running().unwrap(), "the worker survived");
    let out = rask(&env, &["submit", "inc", "41"], "").await;
    assert_eq!(
        stdout(&out),
        "42\n",
        "the same worker serves on: {}",
        stderr(&out)
    );
}

#[tokio::test]
async fn key_only_then_gather_and_release_by_key() {
    let env = TestEnv::new("cli-keys").await;
    let _workers = env.spawn_workers(1);
    let out = rask(&env, &["submit", "add", "2", "3", "--key-only"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim().to_owned();
    assert!(key.starts_with("add-"), "{key}");
    let out = rask(&env, &["gather", &key, "--timeout", "2m"], "").await;
    assert_eq!(stdout(&out), "5\n");
    let out = rask(&env, &["release", &key], "").await;
    assert_eq!(stdout(&out), "1\n");
    let out = rask(&env, &["gather", &key, "--timeout", "200ms"], "").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a released result is gone: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
}

#[tokio::test]
async fn map_prints_results_in_input_order_and_keeps_going_past_failures() {
    let env = TestEnv::new("cli-map").await;
    let _workers = env.spawn_workers(2);
    let input: String = (0..500).map(|i| format!("[{i}]\n")).collect::<String>() + "[\"x\"]\n[7]\n";
    let out = rask(&env, &["map", "inc"], &input).await;
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let mut expected: Vec<String> = (1..=500).map(|i| i.to_string()).collect();
    expected.push("null".into());
    expected.push("8".into());
    assert_eq!(lines, expected);
    assert!(stderr(&out).contains("result 501"), "{}", stderr(&out));

    let file = env.path("args.jsonl");
    std::fs::write(&file, "[1, 2]\n[3, 4]\n").unwrap();
    let out = rask(
        &env,
        &[
            "map",
            "add",
            "--input",
            file.to_str().unwrap(),
            "--keys-only",
        ],
        "",
    )
    .await;
    let keys: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(keys.len(), 2);
    let mut args = vec!["gather"];
    args.extend(keys.iter().map(String::as_str));
    let out = rask(&env, &args, "").await;
    assert_eq!(stdout(&out), "3\n7\n");
}

#[tokio::test]
async fn purge_empties_the_queue_and_results() {
    let mut env = TestEnv::new("cli-purge").await;
    // Two shards, so that tasks wait in both.
    env.settings.queue_shards = 2;
    // No worker: the six tasks stay queued, spread over the shards by key, and one more waits
    // for its countdown in a delay queue.
    let out = rask(
        &env,
        &["map", "inc", "--keys-only"],
        "[1]\n[2]\n[3]\n[4]\n[5]\n[6]\n",
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let later = ["submit", "inc", "7", "--countdown", "1h", "--key-only"];
    let out = rask(&env, &later, "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shards = env.settings.task_queues();
    let mut queued = Vec::new();
    for shard in &shards {
        queued.push(env.queue_depth(shard).await.0);
    }
    assert!(
        queued.iter().all(|n| *n > 0) && queued.iter().sum::<u32>() == 6,
        "both shards hold tasks: {queued:?}"
    );
    // An hour's wait starts in the ladder level of its highest bit.
    let delay_queue = rask_common::delay::level_name(&env.settings, 3_600_000u64.ilog2());
    assert_eq!(env.queue_depth(&delay_queue).await.0, 1);
    // And two stored results.
    let client = env.client().await;
    let stored = client.scatter(["a", "b"]).await.unwrap();
    let keys: Vec<_> = stored.iter().map(|f| f.key().clone()).collect();
    let store = rask_common::Store::connect(&env.settings).await.unwrap();
    assert!(store
        .get_outcomes(&keys)
        .await
        .unwrap()
        .iter()
        .all(Option::is_some));

    let out = rask(&env, &["purge"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("purged 7 queued task(s) and 2 stored result(s)"),
        "{text}"
    );
    let per_shard: Vec<String> = shards
        .iter()
        .zip(&queued)
        .map(|(shard, n)| format!("{shard} {n}"))
        .collect();
    assert!(
        text.contains(&format!("task queues: {}", per_shard.join(", "))),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "delay queues: {}, holding 1 delayed task(s)",
            rask_common::delay::LEVELS
        )),
        "{text}"
    );
    for shard in &shards {
        assert_eq!(env.queue_depth(shard).await.0, 0, "{shard} is empty");
    }
    assert_eq!(env.queue_depth(&delay_queue).await.0, 0, "nothing waits");
    assert!(
        store
            .get_outcomes(&keys)
            .await
            .unwrap()
            .iter()
            .all(Option::is_none),
        "no result is left"
    );
}

#[tokio::test]
async fn local_up_status_demo_down() {
    let port = || rask::local::free_port().unwrap();
    let (amqp, dist, redis) = (port(), port(), port());
    // Plain default settings, pointed at the ports of the cluster this test starts.
    let mut env = TestEnv::new("cli-local").await;
    env.settings = rask::Settings {
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
        redis_url: format!("redis://127.0.0.1:{redis}/"),
        ..rask::Settings::default()
    };
    let dir = env.path("cluster");
    let dir = dir.to_str().unwrap();
    let (amqp, dist, redis) = (amqp.to_string(), dist.to_string(), redis.to_string());
    let up = rask(
        &env,
        &[
            "local",
            "up",
            "--workers",
            "2",
            "--pool",
            "gpu:1:gpu=2",
            "--dir",
            dir,
            "--amqp-port",
            &amqp,
            "--dist-port",
            &dist,
            "--redis-port",
            &redis,
        ],
        "",
    )
    .await;
    assert!(up.status.success(), "{}", stderr(&up));

    let status = rask(&env, &["local", "status", "--dir", dir], "").await;
    let text = stdout(&status);
    assert_eq!(text.matches("running").count(), 5, "{text}");
    // The two plain workers and the one of pool gpu, each line with its pools.
    assert_eq!(text.matches("pools default\n").count(), 2, "{text}");
    assert_eq!(text.matches("pools gpu\n").count(), 1, "{text}");
    let submitted = rask(&env, &["submit", "--pool", "gpu", "inc", "41"], "").await;
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    assert_eq!(stdout(&submitted), "42\n");
    let mapped = rask(&env, &["map", "--pool", "gpu", "inc"], "[1]\n[2]\n").await;
    assert!(mapped.status.success(), "{}", stderr(&mapped));
    assert_eq!(stdout(&mapped), "2\n3\n");
    let json = rask(&env, &["status", "--json"], "").await;
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    let pools: Vec<&serde_json::Value> = json["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| &w["pools"])
        .collect();
    assert_eq!(pools.len(), 3, "{json}");
    assert_eq!(
        pools
            .iter()
            .filter(|p| **p == &serde_json::json!(["gpu"]))
            .count(),
        1,
        "{json}"
    );

    assert!(
        text.contains(&format!("127.0.0.1:{amqp}")) && text.contains(&format!("127.0.0.1:{redis}")),
        "{text}"
    );

    // A worker killed outright (as the kernel's OOM killer or an aborted allocation would) is
    // replaced by its supervisor, and the status says so.
    let workers = worker_pids(&text);
    assert_eq!(workers.len(), 3, "{text}");
    let supervisor = text
        .lines()
        .find_map(|line| line.strip_prefix("supervisor pid "))
        .and_then(|rest| rest.split(':').next())
        .and_then(|pid| pid.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("a supervisor line: {text}"));
    kill(Pid::from_raw(workers[0]), Signal::SIGKILL).expect("the worker can be killed");
    let replaced = |text: &str| {
        let pids = worker_pids(text);
        text.matches("running").count() == 5 && pids.len() == 3 && !pids.contains(&workers[0])
    };
    env.eventually("the killed worker replaced", || async {
        replaced(&stdout(
            &rask(&env, &["local", "status", "--dir", dir], "").await,
        ))
    })
    .await;
    let restarted = stdout(&rask(&env, &["local", "status", "--dir", dir], "").await);
    assert!(replaced(&restarted), "{restarted}");
    assert!(
        restarted.contains("worker 1: restarted 1 time(s); last exit: killed by signal SIGKILL"),
        "{restarted}"
    );
    let all_workers = [workers.clone(), worker_pids(&restarted)].concat();

    let demo_args = [
        "demo",
        "--batches",
        "16",
        "--images",
        "4",
        "--size",
        "32",
        "--timeout",
        "60s",
    ];
    let demo = rask(&env, &demo_args, "").await;
    assert!(demo.status.success(), "{}", stderr(&demo));
    assert!(
        stdout(&demo).contains("16 batches, 64 images"),
        "{}",
        stdout(&demo)
    );
    // The analysis ran on the gpu worker only, each of the three workers built its state once.
    assert!(
        stdout(&demo).contains("image analysis on pool gpu with gpu=1 per task")
            && stdout(&demo).contains("ran: 16 on workers of pool gpu\n"),
        "{}",
        stdout(&demo)
    );
    assert!(
        stdout(&demo).contains("built 3 time(s) by 3 of 3 live worker(s)"),
        "{}",
        stdout(&demo)
    );
    // Two groups of eight batches: the final compute summarises only the second one.
    assert!(
        stdout(&demo)
            .contains("reused by it: the workers ran image_summary 1 time(s) for 2 group(s)"),
        "the final compute reuses the persisted group summary: {}",
        stdout(&demo)
    );
    // Again on the same cluster: the content keys find every summary stored by the first run.
    let again = rask(&env, &demo_args, "").await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("every group's summary was stored already (an earlier run's, reused by its content key): the workers ran image_summary 0 time(s) for 2 group(s)"),
        "{}",
        stdout(&again)
    );

    // No worker serves the pool asked for: the demo says how to start one and fails.
    let nowhere = rask(&env, &["demo", "--batches", "1", "--pool", "tpu"], "").await;
    assert!(!nowhere.status.success(), "{}", stdout(&nowhere));
    assert!(
        stderr(&nowhere).contains("no live worker serves pool tpu")
            && stderr(&nowhere).contains("`rask local up --pool tpu:1:gpu=2`")
            && stderr(&nowhere).contains("`rask demo --pool default`"),
        "{}",
        stderr(&nowhere)
    );

    let down = rask(&env, &["local", "down", "--dir", dir], "").await;
    assert!(down.status.success(), "{}", stderr(&down));
    // Nothing is left behind: neither the supervisor nor any worker it started.
    for pid in all_workers.into_iter().chain([supervisor]) {
        assert!(
            !runs(pid),
            "pid {pid} still runs after down: {}",
            stdout(&down)
        );
    }
    let status = rask(&env, &["local", "status", "--dir", dir], "").await;
    assert_eq!(
        status.status.code(),
        Some(2),
        "nothing recorded after down: {}",
        stdout(&status)
    );
}

/// Whether process `pid` exists and has not exited (a zombie waiting to be reaped has).
fn runs(pid: i32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            Some(state == "Z")
        })
        .unwrap_or(false);
    kill(Pid::from_raw(pid), None).is_ok() && !zombie
}

/// The pids of the `worker` lines of `rask local status`.
fn worker_pids(status: &str) -> Vec<i32> {
    status
        .lines()
        .filter(|line| line.starts_with("worker "))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn bench_smoke_runs_every_workload() {
    // `rask bench` starts a private cluster of its own, so the environment's servers go unused;
    // the smoke sizes only show that every workload and its floor still run, never how fast.
    let env = TestEnv::new("cli-bench").await;
    let out = rask(&env, &["bench", "--smoke", "--json"], "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let workloads = ["throughput", "latency", "dag", "payload", "scale", "fine"];
    for workload in workloads {
        for system in ["rask", "floor"] {
            let line = format!("RESULT system={system} workload={workload} ");
            assert!(text.contains(&line), "no `{line}` in:\n{text}");
        }
    }
    assert!(text.contains("RESULT system=rask workload=idle "), "{text}");
    let last = text.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(
        json["workloads"].as_array().map(Vec::len),
        Some(workloads.len()),
        "{json}"
    );
    assert_eq!(json["files"], "temp dir", "{json}");
    assert_eq!(json["blobs"], "off", "{json}");
    assert_eq!(json["runtime_threads"], 0, "{json}");
}

#[tokio::test]
async fn bench_in_memory_runs_the_private_cluster_in_shared_memory_and_removes_it() {
    let env = TestEnv::new("cli-bench-memory").await;
    let args = [
        "bench",
        "--smoke",
        "--json",
        "--workloads",
        "payload",
        "--blobs",
        "--in-memory",
        "--runtime-threads",
        "1",
    ];
    let out = rask(&env, &args, "").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (text, log) = (stdout(&out), stderr(&out));
    for system in ["rask", "floor"] {
        let line = format!("RESULT system={system} workload=payload ");
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
    let dir = log
        .lines()
        .find_map(|line| line.strip_prefix("bench: the private cluster's files are in "))
        .unwrap_or_else(|| panic!("the run names no directory:\n{log}"));
    assert!(dir.starts_with("/dev/shm/"), "{dir}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
    let last = text.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    assert_eq!(json["files"], "shared memory", "{json}");
    assert_eq!(json["blobs"], "on", "{json}");
    assert_eq!(json["runtime_threads"], 1, "{json}");
    assert!(
        log.contains("bench: each worker's runtime has 1 thread(s)"),
        "{log}"
    );
}
