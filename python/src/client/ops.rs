//! Running one client operation from Python: blocking (the GIL released while it waits, Ctrl-C
//! honoured every 100 ms) or, given a callback, in the background (the asyncio API: the
//! callback resolves an asyncio future through its loop's `call_soon_threadsafe`).

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;

use crate::runtime;

/// How often a blocking wait looks for a pending signal (Ctrl-C, a notebook's interrupt).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// Runs `op` on the runtime and converts its output with `convert` (holding the GIL).
///
/// Without `callback`, waits for it with the GIL released and returns the converted value; a
/// signal handler that raises (Ctrl-C) abandons the wait with that exception. With `callback`,
/// returns `None` at once and later calls `callback(True, value)` or `callback(False,
/// exception)` from a runtime thread.
///
/// # Errors
/// What `op` or `convert` returns, or the exception of a signal handler.
pub(crate) fn run<T, F, C>(
    py: Python<'_>,
    op: F,
    convert: C,
    callback: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>>
where
    T: Send + 'static,
    F: Future<Output = PyResult<T>> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let rt = runtime::get()?;
    if let Some(callback) = callback {
        rt.spawn(async move {
            let out = op.await;
            Python::attach(|py| {
                let (ok, value) = match out.and_then(|v| convert(py, v)) {
                    Ok(value) => (true, value),
                    Err(e) => (false, e.into_value(py).into_any()),
                };
                if let Err(e) = callback.call1(py, (ok, value)) {
                    // Nobody to hand it to: the callback is the package's own, so this is a bug.
                    e.write_unraisable(py, Some(callback.bind(py)));
                }
            });
        });
        return Ok(py.None());
    }
    let out = block(py, op)?;
    convert(py, out)
}

/// Runs `op` on the runtime and waits for it with the GIL released; a signal handler that
/// raises (Ctrl-C) abandons the wait with that exception.
///
/// # Errors
/// What `op` returns, or the exception of a signal handler.
pub(crate) fn block<T, F>(py: Python<'_>, op: F) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = PyResult<T>> + Send + 'static,
{
    let rt = runtime::get()?;
    let mut handle = rt.spawn(op);
    loop {
        let waited = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut handle).await })
        });
        match waited {
            Ok(joined) => {
                return joined.map_err(|e| {
                    pyo3::exceptions::PyRuntimeError::new_err(format!("rask operation died: {e}"))
                })?;
            }
            Err(_elapsed) => {
                if let Err(e) = py.check_signals() {
                    handle.abort();
                    return Err(e);
                }
            }
        }
    }
}
