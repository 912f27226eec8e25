//! The tokio runtime of the extension module: one per process, started on first use, shared by
//! every client (and worker) the Python program creates. A Python program has no async Rust
//! entry point to own a runtime, so the module keeps this one; its threads never hold the GIL
//! except while converting values.

use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, started on the first call.
///
/// # Errors
/// `RuntimeError` if the runtime's threads cannot be started.
pub fn get() -> PyResult<&'static Runtime> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rask")
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start rask's runtime: {e}")))?;
    // A racing first call may have set it: its runtime wins, this one is dropped unused.
    Ok(RUNTIME.get_or_init(|| runtime))
}
