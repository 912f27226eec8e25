//! `python -m rask worker`: the settings of a Python worker, its child processes, and the
//! Rust worker runtime serving the Python functions until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use rask_common::{Pool, Settings};
use rask_worker::{ForeignCall, Registry, Worker};

use super::processes::{ChildCommand, Processes};

/// The pool Python workers serve, and Python tasks go to, unless told otherwise.
pub(crate) const DEFAULT_POOL: &str = "py";

/// What a child is told about pickled functions (an argument of its command line).
fn pickled_policy(settings: &Settings) -> &'static str {
    match (
        settings.allow_pickled_functions,
        settings.signing_keys.is_empty(),
    ) {
        (true, false) => "allow",
        (true, true) => "refuse-unsigned",
        (false, _) => "refuse-disabled",
    }
}

/// `rask._rask._run_worker(names, child_argv, modules, pool=None, concurrency=None,
/// processes=None, config=None) -> int`: serves the Python functions `names` (found in
/// `modules`) on `processes` children started with `child_argv` (then the pickled-function
/// policy and the modules), until SIGINT or SIGTERM; returns the exit code (0 after a graceful
/// stop, 78 for a configuration error, 1 for any other error, which it logs).
#[pyfunction]
#[pyo3(signature = (names, child_argv, modules, pool=None, concurrency=None, processes=None, config=None))]
#[allow(clippy::too_many_arguments)] // the command line's options, one each
pub(crate) fn _run_worker(
    py: Python<'_>,
    names: Vec<String>,
    child_argv: Vec<String>,
    modules: Vec<String>,
    pool: Option<String>,
    concurrency: Option<usize>,
    processes: Option<usize>,
    config: Option<PathBuf>,
) -> PyResult<i32> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let settings = match settings(pool, concurrency, processes, config) {
        Ok(settings) => settings,
        Err(message) => {
            tracing::error!("{message}");
            return Ok(rask_worker::EXIT_CONFIG);
        }
    };
    let processes = processes.unwrap_or(settings.concurrency).max(1);
    let mut argv = child_argv;
    argv.push(pickled_policy(&settings).to_owned());
    argv.extend(modules);
    let runtime = crate::runtime::get()?;
    let code = py.detach(|| {
        runtime.block_on(async move {
            let children = match Processes::start(ChildCommand { argv }, processes).await {
                Ok(children) => children,
                Err(lost) => {
                    tracing::error!("{}", lost.0);
                    return rask_worker::EXIT_CONFIG;
                }
            };
            tracing::info!(processes, functions = %names.join(","), "Python child processes ready");
            let registry = names.into_iter().fold(Registry::new(), |registry, name| {
                let children = children.clone();
                let called = name.clone();
                registry.with_foreign(name, move |call: ForeignCall| {
                    let (children, name) = (Arc::clone(&children), called.clone());
                    Box::pin(async move { children.call(&name, &call.args).await }) as _
                })
            });
            let worker = Worker::new(settings, registry).run(rask_worker::shutdown_signal());
            match tokio::spawn(worker).await {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "worker failed");
                    e.exit_code()
                }
                Err(e) => {
                    tracing::error!(error = %e, "the worker panicked");
                    1
                }
            }
        })
    });
    Ok(code)
}

/// The worker's settings: loaded as `rask-worker` loads them, then the command line's.
fn settings(
    pool: Option<String>,
    concurrency: Option<usize>,
    processes: Option<usize>,
    config: Option<PathBuf>,
) -> Result<Settings, String> {
    for name in Settings::unknown_variables(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!(variable = %name, "ignoring a RASK_* variable that names no setting");
    }
    let mut settings = match &config {
        Some(file) => Settings::load_from(file, true),
        None => Settings::load(),
    }
    .map_err(|e| format!("loading settings: {e}"))?;
    let pool = pool.as_deref().unwrap_or(DEFAULT_POOL);
    let pool = Pool::new(pool).map_err(|e| format!("--pool {pool}: {e}"))?;
    settings.pools = vec![pool];
    // One task per child by default: more would only wait for a child, their time limits
    // running.
    if let Some(n) = concurrency.or(processes) {
        settings.concurrency = n;
    }
    settings
        .validate()
        .map_err(|e| format!("checking settings: {e}"))?;
    Ok(settings)
}
