//! `rask status`: the deployment on one screen (`--json`: one object; `--watch`: refreshed).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rask::{ClusterStatus, Monitor};

use crate::cli::{Global, StatusArgs};
use crate::output::settings;

pub(crate) async fn run(global: &Global, args: StatusArgs) -> Result<ExitCode> {
    let monitor = Monitor::connect(settings(global)?)
        .await
        .context("connecting to Redis")?;
    let clear = args.watch && !args.json && std::io::stdout().is_terminal();
    loop {
        let status = monitor.status().await.context("reading the status")?;
        let text = if args.json {
            serde_json::to_string(&status)? + "\n"
        } else {
            render(&status)
        };
        {
            let mut out = std::io::stdout().lock();
            if clear {
                write!(out, "\x1b[2J\x1b[H")?;
            }
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

/// A worker's resources as `gpu 1/2, mem 4GiB/16GiB` (in use / total).
fn resource_use(worker: &rask::WorkerEntry) -> String {
    use rask_common::resources::format_amount;
    worker
        .resources
        .iter()
        .map(|(name, total)| {
            let used = worker.resources_in_use.get(name);
            format!("{name} {}/{}", format_amount(used), format_amount(total))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The screen: queues, totals, one line per worker, recent errors.
fn render(status: &ClusterStatus) -> String {
    let mut s = String::new();
    let count = |n: Option<u32>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for q in &status.queues {
        let _ = writeln!(
            s,
            "{:<12} {:<32} {:>8} ready  {:>4} consumers",
            match q.role {
                rask::QueueRole::Tasks => "tasks",
                rask::QueueRole::DeadLetter => "dead letters",
            },
            q.name,
            count(q.messages),
            count(q.consumers)
        );
    }
    // Per pool, when there is more than the default one (the screen of a deployment without
    // pools stays as it was).
    if status.pools.len() > 1 {
        let _ = writeln!(
            s,
            "\n{:<24} {:>7} {:>11} {:>8} {:>12}",
            "POOL", "WORKERS", "CONCURRENCY", "QUEUED", "DEAD LETTERS"
        );
        for p in &status.pools {
            let queued = p.queued.map_or_else(|| "-".to_owned(), |n| n.to_string());
            let _ = writeln!(
                s,
                "{:<24} {:>7} {:>11} {:>8} {:>12}",
                p.name.as_str(),
                p.workers,
                p.concurrency,
                queued,
                count(p.dead_letters)
            );
        }
    }
    for r in &status.unserved_routes {
        let _ = writeln!(
            s,
            "unserved route: {} -> pool {} ({} live worker(s) of the pool, none runs it)",
            r.function, r.pool, r.workers
        );
    }
    let t = status.totals;
    let _ = writeln!(
        s,
        "\n{} worker(s)  {:.2} tasks/s  started {}  succeeded {}  failed {}  retried {}  in flight {}\n",
        status.workers.len(),
        status.tasks_per_second,
        t.started,
        t.succeeded,
        t.failed,
        t.retried,
        t.in_flight
    );
    if !status.workers.is_empty() {
        let _ = writeln!(
            s,
            "{:<36} {:>7} {:>9} {:>8} {:>7} {:>8} {:>10}  METRICS",
            "WORKER", "PID", "RUNNING", "DONE", "FAILED", "TASKS/S", "UP"
        );
    }
    let now = SystemTime::now();
    for w in &status.workers {
        let up = now.duration_since(w.started_at).unwrap_or_default();
        let up = humantime::format_duration(Duration::from_secs(up.as_secs())).to_string();
        let _ = writeln!(
            s,
            "{:<36} {:>7} {:>9} {:>8} {:>7} {:>8.2} {:>10}  {}",
            w.id,
            w.pid,
            format!("{}/{}", w.counters.in_flight, w.concurrency),
            w.counters.done(),
            w.counters.failed,
            w.tasks_per_second,
            up,
            w.metrics_addr
                .map_or_else(|| "-".to_owned(), |a| format!("http://{a}/metrics"))
        );
        if !w.resources.is_empty() {
            let _ = writeln!(s, "{:<36} resources in use: {}", "", resource_use(w));
        }
    }
    if !status.recent_errors.is_empty() {
        let _ = writeln!(s, "\nrecent errors:");
        for e in &status.recent_errors {
            let _ = writeln!(
                s,
                "  {}  {} ({}) {:?}: {}",
                humantime::format_rfc3339_seconds(e.at),
                e.function,
                e.key,
                e.kind,
                e.message.lines().next().unwrap_or_default()
            );
        }
    }
    s
}
