//! rask's errors as Python exceptions: the classes live in `rask.errors` (Python, so they
//! pickle and subclass naturally); this module builds instances of them from Rust errors.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rask_common::TaskFailure;

/// `rask.errors.TaskFailed` for `failure`, with `.kind`, `.function`, `.key`, `.worker`,
/// `.attempts`.
pub fn task_failed(py: Python<'_>, failure: &TaskFailure) -> PyErr {
    build(py, "TaskFailed", &failure.message, |kw| {
        kw.set_item("kind", format!("{:?}", failure.kind))?;
        kw.set_item("function", &failure.task)?;
        kw.set_item("key", failure.key.as_str())?;
        kw.set_item("worker", &failure.worker)?;
        kw.set_item("attempts", failure.attempts)
    })
}

/// `rask.errors.RaskError` with `message`: rask itself failed.
pub fn rask_error(py: Python<'_>, message: &str) -> PyErr {
    build(py, "RaskError", message, |_| Ok(()))
}

/// `rask.errors.TimeoutError` for a wait of `waited` that ended with `pending` tasks (`key`
/// one of them) unfinished.
pub fn timeout(py: Python<'_>, waited: std::time::Duration, pending: usize, key: &str) -> PyErr {
    let message =
        format!("timed out after {waited:?} with {pending} task(s) unfinished (first: {key})");
    build(py, "TimeoutError", &message, |kw| {
        kw.set_item("waited", waited.as_secs_f64())?;
        kw.set_item("pending", pending)?;
        kw.set_item("key", key)
    })
}

/// The Python exception for a client library error: `TaskFailed` for a task's failure,
/// `TimeoutError` for a wait that ran out, `RaskError` for anything else.
pub fn from_client(err: rask::Error) -> PyErr {
    Python::attach(|py| match err {
        rask::Error::Task(failure) => task_failed(py, &failure),
        rask::Error::Timeout {
            waited,
            pending,
            ref first,
        } => build(py, "TimeoutError", &err.to_string(), |kw| {
            kw.set_item("waited", waited.as_secs_f64())?;
            kw.set_item("pending", pending)?;
            kw.set_item("key", first.as_str())
        }),
        other => rask_error(py, &other.to_string()),
    })
}

/// An instance of `rask.errors.<class>(message, **kwargs)`; if that module cannot be imported
/// (a broken install), a `RuntimeError` saying so and carrying `message`.
fn build(
    py: Python<'_>,
    class: &str,
    message: &str,
    kwargs: impl FnOnce(&Bound<'_, PyDict>) -> PyResult<()>,
) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let class = py.import("rask.errors")?.getattr(class)?;
        let kw = PyDict::new(py);
        kwargs(&kw)?;
        let instance = class.call((message,), Some(&kw))?;
        Ok(PyErr::from_value(instance))
    })();
    made.unwrap_or_else(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("{message} (and rask.errors: {e})"))
    })
}
