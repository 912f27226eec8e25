//! `rask-worker`: the stock worker with the built-in functions. Settings come from `rask.toml`
//! and `RASK_*` variables; the flags below override them.
//!
//! Exit codes: 0 after a graceful stop (SIGINT, SIGTERM); 78 (`EX_CONFIG`) when the settings
//! are invalid or the servers refuse them (a queue declared with other arguments, a refused
//! login, missing permissions, a Redis replica): restarting does not help until the
//! configuration changes; 1 for any other error (e.g. too many threads past their time limit:
//! a fresh process is what helps then).

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
    /// Resources this worker has, as `NAME=AMOUNT` pairs, e.g. `gpu=2,mem=16GiB` (default:
    /// setting `resources`, i.e. none). Integer amounts; `KiB`, `MiB`, `GiB`, `TiB` suffixes
    /// for memory-like ones. Tasks needing some run only while that much is free.
    #[arg(long, value_name = "NAME=AMOUNT,...")]
    resources: Option<String>,
    /// Queue to consume (default: setting `queue`, i.e. `rask.tasks`).
    #[arg(long)]
    queue: Option<String>,
    /// Pools to serve, comma-separated, e.g. `default,gpu` (default: setting `pools`, i.e.
    /// `default`): the worker consumes every shard of each pool's task queue.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pools: Option<Vec<rask_common::Pool>>,
    /// Settings file (default: `rask.toml` in the working directory, if present).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

fn main() {
    let ran = load(Args::parse()).and_then(|settings| {
        // Sized by the settings (`runtime_threads`), so built once they are known.
        let runtime = rask_worker::runtime(&settings).context("starting the runtime")?;
        let ran = runtime.block_on(run(settings));
        // Tasks still running after the grace period were released to the queue, and threads
        // of plain functions past their time limit are abandoned: do not wait for their threads
        // (dropping the runtime would), whether the worker stopped cleanly or not.
        runtime.shutdown_background();
        ran
    });
    let code = match ran {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            exit_code(&e)
        }
    };
    std::process::exit(code)
}

/// The exit code for `error` (see the module docs).
fn exit_code(error: &anyhow::Error) -> i32 {
    if let Some(e) = error.downcast_ref::<rask_worker::Error>() {
        return e.exit_code();
    }
    match error.downcast_ref::<rask_common::Error>() {
        Some(e) if e.kind() == rask_common::ErrorKind::Configuration => rask_worker::EXIT_CONFIG,
        _ => 1,
    }
}

/// The settings of the file and environment, with the flags of `args` over them.
fn load(args: Args) -> anyhow::Result<Settings> {
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
    if let Some(text) = args.resources {
        settings.resources = text.parse().context("reading --resources")?;
    }
    if let Some(q) = args.queue {
        settings.queue = q;
    }
    if let Some(pools) = args.pools {
        settings.pools = pools;
    }
    settings.validate().context("checking settings")?;
    Ok(settings)
}

/// Runs the worker with `settings` until it stops.
async fn run(settings: Settings) -> anyhow::Result<()> {
    // Once the settings are known: they may name an OTLP endpoint to export spans to.
    let exporter = init_tracing(&settings)?;
    for name in Settings::unknown_variables(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!(variable = %name, "ignoring a RASK_* variable that names no setting");
    }
    tracing::info!(?settings, "starting");
    // On a runtime thread rather than the main one: the deliveries it spawns then start on the
    // thread that received them, without waking another.
    let ended = tokio::spawn(
        Worker::new(settings, Registry::with_builtins()).run(rask_worker::shutdown_signal()),
    )
    .await;
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    ended
        .context("the worker panicked")?
        .context("worker failed")?;
    Ok(())
}

/// Installs the log subscriber (`RUST_LOG`, default `info`), exporting spans to `otlp_endpoint`
/// when it is set.
#[cfg(feature = "otlp")]
fn init_tracing(settings: &Settings) -> anyhow::Result<Option<rask_worker::otlp::Otlp>> {
    Ok(rask_worker::otlp::init_tracing(
        settings,
        "info",
        "rask-worker",
    )?)
}

/// Installs the log subscriber (`RUST_LOG`, default `info`); this build exports no spans.
#[cfg(not(feature = "otlp"))]
fn init_tracing(settings: &Settings) -> anyhow::Result<Option<NoExporter>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if !settings.otlp_endpoint.is_empty() {
        tracing::warn!("otlp_endpoint is set but this rask-worker was built without the `otlp` feature: no spans are exported");
    }
    Ok(None)
}

/// The exporter of a build without the `otlp` feature: none.
#[cfg(not(feature = "otlp"))]
enum NoExporter {}

#[cfg(not(feature = "otlp"))]
impl NoExporter {
    fn shutdown(self) {}
}
