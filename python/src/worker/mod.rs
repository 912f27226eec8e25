//! Python tasks served by the Rust worker runtime (`@rask.task`, `python -m rask worker`):
//! the worker registers each Python function as a foreign function (`rask_worker::foreign`)
//! that runs in one of `--processes` Python child processes.
//!
//! - `run.rs`: the worker's settings, its children, the runtime (`_run_worker`).
//! - `processes.rs`: the parent's pool of child processes, one call at a time each.
//! - `child.rs`: a call run in a child (`_child_call`; the loop is `rask.worker`'s).
//! - `frames.rs`: the frames between the two over the child's pipes.

mod child;
mod frames;
mod processes;
mod run;

use pyo3::prelude::*;

/// Adds the worker's classes and functions to the module `rask._rask`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run::_run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(child::_child_call, m)?)?;
    m.add("DEFAULT_POOL", run::DEFAULT_POOL)?;
    Ok(())
}
