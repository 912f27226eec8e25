//! `rask inspect KEY... [--json]`: where tasks are, from their results and state records.

use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use rask::TaskInfo;

use crate::cli::{Global, InspectArgs};
use crate::output::{monitor, parse_keys};

pub(crate) async fn run(global: &Global, args: InspectArgs) -> Result<ExitCode> {
    let keys = parse_keys(args.keys)?;
    let client = monitor(global).await?;
    let infos = client.tasks_info(&keys).await?;
    for info in &infos {
        if args.json {
            println!("{}", serde_json::to_string(info)?);
        } else {
            print!("{}", describe(info));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix ms as an RFC 3339 time (UTC, ms).
pub(crate) fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The lines printed for `info`: the key and state, then a line per thing known.
fn describe(info: &TaskInfo) -> String {
    let mut out = format!("{}  {}\n", info.key, info.state);
    let mut line = |name: &str, text: String| out.push_str(&format!("  {name:<10} {text}\n"));
    if let Some(function) = &info.function {
        line("function", function.clone());
    }
    if let Some(at) = info.queued_at {
        let by = info.queued_by.as_deref().unwrap_or("-");
        line("queued", format!("{} by {by}", time(at)));
    }
    if !info.waiting_for.is_empty() {
        let keys: Vec<&str> = info.waiting_for.iter().map(|k| k.as_str()).collect();
        line("waiting", format!("for {}", keys.join(", ")));
    }
    if let Some(at) = info.started_at {
        let mut text = time(at);
        if let Some(worker) = &info.worker {
            text.push_str(&format!(" on {worker}"));
        }
        if let Some(slot) = info.slot {
            text.push_str(&format!(" slot {slot}"));
        }
        if let Some(attempt) = info.attempt {
            text.push_str(&format!(" attempt {}", attempt + 1));
        }
        line("started", text);
    }
    if info.retries > 0 {
        line("retries", info.retries.to_string());
    }
    if let Some(at) = info.finished_at {
        let took = info
            .duration_ms
            .map(|d| format!(" after {d} ms"))
            .unwrap_or_default();
        line("finished", format!("{}{took}", time(at)));
    }
    if let Some(at) = info.dead_lettered_at {
        line("dead", format!("dead-lettered {}", time(at)));
    }
    if let Some(kind) = info.failure {
        line("failure", format!("{kind:?}"));
    }
    if let Some(error) = &info.error {
        line("error", error.clone());
    }
    out
}
