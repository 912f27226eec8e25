//! The Grafana dashboard `deploy/grafana/rask.json` uses only metric names rask exports: after
//! real work against real servers, every `rask_*` name in a panel's expression is a sample of
//! a worker's `/metrics` or of `rask dashboard`'s `/metrics` (the cluster gauges), so a renamed
//! or dropped metric fails here. The work includes a retry and a redelivery (a task that kills
//! its worker) and a message that is not a task (dead-lettered); the new counters and the
//! cluster gauges hold the values it left.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rask::{RetryPolicy, TaskOptions};
use rask_common::broker;
use rask_tests::dashboard::spawn_dashboard;
use rask_tests::tasks::counted;
use rask_tests::{http_get, metric, TestEnv, PATIENCE};

/// No call of [`counted`] aborts its worker.
const NO_ABORT: u64 = u64::MAX;

/// The Grafana dashboard, as shipped.
const DASHBOARD: &str = include_str!("../../deploy/grafana/rask.json");

/// Every `rask_…` metric name in `expr` (a PromQL expression).
fn metric_names(expr: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rask_") {
        let preceded = rest[..at].chars().next_back().is_some_and(is_name);
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The sample names of the OpenMetrics text `metrics`: those of its samples (before `{` or the
/// value), and those its `# TYPE` lines declare (a family whose labels have no series yet, e.g.
/// retries on a worker that retried nothing): `_total` of a counter, `_bucket`, `_sum` and
/// `_count` of a histogram, the name itself otherwise.
fn sample_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines().filter(|l| !l.is_empty()) {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            match kind {
                "counter" => names.extend([format!("{name}_total")]),
                "histogram" => {
                    names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")))
                }
                _ => names.extend([name.to_owned()]),
            }
        } else if !line.starts_with('#') {
            names.extend(line.split(['{', ' ']).next().map(str::to_owned));
        }
    }
    names
}

#[test]
fn names_are_read_from_expressions() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (le) (rate(rask_task_duration_seconds_bucket{x="rask_no"}[5m]))) / my_rask_other"#
        ),
        ["rask_task_duration_seconds_bucket", "rask_no"]
    );
    let text = "# TYPE rask_a counter\nrask_a_total{f=\"x\"} 1\n# TYPE rask_h histogram\n\
                # TYPE rask_r counter\nrask_b 2\n# EOF\n";
    let expected = [
        "rask_a_total",
        "rask_h_bucket",
        "rask_h_sum",
        "rask_h_count",
        "rask_r_total",
        "rask_b",
    ];
    assert_eq!(sample_names(text), expected.map(String::from).into());
}

#[tokio::test]
async fn every_metric_of_the_grafana_dashboard_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for title in [
        "Throughput",
        "Failures and retries",
        "Queue depth",
        "Redeliveries",
        "Dead letters",
        "Event lag",
        "Worker memory",
        "Worker CPU",
    ] {
        assert!(titles.contains(&title), "no panel {title}: {titles:?}");
    }
    let used: BTreeSet<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .flat_map(|t| metric_names(t["expr"].as_str().expect("an expression")))
        .collect();

    let mut env = TestEnv::new("grafana").await;
    env.settings.events = true;
    let program = Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
    let _workers = env.spawn_program_with(
        program,
        2,
        &[
            ("RASK_HEARTBEAT_INTERVAL", "300ms"),
            ("RASK_SHUTDOWN_GRACE", "100ms"),
        ],
    );
    env.status_when("both workers registered", |s| {
        s["workers"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    // Successes, a failure, a retry, then a task that kills the worker running it, so that the
    // other one gets it redelivered (nothing else is in flight by then).
    let input: String = (0..20).map(|i| format!("[{i}]\n")).collect();
    let out = env.rask(&["map", "inc"], &input).await;
    assert!(out.status.success(), "{out:?}");
    let out = env
        .rask(&["submit", "fail", r#""grafana failure""#], "")
        .await;
    assert_eq!(out.status.code(), Some(1));
    let client = env.client().await;
    let (url, prefix) = (
        env.settings.redis_url.clone(),
        env.settings.key_prefix.clone(),
    );
    let policy = RetryPolicy::new(2).backoff(Duration::from_millis(20), Duration::from_millis(50));
    let retried = client
        .submit_with(
            counted,
            (url.clone(), prefix.clone(), 1, 1, NO_ABORT),
            &TaskOptions::new().retry(policy),
        )
        .await
        .unwrap();
    assert_eq!(retried.result_within(PATIENCE).await.unwrap(), 17);
    let killer = client
        .submit(counted, (url, prefix, 2, 0, 2))
        .await
        .unwrap();
    assert_eq!(killer.result_within(PATIENCE).await.unwrap(), 27);
    let status = env
        .status_when("the killed worker gone, the other with its usage", |s| {
            s["workers"].as_array().map(Vec::len) == Some(1)
                && s["workers"][0]["usage"]["resident_bytes"].as_u64() > Some(1 << 20)
        })
        .await;
    let worker = &status["workers"][0];
    let worker_address = worker["metrics_addr"].as_str().unwrap();
    // A message that is not a task: the worker left dead-letters it.
    let connection = broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            env.settings.exchange.as_str().into(),
            env.settings.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"not a task",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let dead_lettered = r#"rask_dead_lettered_total{cause="bad_message"}"#;
    env.eventually("the message dead-lettered", || async {
        metric(&http_get(worker_address, "/metrics").await.1, dead_lettered) == 1.0
    })
    .await;
    let (code, worker_metrics) = http_get(worker_address, "/metrics").await;
    assert_eq!(code, 200);
    let (_dashboard, address) = spawn_dashboard(&env).await;
    let (code, cluster_metrics) = http_get(&address, "/metrics").await;
    assert_eq!(code, 200, "{cluster_metrics}");

    let exported: BTreeSet<String> = sample_names(&worker_metrics)
        .union(&sample_names(&cluster_metrics))
        .cloned()
        .collect();
    for name in [
        "rask_queue_messages_ready",
        "rask_redeliveries_total",
        "rask_dead_lettered_total",
        "rask_event_lag_seconds",
        "rask_worker_resident_memory_bytes",
        "rask_worker_cpu_seconds_total",
        "rask_tasks_succeeded_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/grafana/rask.json but not exported: {missing:?}\nworker:\n{worker_metrics}\ncluster:\n{cluster_metrics}"
    );

    // The values the work left.
    assert_eq!(metric(&worker_metrics, "rask_redeliveries_total"), 1.0);
    let id = worker["id"].as_str().unwrap();
    let s = &env.settings;
    let queue = |name: &str, role: &str| {
        format!(r#"rask_queue_consumers{{queue="{name}",pool="default",role="{role}"}}"#)
    };
    assert_eq!(metric(&cluster_metrics, &queue(&s.queue, "tasks")), 1.0);
    assert_eq!(
        metric(
            &cluster_metrics,
            &queue(&s.dead_letter_queue, "dead_letter")
        ),
        0.0
    );
    let held = format!(
        r#"rask_queue_messages_ready{{queue="{}",pool="default",role="dead_letter"}}"#,
        s.dead_letter_queue
    );
    assert_eq!(metric(&cluster_metrics, &held), 1.0, "{cluster_metrics}");
    assert_eq!(
        metric(
            &worker_metrics,
            r#"rask_dead_lettered_total{cause="delivery_limit"}"#
        ),
        0.0
    );
    let ready = format!(
        r#"rask_queue_messages_ready{{queue="{}",pool="default",role="tasks"}}"#,
        s.queue
    );
    assert!(
        cluster_metrics.contains(&format!("{ready} 0")),
        "{cluster_metrics}"
    );
    assert_eq!(
        metric(&cluster_metrics, r#"rask_live_workers{pool="default"}"#),
        1.0
    );
    let memory = metric(
        &cluster_metrics,
        &format!(r#"rask_worker_resident_memory_bytes{{worker="{id}"}}"#),
    );
    assert!(memory > f64::from(1 << 20), "{memory} bytes");
    assert!(metric(&cluster_metrics, "rask_event_stream_entries") >= 1.0);
    let lag = metric(&cluster_metrics, "rask_event_lag_seconds");
    assert!((0.0..120.0).contains(&lag), "lag {lag} s");
}
