//! `rask-test-worker`: the stock worker plus the functions of [`rask_tests::tasks`], for tests
//! that need them in worker processes they can kill (`TestEnv::spawn_program_with`). Settings
//! come from `RASK_*` variables only.

use rask_common::Settings;
use rask_worker::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::load()?;
    let registry = rask_tests::tasks::registry_for(&settings);
    let ended = Worker::new(settings, registry)
        .run(rask_worker::shutdown_signal())
        .await;
    if let Err(e) = ended {
        eprintln!("Error: {e}");
        std::process::exit(e.exit_code());
    }
    std::process::exit(0)
}
