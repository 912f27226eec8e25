//! `rask dashboard` in headless Chromium (Debian's `chromium`, installed by
//! `scripts/install-deps.sh`) against worker processes running real tasks: the page, once its
//! script has fetched `/api/status`, shows the workers, the queue depth and the counts; once it
//! has fetched `/api/events`, the task stream (a row per worker slot) and the progress per
//! function. With `SCREENSHOTS_DIR` set, the screenshot is kept there (docs/).

use rask_tests::dashboard::{chromium, screenshot, spawn_dashboard as dashboard};
use rask_tests::{http_get, TestEnv, PATIENCE};

#[tokio::test]
async fn the_dashboard_shows_workers_queue_depth_and_counts() {
    let env = TestEnv::new("ops-dashboard").await;
    // One task at a time per worker, so that slow tasks beyond two wait in the queue.
    let _workers = env.spawn_workers_with(
        2,
        &[
            ("RASK_HEARTBEAT_INTERVAL", "300ms"),
            ("RASK_CONCURRENCY", "1"),
            ("RASK_PREFETCH", "1"),
            ("RASK_SHUTDOWN_GRACE", "100ms"),
        ],
    );
    let input: String = (0..30).map(|i| format!("[{i}]\n")).collect();
    let out = env.rask(&["map", "inc"], &input).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .rask(&["submit", "fail", r#""dashboard failure""#], "")
        .await;
    assert_eq!(out.status.code(), Some(1));
    let slow: String = (0..6).map(|_| "[60000]\n").collect();
    let out = env.rask(&["map", "sleep_ms", "--keys-only"], &slow).await;
    assert!(out.status.success());
    let status = env
        .status_when("2 workers, 4 waiting tasks and the counts", |s| {
            s["workers"].as_array().map(Vec::len) == Some(2)
                && s["queues"][0]["messages"] == 4
                && s["totals"]["succeeded"] == 30
                && s["totals"]["failed"] == 1
        })
        .await;

    let (_dashboard, address) = dashboard(&env).await;
    let (code, page) = http_get(&address, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("/api/status"), "the page polls the status");
    let url = format!("http://{address}/");
    let dom = chromium(&url, &env.path("profile-status"), &["--dump-dom"]).await;
    assert!(dom.contains(r#"id="workers-count">2<"#), "{dom}");
    assert!(dom.contains(r#"id="queue-depth">4<"#), "{dom}");
    assert!(dom.contains(r#"id="succeeded">30<"#), "{dom}");
    assert!(dom.contains(r#"id="failed">1<"#), "{dom}");
    assert!(dom.contains(r#"id="dead-letters">0<"#), "{dom}");
    assert!(dom.contains("dashboard failure"), "recent errors: {dom}");
    for worker in status["workers"].as_array().unwrap() {
        let id = worker["id"].as_str().unwrap();
        assert!(dom.contains(&format!(r#"data-id="{id}""#)), "{id}: {dom}");
    }
    assert!(dom.contains(&env.settings.queue), "{dom}");
    let updated = dom.find(r#"id="updated""#).expect("the updated line");
    let text = &dom[updated..][dom[updated..].find('>').unwrap() + 1..];
    assert!(
        text.starts_with("updated "),
        "the page fetched its data: {text:.200}"
    );
}

#[tokio::test]
async fn the_dashboard_draws_the_task_stream_and_progress_per_function() {
    let mut env = TestEnv::new("stream-dashboard").await;
    env.settings.events = true;
    let workers = env.spawn_workers_with(
        2,
        &[
            ("RASK_HEARTBEAT_INTERVAL", "300ms"),
            ("RASK_CONCURRENCY", "2"),
            ("RASK_SHUTDOWN_GRACE", "100ms"),
        ],
    );
    let input: String = (0..40).map(|i| format!("[{i}]\n")).collect();
    let out = env.rask(&["map", "inc"], &input).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slow: String = (0..8).map(|i| format!("[{}]\n", 100 + 20 * i)).collect();
    let out = env.rask(&["map", "sleep_ms"], &slow).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failing: String = (0..3)
        .map(|i| format!("[\"stream failure {i}\"]\n"))
        .collect();
    let out = env.rask(&["map", "fail"], &failing).await;
    assert_eq!(out.status.code(), Some(1));
    let client = env.client().await;
    env.eventually("every event recorded", || async {
        client.events(None, None, 1000).await.unwrap().len() >= 2 * 51
    })
    .await;

    let (_dashboard, address) = dashboard(&env).await;
    let url = format!("http://{address}/");
    let dom = chromium(&url, &env.path("profile-dom"), &["--dump-dom"]).await;
    assert!(dom.contains(r#"id="progress-inc-done">40<"#), "{dom}");
    assert!(dom.contains(r#"id="progress-sleep_ms-done">8<"#), "{dom}");
    assert!(dom.contains(r#"id="progress-fail-failed">3<"#), "{dom}");
    assert!(dom.contains(r#"id="progress-inc-queued">0<"#), "{dom}");
    assert!(dom.contains(r#"id="stream-tasks">51<"#), "{dom}");
    // A row per worker slot that ran something: 2 workers of 2 slots.
    let lanes = dom.matches("data-lane=").count();
    assert!((2..=4).contains(&lanes), "{lanes} lanes: {dom}");
    for worker in &workers {
        let id = format!("data-lane=\"{}", worker_id(&dom, worker.pid()));
        assert!(dom.contains(&id), "{id}: {dom}");
    }
    assert_eq!(dom.matches(r#"class="task""#).count(), 51, "{dom}");
    assert!(
        dom.contains("time (seconds before now)"),
        "the axis has its unit"
    );

    let shot = env.path("dashboard.png");
    let flag = format!("--screenshot={}", shot.display());
    chromium(
        &url,
        &env.path("profile-shot"),
        &[&flag, "--window-size=1280,1500", "--hide-scrollbars"],
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        std::fs::write(
            std::path::Path::new(&dir).join("dashboard-task-stream.png"),
            &png,
        )
        .unwrap();
    }
}

/// The id of the worker process `pid` as the page's lanes name it (`host-pid-…`): the lane
/// text that contains the pid.
fn worker_id(dom: &str, pid: u32) -> String {
    let needle = format!("-{pid}-");
    dom.split("data-lane=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find(' ').unwrap_or(rest.len())])
        .find(|id| id.contains(&needle))
        .unwrap_or_else(|| panic!("no lane of worker pid {pid}"))
        .to_owned()
}

/// The `/api/graph` view of `key` on the dashboard at `address`, once it is one.
async fn graph_view(address: &str, key: &str) -> Option<serde_json::Value> {
    let (code, body) = http_get(address, &format!("/api/graph?key={key}")).await;
    (code == 200).then(|| serde_json::from_str(&body).expect("a JSON graph view"))
}

#[tokio::test]
async fn the_dashboard_draws_a_graph_by_key_and_each_workers_memory_and_cpu() {
    use rask::builtins::{add, inc, sleep_ms, sum_ints};
    use rask::{Arg, TaskOptions};

    let mut env = TestEnv::new("graph-dashboard").await;
    env.settings.events = true;
    let workers = env.spawn_workers_with(
        2,
        &[
            ("RASK_HEARTBEAT_INTERVAL", "300ms"),
            ("RASK_CONCURRENCY", "2"),
            ("RASK_SHUTDOWN_GRACE", "100ms"),
        ],
    );
    // A graph with a task in each state: inc(1), inc(2) and their sum succeed; inc(MAX)
    // overflows, so its dependent fails; a sleep runs for 10 minutes while a task waits for
    // it; a task routed to a pool no worker serves stays queued; the output waits for them.
    let a = inc.delayed(1);
    let b = inc.delayed(2);
    let c = add.delayed(&a, &b);
    let overflow = inc.delayed(i64::MAX);
    let d = add.delayed(&c, &overflow);
    let slow = sleep_ms.delayed(600_000);
    let after = inc.delayed(slow.clone().cast::<i64>());
    let idle = inc.delayed(5).with_options(TaskOptions::new().pool("idle"));
    let output = sum_ints.delayed(Arg::list([
        Arg::from(&d),
        Arg::from(&after),
        Arg::from(&idle),
    ]));
    let client = env.client().await;
    client.persist(&output).await.unwrap();
    let expected = [
        (a.key(), "succeeded"),
        (b.key(), "succeeded"),
        (c.key(), "succeeded"),
        (overflow.key(), "failed"),
        (d.key(), "failed"),
        (output.key(), "waiting"),
        (slow.key(), "running"),
        (after.key(), "waiting"),
        (idle.key(), "queued"),
    ];

    let (_dashboard, address) = dashboard(&env).await;
    let key = output.key().as_str();
    let states = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["key"].as_str().unwrap().into(),
                    n["state"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let all_in_place = |v: &serde_json::Value| {
        let states = states(v);
        states.len() == expected.len()
            && expected
                .iter()
                .all(|(k, s)| states.contains(&(k.as_str().to_owned(), (*s).to_owned())))
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let view = loop {
        let view = graph_view(&address, key).await;
        match view {
            Some(view) if all_in_place(&view) => break view,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("gave up waiting for each task's state; last view: {view:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    // Layers: a task is one right of its deepest input.
    let layer = |k: &rask::TaskKey| {
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["key"] == k.as_str())
            .map(|n| n["layer"].as_u64().unwrap())
            .unwrap()
    };
    assert_eq!(
        [
            a.key(),
            c.key(),
            d.key(),
            output.key(),
            slow.key(),
            after.key(),
            idle.key()
        ]
        .map(layer),
        [0, 1, 2, 3, 0, 1, 0]
    );
    assert_eq!(view["truncated"], false);
    let (code, body) = http_get(&address, "/api/graph?key=inc-not-a-graph-task").await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no graph record"), "{body}");

    // Memory and CPU of each worker, from three heartbeats or more.
    env.eventually("three heartbeats of each worker sampled", || async {
        let (_, body) = http_get(&address, "/api/usage").await;
        let usage: serde_json::Value = serde_json::from_str(&body).unwrap();
        usage.as_object().is_some_and(|workers| {
            workers.len() == 2 && workers.values().all(|s| s.as_array().unwrap().len() >= 3)
        })
    })
    .await;

    let url = format!("http://{address}/?graph={key}");
    let dom = chromium(&url, &env.path("profile-graph"), &["--dump-dom"]).await;
    for (state, count) in [
        ("succeeded", 3),
        ("failed", 2),
        ("running", 1),
        ("waiting", 2),
        ("queued", 1),
        ("cancelled", 0),
    ] {
        let shown = format!(r#"id="graph-count-{state}">{count}<"#);
        assert!(dom.contains(&shown), "{shown}: {dom}");
    }
    for (k, state) in expected {
        let node = format!(r#"data-key="{k}" data-state="{state}""#);
        assert!(dom.contains(&node), "{node}: {dom}");
    }
    assert_eq!(dom.matches(r#"class="graph-node""#).count(), 9, "{dom}");
    assert!(dom.contains("9 tasks in 4 layers"), "{dom}");
    // A line per worker on each chart, axes with their units.
    for worker in &workers {
        let id = format!("-{}-", worker.pid());
        let lines = dom
            .split(r#"data-worker=""#)
            .skip(1)
            .filter(|rest| rest[..rest.find('"').unwrap()].contains(&id))
            .count();
        assert_eq!(lines, 2, "memory and CPU lines of worker {id}: {dom}");
    }
    assert!(dom.contains(" MiB</text>"), "memory axis in MiB: {dom}");
    assert!(dom.contains(" %</text>"), "CPU axis in %: {dom}");
    let time_axes = dom.matches(r#"class="x-label">time (seconds before now)<"#);
    assert_eq!(time_axes.count(), 2, "{dom}");

    let png = screenshot(&env, &url, "dashboard-graph.png", 1280, 1750).await;
    assert!(png.len() > 50_000, "{} bytes", png.len());
}

#[tokio::test]
async fn a_graph_view_shows_published_tasks_as_queued_with_events_off() {
    use rask::builtins::{add, inc};

    let mut env = TestEnv::new("graph-view-no-events").await;
    env.settings.events = false;
    // No worker: the leaves stay in the queue, their dependent waits.
    let a = inc.delayed(10);
    let b = inc.delayed(20);
    let sum = add.delayed(&a, &b);
    let client = env.client().await;
    client.persist(&sum).await.unwrap();
    let monitor = rask::Monitor::connect(env.settings.clone()).await.unwrap();
    let view = monitor.graph_view(sum.key(), 100).await.unwrap().unwrap();
    let nodes: Vec<(&str, rask::TaskState, u32)> = view
        .nodes
        .iter()
        .map(|n| (n.key.as_str(), n.state, n.layer))
        .collect();
    let mut leaves = [a.key().as_str(), b.key().as_str()];
    leaves.sort_unstable();
    assert_eq!(
        nodes,
        [
            (leaves[0], rask::TaskState::Queued, 0),
            (leaves[1], rask::TaskState::Queued, 0),
            (sum.key().as_str(), rask::TaskState::Waiting, 1),
        ]
    );
    assert!(!view.truncated);
    // At most 2 tasks: the walk stops and says so.
    let view = monitor.graph_view(sum.key(), 2).await.unwrap().unwrap();
    assert_eq!(view.nodes.len(), 2);
    assert!(view.truncated);
    // A key with no graph record.
    let plain = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(monitor.graph_view(plain.key(), 100).await.unwrap(), None);
}
