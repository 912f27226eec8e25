//! Lazy graphs from Python: `rask._rask.Delayed` (one call of a function by name, its
//! arguments plain values, other delayed calls or futures, in lists too) and `rask._rask.Bag`
//! (the Rust [`rask::Bag`] of dynamically typed elements).

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use rask::{Arg, Bag, Delayed, TaskKey};
use rmpv::Value;

use super::future::FutureBase;
use super::names::intern;
use super::options;
use crate::values;

/// A lazy call: nothing is sent until a client persists or computes it. Keys are content
/// addressed: the same call made twice is one task.
#[pyclass(module = "rask._rask", name = "Delayed", frozen, subclass)]
#[derive(Clone)]
pub(crate) struct PyDelayed {
    pub(crate) inner: Delayed<Value>,
}

#[pymethods]
impl PyDelayed {
    /// A call of `function` with `args`; `pure=False` gives it a unique key (it runs even if
    /// an identical call ran); task options as keywords.
    #[new]
    #[pyo3(signature = (function, args, pure = true, **options))]
    fn new(
        function: &str,
        args: &Bound<'_, PyTuple>,
        pure: bool,
        options: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        let args = args
            .iter()
            .map(|a| to_arg(&a, 0).map(Arg::erase))
            .collect::<PyResult<Vec<_>>>()?;
        let mut inner = Delayed::new(intern(function), args);
        if !pure {
            inner = inner.impure();
        }
        if options.is_some_and(|o| !o.is_empty()) {
            inner = inner.with_options(options::from_kwargs(options)?);
        }
        Ok(PyDelayed { inner })
    }

    /// The key its result will be stored under.
    #[getter]
    fn key(&self) -> &str {
        self.inner.key().as_str()
    }

    /// The function called.
    #[getter]
    fn function(&self) -> &str {
        self.inner.node().function()
    }

    /// The graph in Graphviz dot.
    fn to_dot(&self) -> String {
        self.inner.to_dot()
    }
}

/// One argument of a delayed call.
fn to_arg(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<Arg<Value>> {
    if let Ok(d) = v.cast::<PyDelayed>() {
        return Ok(Arg::from(&d.get().inner));
    }
    if let Ok(f) = v.cast::<FutureBase>() {
        return Ok(Arg::key(f.get().key.clone()));
    }
    if depth < 64 && (v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>()) && has_lazy(v)?
    {
        let items = v
            .try_iter()?
            .map(|item| to_arg(&item?, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Arg::list(items).cast());
    }
    Ok(Arg::from(values::to_value(v)?))
}

/// Whether a list or tuple holds a delayed call or a future (at any depth of lists).
fn has_lazy(v: &Bound<'_, PyAny>) -> PyResult<bool> {
    for item in v.try_iter()? {
        let item = item?;
        if item.cast::<PyDelayed>().is_ok() || item.cast::<FutureBase>().is_ok() {
            return Ok(true);
        }
        if (item.is_instance_of::<PyList>() || item.is_instance_of::<PyTuple>()) && has_lazy(&item)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A lazy partitioned collection (after Dask's bags): element-wise operations run one task
/// per partition on the workers, reductions combine partial results in a tree.
#[pyclass(module = "rask._rask", name = "Bag", frozen, subclass)]
#[derive(Clone)]
pub(crate) struct PyBag {
    pub(crate) inner: Bag<Value>,
}

#[pymethods]
impl PyBag {
    /// `items` in `npartitions` partitions (nothing sent yet).
    #[staticmethod]
    #[pyo3(signature = (items, npartitions = 1))]
    fn from_sequence(items: &Bound<'_, PyAny>, npartitions: usize) -> PyResult<Self> {
        let items = items
            .try_iter()?
            .map(|i| values::to_value(&i?))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyBag {
            inner: Bag::from_iter(items, npartitions),
        })
    }

    /// A bag of partitions stored under `keys` (e.g. another bag's `keys` after `persist`).
    #[staticmethod]
    fn from_keys(keys: Vec<String>) -> PyResult<Self> {
        let keys = keys.into_iter().map(key).collect::<PyResult<Vec<_>>>()?;
        Ok(PyBag {
            inner: Bag::from_keys(keys),
        })
    }

    /// How many partitions.
    #[getter]
    fn npartitions(&self) -> usize {
        self.inner.npartitions()
    }

    /// The keys of the partitions.
    #[getter]
    fn keys(&self) -> Vec<String> {
        self.inner.keys().into_iter().map(String::from).collect()
    }

    fn map(&self, function: &str) -> Self {
        self.with(self.inner.map_named(intern(function)))
    }

    fn filter(&self, function: &str) -> Self {
        self.with(self.inner.filter_named(intern(function)))
    }

    fn flat_map(&self, function: &str) -> Self {
        self.with(self.inner.flat_map_named(intern(function)))
    }

    fn repartition(&self, npartitions: usize) -> Self {
        self.with(self.inner.repartition(npartitions))
    }

    fn sum(&self) -> PyDelayed {
        lazy(self.inner.sum_values())
    }

    fn count(&self) -> PyDelayed {
        lazy(self.inner.count())
    }

    fn mean(&self) -> PyDelayed {
        lazy(self.inner.mean_values())
    }

    fn min(&self) -> PyDelayed {
        lazy(self.inner.min())
    }

    fn max(&self) -> PyDelayed {
        lazy(self.inner.max())
    }

    fn top_k(&self, k: usize) -> PyDelayed {
        lazy(self.inner.top_k(k))
    }

    fn distinct(&self) -> PyDelayed {
        lazy(self.inner.distinct())
    }

    fn frequencies(&self) -> PyDelayed {
        lazy(self.inner.frequencies())
    }

    /// Submits the partitions; the bag returned reads them from the cluster.
    fn persist(&self, py: Python<'_>, client: &super::PyClient) -> PyResult<Self> {
        let (bag, client) = (self.inner.clone(), client.inner.clone());
        let inner = super::ops::block(py, async move {
            bag.persist(&client)
                .await
                .map_err(crate::errors::from_client)
        })?;
        Ok(PyBag { inner })
    }

    /// The whole bag as one list (a delayed call concatenating the partitions).
    fn to_delayed(&self) -> PyDelayed {
        lazy(self.inner.to_delayed())
    }
}

impl PyBag {
    fn with(&self, inner: Bag<Value>) -> Self {
        let _ = self;
        PyBag { inner }
    }
}

fn lazy<T>(delayed: Delayed<T>) -> PyDelayed {
    PyDelayed {
        inner: delayed.cast(),
    }
}

/// `key` as a task key.
///
/// # Errors
/// `ValueError` if it is not a valid key.
pub(crate) fn key(key: String) -> PyResult<TaskKey> {
    TaskKey::new(key).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
}
