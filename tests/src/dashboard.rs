//! `rask dashboard` for tests: [`spawn_dashboard`] starts it on a free port with a test's
//! settings, [`chromium`] loads a page of it in headless Chromium (Debian's `chromium`,
//! installed by `scripts/install-deps.sh`).

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{TestEnv, PATIENCE};

/// Starts `rask dashboard` on a free port with `env`'s settings; returns the process (killed
/// on drop) and its address (`127.0.0.1:PORT`).
pub async fn spawn_dashboard(env: &TestEnv) -> (tokio::process::Child, String) {
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

/// Headless Chromium on `url` with `args` (e.g. `--dump-dom`, `--screenshot=PATH`) and the flags
/// that work on a closed network, with a fresh profile in `profile`, its scripts given 3 s of
/// virtual time; its standard output.
pub async fn chromium(url: &str, profile: &std::path::Path, args: &[&str]) -> String {
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

/// Takes a screenshot of `url` (`width` x `height` pixels) into `env`'s folder as `name`,
/// checks that it is a PNG of some content, and keeps a copy in `SCREENSHOTS_DIR` when that is
/// set (docs/); returns its bytes.
pub async fn screenshot(env: &TestEnv, url: &str, name: &str, width: u32, height: u32) -> Vec<u8> {
    let shot = env.path(name);
    let flag = format!("--screenshot={}", shot.display());
    let size = format!("--window-size={width},{height}");
    let profile = env.path(&format!("profile-{name}"));
    chromium(url, &profile, &[&flag, &size, "--hide-scrollbars"]).await;
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{name}: {} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("SCREENSHOTS_DIR") {
        std::fs::write(std::path::Path::new(&dir).join(name), &png).unwrap();
    }
    png
}
