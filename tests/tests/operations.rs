//! Operating a cluster of real worker processes: `rask run` on every worker, the worker registry
//! behind `rask status`, each worker's Prometheus `/metrics` and `/health`, and the library's
//! progress stream.

use std::collections::BTreeSet;
use std::process::Output;

use rask_tests::{http_get, metric, TestEnv, PATIENCE};
use serde_json::Value;

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn worker_ids(status: &Value) -> BTreeSet<String> {
    status["workers"]
        .as_array()
        .expect("workers is a list")
        .iter()
        .map(|w| w["id"].as_str().expect("a worker id").to_owned())
        .collect()
}

fn keys(object: &Value) -> BTreeSet<String> {
    object
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn run_reaches_every_worker_and_a_killed_worker_drops_out() {
    let env = TestEnv::new("ops-run").await;
    // Entries live 3 × 2 s: long enough that the killed worker is still registered (and so
    // reported missing) when `run` starts right after the kill.
    let mut workers = env.spawn_workers_with(3, &[("RASK_HEARTBEAT_INTERVAL", "2s")]);
    let status = env
        .status_when("3 registered workers", |s| worker_ids(s).len() == 3)
        .await;
    let ids = worker_ids(&status);

    let out = env.rask(&["run", "ping", "--timeout", "30s"], "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(keys(&report["answers"]), ids);
    assert!(report["answers"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v == "pong"));
    assert_eq!(report["missing"], serde_json::json!([]));

    let out = env.rask(&["run", "info", "--timeout", "30s"], "").await;
    let report = json(&out);
    assert_eq!(keys(&report["answers"]), ids);
    let pids: BTreeSet<u64> = workers.iter().map(|w| u64::from(w.pid())).collect();
    for (id, info) in report["answers"].as_object().unwrap() {
        assert_eq!(info["id"], id.as_str());
        assert!(pids.contains(&info["pid"].as_u64().unwrap()), "{info}");
        assert_eq!(info["concurrency"], 2);
        assert!(info["functions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("inc")));
        assert!(
            info["uptime"].is_string() && info["host"].is_string() && info["version"].is_string()
        );
    }

    // A registered function runs on every worker too; an unknown one fails on each, by id.
    let out = env.rask(&["run", "add", "2", "3"], "").await;
    assert_eq!(json(&out)["answers"].as_object().unwrap().len(), 3);
    let out = env.rask(&["run", "no_such_function"], "").await;
    assert_eq!(out.status.code(), Some(1));
    let report = json(&out);
    assert_eq!(keys(&report["failed"]), ids);
    assert!(report["failed"]
        .as_object()
        .unwrap()
        .values()
        .all(|f| f["kind"] == "UnknownTask"));

    let mut victim = workers.remove(0);
    let victim_pid = u64::from(victim.pid());
    let victim_id = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"].as_u64() == Some(victim_pid))
        .expect("the victim is registered")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    victim.kill().await.expect("SIGKILL");

    let out = env.rask(&["run", "ping", "--timeout", "1s"], "").await;
    assert_eq!(out.status.code(), Some(1), "a missing worker fails the run");
    let report = json(&out);
    assert!(!keys(&report["answers"]).contains(&victim_id));
    assert_eq!(report["answers"].as_object().unwrap().len(), 2);
    assert_eq!(report["missing"], serde_json::json!([victim_id]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));

    let status = env
        .status_when("the killed worker to leave the registry", |s| {
            !worker_ids(s).contains(&victim_id)
        })
        .await;
    assert_eq!(worker_ids(&status).len(), 2);
    let out = env.rask(&["run", "ping"], "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    assert_eq!(report["answers"].as_object().unwrap().len(), 2);
    assert_eq!(report["missing"], serde_json::json!([]));
}

#[tokio::test]
async fn status_json_lists_queues_and_live_workers() {
    let env = TestEnv::new("ops-status").await;
    let _workers = env.spawn_workers_with(2, &[("RASK_HEARTBEAT_INTERVAL", "300ms")]);
    let status = env
        .status_when("2 workers consuming", |s| {
            worker_ids(s).len() == 2 && s["queues"][0]["consumers"] == 2
        })
        .await;
    let queues = status["queues"].as_array().expect("queues is a list");
    assert_eq!(queues[0]["name"], env.settings.queue.as_str());
    assert_eq!(queues[0]["role"], "tasks");
    assert_eq!(queues[0]["messages"], 0);
    assert_eq!(queues[1]["name"], env.settings.dead_letter_queue.as_str());
    assert_eq!(queues[1]["role"], "dead_letter");
    assert_eq!(status["dead_letters"], 0);
    for worker in status["workers"].as_array().unwrap() {
        for field in ["id", "host", "started_at", "updated_at", "version", "queue"] {
            assert!(worker[field].is_string(), "{field} in {worker}");
        }
        assert!(worker["pid"].is_u64());
        assert_eq!(worker["concurrency"], 2);
        assert_eq!(worker["queue"], env.settings.queue.as_str());
        assert!(worker["functions"]
            .as_array()
            .unwrap()
            .contains(&Value::from("sleep_ms")));
        for counter in ["started", "succeeded", "failed", "retried", "in_flight"] {
            assert!(
                worker["counters"][counter].is_u64(),
                "{counter} in {worker}"
            );
        }
        assert!(worker["metrics_addr"].is_string());
    }
    assert!(status["tasks_per_second"].is_number());
    assert!(status["totals"]["succeeded"].is_u64());
    assert!(status["recent_errors"].is_array());

    // The screen names the workers and the queue.
    let out = env.rask(&["status"], "").await;
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains(&env.settings.queue), "{screen}");
    for id in worker_ids(&status) {
        assert!(screen.contains(&id), "{screen}");
    }
}

#[tokio::test]
async fn metrics_and_status_counters_move_with_real_work() {
    let env = TestEnv::new("ops-metrics").await;
    let _worker = env.spawn_workers_with(1, &[("RASK_HEARTBEAT_INTERVAL", "300ms")]);
    let status = env
        .status_when("1 registered worker", |s| worker_ids(s).len() == 1)
        .await;
    let address = status["workers"][0]["metrics_addr"]
        .as_str()
        .expect("the worker serves metrics")
        .to_owned();

    // Registered (its operations side is up) may come before consuming: healthy once both.
    env.eventually("the worker to consume (/health 200)", || async {
        http_get(&address, "/health").await.0 == 200
    })
    .await;
    let (code, health) = http_get(&address, "/health").await;
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"ok\":true"), "{health}");

    let (code, before) = http_get(&address, "/metrics").await;
    assert_eq!(code, 200);
    let succeeded = r#"rask_tasks_succeeded_total{function="inc"}"#;
    let failed = r#"rask_tasks_failed_total{function="fail",kind="Failed"}"#;
    let started = r#"rask_tasks_started_total{function="inc"}"#;
    assert_eq!(metric(&before, succeeded), 0.0);

    let input: String = (0..20).map(|i| format!("[{i}]\n")).collect();
    let out = env.rask(&["map", "inc"], &input).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.rask(&["submit", "fail", r#""on purpose""#], "").await;
    assert_eq!(out.status.code(), Some(1));

    let (_, after) = http_get(&address, "/metrics").await;
    assert_eq!(metric(&after, started), 20.0, "{after}");
    assert_eq!(metric(&after, succeeded), 20.0, "{after}");
    assert_eq!(metric(&after, failed), 1.0, "{after}");
    assert_eq!(
        metric(
            &after,
            r#"rask_task_duration_seconds_count{function="inc"}"#
        ),
        20.0,
        "{after}"
    );
    assert_eq!(metric(&after, "rask_tasks_in_flight"), 0.0, "{after}");
    assert!(after.contains("rask_reconnects_total 0"), "{after}");

    // The registry entry catches up within a heartbeat.
    let status = env
        .status_when("the counters in the registry", |s| {
            s["totals"]["succeeded"] == 20 && s["totals"]["failed"] == 1
        })
        .await;
    let error = &status["recent_errors"][0];
    assert_eq!(error["function"], "fail");
    assert_eq!(error["kind"], "Failed");
    assert_eq!(error["message"], "on purpose");
}

#[tokio::test]
async fn progress_counts_every_future() {
    use futures::StreamExt;
    let env = TestEnv::new("ops-progress").await;
    let _worker = env.spawn_workers(1);
    let client = env.client().await;
    let futures = client
        .map(rask::builtins::inc, (0..10).map(|i| (i,)))
        .await
        .unwrap();
    let seen: Vec<rask::Completed<i64>> = client.progress(&futures).collect().await;
    assert_eq!(seen.len(), 10);
    let last = seen.last().unwrap().progress;
    assert_eq!((last.total, last.done, last.failed), (10, 10, 0));
    let mut indices: Vec<usize> = seen.iter().map(|c| c.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());

    let mut calls = Vec::new();
    let results = client
        .gather_with_progress(&futures, None, |p| calls.push(p.done))
        .await
        .unwrap();
    assert_eq!(calls, (0..=10).collect::<Vec<_>>());
    let values: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_stock_worker_runs_on_the_runtime_threads_its_setting_names() {
    let env = TestEnv::new("runtime-threads").await;
    let _client = env.client().await; // declares the topology
    for threads in ["1", "3"] {
        let mut workers = env.spawn_workers_with(1, &[("RASK_RUNTIME_THREADS", threads)]);
        workers[0].wait_ready(PATIENCE).await.expect("worker ready");
        let log = std::fs::read_to_string(workers[0].log_path()).unwrap();
        let ready = plain(&log)
            .lines()
            .find(|line| line.contains("worker ready"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no ready line:\n{log}"));
        assert!(
            ready.contains(&format!(" runtime_threads={threads} ")),
            "{ready}"
        );
    }
}

/// `text` without its ANSI colour escapes (`ESC [ … m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
