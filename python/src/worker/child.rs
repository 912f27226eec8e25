//! The child side of a Python worker: one call read from a frame, run with the GIL held (a
//! child process runs one call at a time), and its reply frame. The read and write loop is
//! Python's (`rask.worker`), so that no file descriptor changes hands with Rust.

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use rask_worker::ForeignError;
use rmpv::Value;

use super::frames;
use crate::values;

/// `rask._rask._child_call(functions, body) -> bytes`: runs the call in frame body `body` with
/// the function `functions` maps its name to, and returns the reply frame (length prefix
/// included). Every error of the call (unknown name, arguments that do not convert, an
/// exception raised, a result without a MessagePack form) is in the reply, never raised.
#[pyfunction]
pub(crate) fn _child_call<'py>(
    py: Python<'py>,
    functions: &Bound<'py, PyDict>,
    body: &[u8],
) -> Bound<'py, PyBytes> {
    let frame = match frames::read_call(body) {
        Ok((name, args)) => match run(py, functions, name, args) {
            Ok(result) => frames::value(&result),
            Err(err) => frames::error(&raised(py, &err)),
        },
        Err(bad) => frames::error(&ForeignError::new(
            "rask.BadFrame",
            format!("the worker sent {}", bad.0),
        )),
    };
    PyBytes::new(py, &frame)
}

/// Calls `name` with `args` (a MessagePack array of positional arguments, or nil for none)
/// and returns its result as MessagePack.
fn run(
    py: Python<'_>,
    functions: &Bound<'_, PyDict>,
    name: &str,
    args: &[u8],
) -> PyResult<Vec<u8>> {
    let Some(function) = functions.get_item(name)? else {
        return Err(PyKeyError::new_err(format!(
            "no Python task named {name:?} in this worker's modules"
        )));
    };
    let args = match values::from_msgpack(args)? {
        Value::Nil => PyTuple::empty(py),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|v| values::to_python(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, items)?
        }
        one => PyTuple::new(py, [values::to_python(py, &one)?])?,
    };
    let result = function.call1(args)?;
    values::to_msgpack(&result)
}

/// The error `err` raised, as a foreign function's error: its type's qualified name (without
/// `builtins.`), its text, its traceback, and whether it asks to be retried (an attribute
/// `__rask_retryable__` that is true, as `rask.Retry` has).
fn raised(py: Python<'_>, err: &PyErr) -> ForeignError {
    let value = err.value(py);
    let ty = value.get_type();
    let qualname = ty
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let error_type = match ty.module().map(|m| m.to_string()) {
        Ok(module) if module != "builtins" => format!("{module}.{qualname}"),
        _ => qualname,
    };
    let message = value
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "(its text does not print)".into());
    // Only for an error raised in Python code: one of the conversion has no frames.
    let traceback = err.traceback(py).and_then(|frames| {
        py.import("traceback")
            .and_then(|tb| tb.call_method1("format_exception", (ty, value, frames)))
            .and_then(|lines| {
                let empty = pyo3::types::PyString::new(py, "");
                empty.call_method1("join", (lines,))
            })
            .and_then(|text| text.extract::<String>())
            .ok()
    });
    let retryable = value
        .getattr("__rask_retryable__")
        .and_then(|flag| flag.is_truthy())
        .unwrap_or(false);
    ForeignError {
        error_type,
        message,
        traceback,
        retryable,
    }
}
