//! `rask-test-worker`: the stock worker plus the functions of [`rask_tests::tasks`], for tests
//! that need them in worker processes they can kill (`TestEnv::spawn_program_with`). Settings
//! come from `RASK_*` variables only.

use rask_common::Settings;
use rask_worker::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    // Spans go to `otlp_endpoint` when a test sets it (tests/tests/traces.rs).
    let exporter = rask_worker::otlp::init_tracing(&settings, "info", "rask-test-worker")?;
    let registry = rask_tests::tasks::registry_for(&settings);
    let ended = Worker::new(settings, registry)
        .run(rask_worker::shutdown_signal())
        .await;
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    if let Err(e) = ended {
        eprintln!("Error: {e}");
        std::process::exit(e.exit_code());
    }
    std::process::exit(0)
}
