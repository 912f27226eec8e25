//! What Python holds of submitted tasks: `FutureBase` (a key; `rask.Future` subclasses it in
//! Python) and `Completions` (results in the order tasks finish, for `rask.as_completed`).

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rask::TaskKey;
use rmpv::Value;
use tokio::sync::Mutex;

use super::ops;
use crate::{errors, values};

/// The key of a submitted task; `rask.Future` adds the waiting methods.
#[pyclass(module = "rask._rask", name = "FutureBase", frozen, subclass)]
pub(crate) struct FutureBase {
    pub(crate) key: TaskKey,
}

#[pymethods]
impl FutureBase {
    #[new]
    #[pyo3(signature = (key, *_args, **_kwargs))]
    fn new(
        key: String,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        Ok(FutureBase {
            key: super::graph::key(key)?,
        })
    }

    /// The task's key: pass it to another process to gather the result there.
    #[getter]
    fn key(&self) -> &str {
        self.key.as_str()
    }
}

type Stream = BoxStream<'static, (usize, rask::Result<Value>)>;

/// Results in completion order: `next()` returns `(index, ok, value or exception)`, `None`
/// after the last.
#[pyclass(module = "rask._rask", name = "Completions", frozen)]
pub(crate) struct Completions {
    stream: Arc<Mutex<Stream>>,
}

impl Completions {
    pub(crate) fn new(stream: Stream) -> Self {
        Completions {
            stream: Arc::new(Mutex::new(stream)),
        }
    }
}

#[pymethods]
impl Completions {
    /// The next finished task, waiting for it at most `timeout` seconds (then
    /// `rask.TimeoutError`), or, with `callback`, handing it over later.
    #[pyo3(signature = (timeout = None, callback = None))]
    fn next(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let stream = self.stream.clone();
        let limit = super::timeout(timeout)?;
        ops::run(
            py,
            async move {
                let mut stream = stream.lock().await;
                match limit {
                    None => Ok(stream.next().await),
                    Some(limit) => tokio::time::timeout(limit, stream.next())
                        .await
                        .map_err(|_| {
                            Python::attach(|py| errors::timeout(py, limit, 1, "(first to finish)"))
                        }),
                }
            },
            |py, next| match next {
                None => Ok(py.None()),
                Some((index, result)) => {
                    let (ok, value) = match result {
                        Ok(v) => (true, values::to_python(py, &v)?.unbind()),
                        Err(e) => (false, errors::from_client(e).into_value(py).into_any()),
                    };
                    Ok((index, ok, value).into_pyobject(py)?.into_any().unbind())
                }
            },
            callback,
        )
    }
}
