//! `rask-worker`: the stock worker with the built-in functions. Settings come from `rask.toml`
//! and `RASK_*` variables; the flags below override them.

use anyhow::Context;
use clap::Parser;
use rask_common::Settings;
use rask_worker::{Registry, Worker};

/// Runs rask tasks from RabbitMQ and stores their results in Redis until SIGINT or SIGTERM.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Tasks to run at once (default: setting `concurrency`, i.e. the number of CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Unacknowledged deliveries to hold (default: setting `prefetch`, whose 0 means 16 ×
    /// concurrency, at most 65,535).
    #[arg(long)]
    prefetch: Option<u16>,
    /// Queue to consume (default: setting `queue`, i.e. `rask.tasks`).
    #[arg(long)]
    queue: Option<String>,
    /// Settings file (default: `rask.toml` in the working directory, if present).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    for name in Settings::unknown_variables(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!(variable = %name, "ignoring a RASK_* variable that names no setting");
    }
    let mut settings = match &args.config {
        Some(file) => Settings::load_from(file, true),
        None => Settings::load(),
    }
    .context("loading settings")?;
    if let Some(n) = args.concurrency {
        settings.concurrency = n;
    }
    if let Some(n) = args.prefetch {
        settings.prefetch = n;
    }
    if let Some(q) = args.queue {
        settings.queue = q;
    }
    settings.validate().context("checking settings")?;
    tracing::info!(?settings, "starting");
    // On a runtime thread rather than the main one: the deliveries it spawns then start on the
    // thread that received them, without waking another.
    let ran = tokio::spawn(
        Worker::new(settings, Registry::with_builtins()).run(rask_worker::shutdown_signal()),
    )
    .await
    .context("the worker panicked")
    .and_then(|run| run.context("worker failed"));
    // Tasks still running after the grace period were released to the queue, and threads of
    // plain functions past their time limit are abandoned: do not wait for their threads (the
    // runtime would on drop), whether the worker stopped cleanly or not.
    if let Err(e) = ran {
        eprintln!("Error: {e:?}");
        std::process::exit(1)
    }
    std::process::exit(0)
}
