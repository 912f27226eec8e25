//! A worker binary of your own: the stock functions of `rask-worker` plus the tasks in
//! `tasks.rs`, built exactly like the stock worker.
//!
//! Every worker consuming a queue must know every function submitted to it (a worker that does
//! not stores an `UnknownTask` failure), so run it with no stock workers on the same queue:
//!
//! ```text
//! cargo run -p rask-cli -- local up --workers 0                   # RabbitMQ and Redis only
//! cargo run -p rask-examples --example custom_worker          # this worker; Ctrl-C stops it
//! cargo run -p rask-examples --example submit_and_gather      # in another terminal
//! ```
//!
//! Settings come from `rask.toml` and `RASK_*` variables; the defaults match `rask local up`.

mod tasks;

use rask_common::Settings;
use rask_worker::{Registry, Worker};

fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    // The runtime the settings ask for (`runtime_threads`), as the stock worker builds it.
    let runtime = rask_worker::runtime(&settings)?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let registry = Registry::with_builtins()
        .with::<tasks::word_count>()
        .with::<tasks::text_stats>()
        .with::<tasks::parse_number>();
    let worker = Worker::new(settings, registry.clone());
    eprintln!(
        "worker {} runs: {}; Ctrl-C or SIGTERM stops it",
        worker.id(),
        registry.names().join(", ")
    );
    // On the signal the worker stops consuming, finishes the tasks it runs, stores their
    // results, acknowledges them, and returns.
    worker.run(rask_worker::shutdown_signal()).await?;
    Ok(())
}
