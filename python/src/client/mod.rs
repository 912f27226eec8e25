//! `rask._rask.Client` and what it hands out: the Rust client library seen from Python. The
//! Python layer (`rask/client.py`) wraps these in Dask-like classes; every method here takes
//! keys as strings and an optional `callback` (the asyncio API, see `ops.rs`).

mod future;
mod graph;
mod names;
mod ops;
mod options;

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rask::{Settings, TaskKey};
use rmpv::Value;

use crate::{errors, runtime, values};
use future::{Completions, FutureBase};
use graph::{PyBag, PyDelayed};

/// Adds the client's classes to the module `rask._rask`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyClient>()?;
    m.add_class::<FutureBase>()?;
    m.add_class::<Completions>()?;
    m.add_class::<PyDelayed>()?;
    m.add_class::<PyBag>()?;
    Ok(())
}

/// A connection to a rask deployment (RabbitMQ + Redis).
#[pyclass(module = "rask._rask", name = "Client", frozen, subclass)]
pub(crate) struct PyClient {
    inner: rask::Client,
}

fn keys(keys: Vec<String>) -> PyResult<Vec<TaskKey>> {
    keys.into_iter().map(graph::key).collect()
}

fn timeout(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    seconds
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                pyo3::exceptions::PyValueError::new_err(format!(
                    "timeout must be seconds >= 0, not {s}"
                ))
            })
        })
        .transpose()
}

fn key_list(py: Python<'_>, keys: impl IntoIterator<Item = TaskKey>) -> PyResult<Py<PyAny>> {
    let keys: Vec<String> = keys.into_iter().map(String::from).collect();
    Ok(PyList::new(py, keys)?.into_any().unbind())
}

fn value_list(py: Python<'_>, values: &[Value]) -> PyResult<Py<PyAny>> {
    let list = PyList::empty(py);
    for v in values {
        list.append(values::to_python(py, v)?)?;
    }
    Ok(list.into_any().unbind())
}

#[pymethods]
impl PyClient {
    /// Connects with the settings of `rask.toml` and `RASK_*` variables (or the file
    /// `config`), `amqp_url` and `redis_url` overriding theirs.
    #[new]
    #[pyo3(signature = (amqp_url = None, redis_url = None, config = None))]
    fn new(
        py: Python<'_>,
        amqp_url: Option<String>,
        redis_url: Option<String>,
        config: Option<PathBuf>,
    ) -> PyResult<Self> {
        let loaded = match &config {
            Some(path) => Settings::load_from(path, true),
            None => Settings::load(),
        };
        let mut settings = loaded.map_err(|e| errors::rask_error(py, &format!("settings: {e}")))?;
        if let Some(url) = amqp_url {
            settings.amqp_url = url;
            settings.amqp_urls.clear();
        }
        if let Some(url) = redis_url {
            settings.redis_url = url;
        }
        let inner = ops::block(py, async move {
            rask::Client::connect(settings)
                .await
                .map_err(errors::from_client)
        })?;
        Ok(PyClient { inner })
    }

    /// Whether this client signs its messages (it has `signing_keys`): what shipping a pickled
    /// function needs.
    #[getter]
    fn signs(&self) -> bool {
        !self.inner.settings().signing_keys.is_empty()
    }

    /// Submits one call of `function` per tuple of `args_list`; returns their keys once the
    /// broker confirmed them all.
    #[pyo3(signature = (function, args_list, callback = None, **options))]
    fn map(
        &self,
        py: Python<'_>,
        function: String,
        args_list: &Bound<'_, PyAny>,
        callback: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = options::from_kwargs(options)?;
        let mut encoded = Vec::new();
        for args in args_list.try_iter()? {
            let args = args?;
            let args = args.cast::<PyTuple>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "arguments of {function} must be a tuple, not {}",
                    args.get_type()
                ))
            })?;
            encoded.push(Ok(values::args_to_msgpack(args)?));
        }
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                let futures = client
                    .map_encoded_with::<Value>(&function, encoded, &options)
                    .await
                    .map_err(errors::from_client)?;
                Ok(futures.into_iter().map(|f| f.key().clone()))
            },
            key_list,
            callback,
        )
    }

    /// Submits one call of `function` with `args` (a tuple) and returns its value: the wait
    /// overlaps the broker's confirm, and the worker sends the value back as it stores it
    /// (`Client::call`); a failure raises, as does a `timeout` (seconds) that runs out first.
    #[pyo3(signature = (function, args, timeout = None, callback = None, **options))]
    fn call(
        &self,
        py: Python<'_>,
        function: String,
        args: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        callback: Option<Py<PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let options = options::from_kwargs(options)?;
        let args = args.cast::<PyTuple>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "arguments of {function} must be a tuple, not {}",
                args.get_type()
            ))
        })?;
        let encoded = values::args_to_msgpack(args)?;
        let limit = self::timeout(timeout)?;
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                client
                    .call_encoded_with::<Value>(&function, encoded, &options, limit)
                    .await
                    .map_err(errors::from_client)
            },
            |py, value| Ok(values::to_python(py, &value)?.unbind()),
            callback,
        )
    }

    /// The results of `keys` in order: the first failure raises (`errors="raise"`), or each
    /// failure is its exception in the list (`errors="return"`).
    #[pyo3(signature = (keys, timeout = None, errors = "raise", callback = None))]
    fn gather(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        timeout: Option<f64>,
        errors: &str,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let futures: Vec<rask::Future<Value>> = self::keys(keys)?
            .into_iter()
            .map(|k| self.inner.future(k))
            .collect();
        let limit = self::timeout(timeout)?;
        let client = self.inner.clone();
        match errors {
            "raise" => ops::run(
                py,
                async move {
                    let gather = client.gather(&futures);
                    let gathered = match limit {
                        Some(t) => gather.timeout(t).await,
                        None => gather.await,
                    };
                    gathered.map_err(errors::from_client)
                },
                |py, values| value_list(py, &values),
                callback,
            ),
            "return" => ops::run(
                py,
                async move {
                    let gather = client.gather(&futures);
                    match limit {
                        Some(t) => gather.timeout(t).each().await,
                        None => gather.each().await,
                    }
                    .map_err(errors::from_client)
                },
                |py, results| {
                    let list = PyList::empty(py);
                    for result in results {
                        match result {
                            Ok(v) => list.append(values::to_python(py, &v)?)?,
                            Err(e) => list.append(errors::from_client(e).into_value(py))?,
                        }
                    }
                    Ok(list.into_any().unbind())
                },
                callback,
            ),
            other => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "errors must be \"raise\" or \"return\", not {other:?}"
            ))),
        }
    }

    /// Waits until every one of `keys` has an outcome (a value or a failure).
    #[pyo3(signature = (keys, timeout = None, callback = None))]
    fn wait(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        timeout: Option<f64>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let futures: Vec<rask::Future<Value>> = self::keys(keys)?
            .into_iter()
            .map(|k| self.inner.future(k))
            .collect();
        let limit = self::timeout(timeout)?;
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                let wait = client.wait(&futures);
                match limit {
                    Some(t) => wait.timeout(t).await,
                    None => wait.await,
                }
                .map_err(errors::from_client)
            },
            |py, ()| Ok(py.None()),
            callback,
        )
    }

    /// Whether each of `keys` has an outcome.
    fn done(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<Vec<bool>> {
        let futures: Vec<rask::Future<Value>> = self::keys(keys)?
            .into_iter()
            .map(|k| self.inner.future(k))
            .collect();
        ops::block(py, async move {
            let mut done = Vec::with_capacity(futures.len());
            for f in &futures {
                done.push(f.done().await.map_err(errors::from_client)?);
            }
            Ok(done)
        })
    }

    /// The results of `keys` in the order they finish.
    fn as_completed(&self, keys: Vec<String>) -> PyResult<Completions> {
        let futures: Vec<rask::Future<Value>> = self::keys(keys)?
            .into_iter()
            .map(|k| self.inner.future(k))
            .collect();
        let _guard = runtime::get()?.enter();
        Ok(Completions::new(self.inner.as_completed(&futures)))
    }

    /// Deletes the stored results of `keys`; returns how many existed.
    fn release(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<u64> {
        let keys = self::keys(keys)?;
        let client = self.inner.clone();
        ops::block(py, async move {
            client.release(&keys).await.map_err(errors::from_client)
        })
    }

    /// Cancels the tasks of `keys` that have no outcome yet (with `force`, workers also stop
    /// running ones and skip queued ones); returns how many had none.
    #[pyo3(signature = (keys, force = false))]
    fn cancel(&self, py: Python<'_>, keys: Vec<String>, force: bool) -> PyResult<u64> {
        let futures: Vec<rask::Future<Value>> = self::keys(keys)?
            .into_iter()
            .map(|k| self.inner.future(k))
            .collect();
        let client = self.inner.clone();
        ops::block(py, async move {
            let cancel = client.cancel(&futures);
            let cancelled = if force {
                cancel.force().await
            } else {
                cancel.await
            };
            cancelled.map(|n| n as u64).map_err(errors::from_client)
        })
    }

    /// Stores `values` as results (content-addressed keys) and returns their keys.
    #[pyo3(signature = (values, callback = None))]
    fn scatter(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let values = values
            .try_iter()?
            .map(|v| values::to_value(&v?))
            .collect::<PyResult<Vec<_>>>()?;
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                let futures = client.scatter(values).await.map_err(errors::from_client)?;
                Ok(futures.into_iter().map(|f| f.key().clone()))
            },
            key_list,
            callback,
        )
    }

    /// Submits the graphs of `delayed` (shared calls once); returns the keys of their results
    /// once every task that can run now is confirmed.
    #[pyo3(signature = (delayed, callback = None))]
    fn persist(
        &self,
        py: Python<'_>,
        delayed: Vec<PyRef<'_, PyDelayed>>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let delayed: Vec<_> = delayed.iter().map(|d| d.inner.clone()).collect();
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                let futures = client
                    .persist_many(&delayed)
                    .await
                    .map_err(errors::from_client)?;
                Ok(futures.into_iter().map(|f| f.key().clone()))
            },
            key_list,
            callback,
        )
    }

    /// Submits the graphs of `delayed` and waits for their values.
    #[pyo3(signature = (delayed, timeout = None, callback = None))]
    fn compute(
        &self,
        py: Python<'_>,
        delayed: Vec<PyRef<'_, PyDelayed>>,
        timeout: Option<f64>,
        callback: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let delayed: Vec<_> = delayed.iter().map(|d| d.inner.clone()).collect();
        let limit = self::timeout(timeout)?;
        let client = self.inner.clone();
        ops::run(
            py,
            async move {
                let futures = client
                    .persist_many(&delayed)
                    .await
                    .map_err(errors::from_client)?;
                let gather = client.gather(&futures);
                match limit {
                    Some(t) => gather.timeout(t).await,
                    None => gather.await,
                }
                .map_err(errors::from_client)
            },
            |py, values| value_list(py, &values),
            callback,
        )
    }

    /// Runs `function(*args)` once on every live worker; returns `(answers, failed, missing)`:
    /// values by worker id, failure messages by worker id, and the ids that did not answer.
    #[pyo3(signature = (function, args, timeout = 5.0))]
    fn run(
        &self,
        py: Python<'_>,
        function: String,
        args: &Bound<'_, PyTuple>,
        timeout: f64,
    ) -> PyResult<Py<PyAny>> {
        let args = values::args_to_msgpack(args)?;
        let limit = self::timeout(Some(timeout))?.unwrap_or_default();
        let client = self.inner.clone();
        let report = ops::block(py, async move {
            client
                .run_encoded::<Value>(&function, args, limit)
                .await
                .map_err(errors::from_client)
        })?;
        let answers = PyDict::new(py);
        for (worker, value) in &report.answers {
            answers.set_item(worker, values::to_python(py, value)?)?;
        }
        let failed = PyDict::new(py);
        for (worker, failure) in &report.failed {
            failed.set_item(worker, failure.to_string())?;
        }
        Ok((answers, failed, report.missing.clone())
            .into_pyobject(py)?
            .into_any()
            .unbind())
    }

    /// Closes the connections; later calls fail.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.inner.clone();
        ops::block(py, async move {
            client.close().await.map_err(errors::from_client)
        })
    }
}
