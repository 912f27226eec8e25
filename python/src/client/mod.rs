//! `rask.Client` and its futures: the Rust client library seen from Python.

use pyo3::prelude::*;

/// Adds the client's classes and functions to the module `rask._rask`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let _ = m;
    Ok(())
}
