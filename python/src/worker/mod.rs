//! Python tasks on rask workers (`@rask.task`, `python -m rask worker`): built on the
//! `rask-worker` runtime. Registers its classes and functions in `rask._rask`.

use pyo3::prelude::*;

/// Adds the worker's classes and functions to the module `rask._rask`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = m;
    Ok(())
}
