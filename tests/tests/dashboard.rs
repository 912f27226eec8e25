//! `rask dashboard` in headless Chromium (Debian's `chromium`, installed by
//! `scripts/install-deps.sh`) against worker processes running real tasks: the page, once its
//! script has fetched `/api/status`, shows the workers, the queue depth and the counts; once it
//! has fetched `/api/events`, the task stream (a row per worker slot) and the progress per
//! function. With `SCREENSHOTS_DIR` set, the screenshot is kept there (docs/).

use std::process::Stdio;

use rask_tests::{http_get, TestEnv, PATIENCE};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `rask dashboard` on a free port; returns the process and its address.
async fn dashboard(env: &TestEnv) -> (tokio::process::Child, String) {
    let program = rask::local::sibling_binary("rask").expect("rask is built");
    let mut child = tokio::process::Command::new(program)
        .args(["dashboard", "--listen", "127.0.0.1:0"])
        .envs(env.env_vars())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("rask dashboard starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the dashboard prints its URL")
        .unwrap()
        .expect("a line");
    let address = line
        .strip_prefix("dashboard: http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (child, address)
}

/// The DOM of `url` after its scripts ran for a while, as headless Chromium dumps it.
async fn chromium_dom(url: &str) -> String {
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=3000",
                "--dump-dom",
                url,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes")
    .expect("chromium runs (install it with scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
    let dom = chromium_dom(&format!("http://{address}/")).await;
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

/// Headless Chromium on `url` with `args` (the flags that work on a closed network, a fresh
/// profile in `profile`); its standard output.
async fn chromium(url: &str, profile: &std::path::Path, args: &[&str]) -> String {
    let profile = format!("--user-data-dir={}", profile.display());
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=3000",
                profile.as_str(),
            ])
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes")
    .expect("chromium runs (install it with scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
