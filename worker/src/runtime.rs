//! The async runtime a worker process runs on, sized by the `runtime_threads` setting.

use rask_common::Settings;

/// A multi-threaded tokio runtime (I/O and timers on) with [`Settings::runtime_threads`]
/// threads, one per CPU when that is 0, for a worker binary to run [`crate::Worker::run`] on:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let settings = rask_common::Settings::load()?;
/// let registry = rask_worker::Registry::with_builtins();
/// rask_worker::runtime(&settings)?.block_on(async move {
///     // On a runtime thread: the deliveries it spawns start on the thread that received them.
///     let worker = rask_worker::Worker::new(settings, registry);
///     tokio::spawn(worker.run(rask_worker::shutdown_signal())).await
/// })??;
/// # Ok(()) }
/// ```
///
/// # Errors
/// The operating system's, if the threads cannot be started.
pub fn runtime(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if settings.runtime_threads > 0 {
        builder.worker_threads(settings.runtime_threads);
    }
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_has_the_threads_the_setting_names() {
        assert_eq!(runtime_of(3).metrics().num_workers(), 3);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runtime_of(0).metrics().num_workers(), cpus);
    }

    fn runtime_of(threads: usize) -> tokio::runtime::Runtime {
        let settings = Settings {
            runtime_threads: threads,
            ..Settings::default()
        };
        runtime(&settings).unwrap()
    }
}
