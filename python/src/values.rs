//! Python values <-> MessagePack, the format every rask task's arguments and results travel in.
//!
//! | Python | MessagePack |
//! |---|---|
//! | `None` | nil |
//! | `bool` | bool |
//! | `int` (64 bits, signed or unsigned) | int (a larger one is an `OverflowError`) |
//! | `float` | float 64 |
//! | `str` | str |
//! | `bytes`, `bytearray`, `memoryview` | bin |
//! | `list`, `tuple` | array (read back as `list`) |
//! | `dict` | map (array keys are read back as tuples, so that they hash) |
//! | `numpy.ndarray` | ext type [`NDARRAY_EXT`]: a MessagePack array `[dtype, shape, data]` |
//! | numpy scalars | their Python value (`.item()`) |
//! | `rask.ExtType(code, data)` | any other ext type, unchanged both ways |
//!
//! The ndarray extension: `dtype` is numpy's array-protocol type string (`"<f8"`, `"|u1"`:
//! byte order, kind, item size), `shape` an array of non-negative ints, `data` the array's
//! bytes in C order. Arrays of Python objects (dtype `O`) are refused. Reading one back needs
//! numpy; without it, the value is read as `rask.ExtType`.
//!
//! Anything else is a `TypeError` naming the value's type: rask sends data, not Python objects.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};
use rmpv::Value;

/// The MessagePack ext type code of a numpy array (see the module docs for its layout).
pub const NDARRAY_EXT: i8 = 1;

/// How deep values may nest before conversion gives up (a `ValueError`, not a stack overflow).
const MAX_DEPTH: usize = 512;

/// A MessagePack ext value that rask does not interpret: a type code and its bytes.
#[pyclass(module = "rask", frozen, eq, from_py_object)]
#[derive(Clone, PartialEq, Eq)]
pub struct ExtType {
    /// The ext type code (-128..=127).
    #[pyo3(get)]
    pub code: i8,
    /// The ext payload.
    pub data: Vec<u8>,
}

#[pymethods]
impl ExtType {
    #[new]
    fn new(code: i8, data: Vec<u8>) -> Self {
        ExtType { code, data }
    }

    /// The ext payload.
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.data)
    }

    fn __repr__(&self) -> String {
        format!(
            "ExtType(code={}, data=<{} bytes>)",
            self.code,
            self.data.len()
        )
    }
}

/// Adds `ExtType`, `encode` and `decode` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ExtType>()?;
    m.add_function(wrap_pyfunction!(encode, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add("NDARRAY_EXT", NDARRAY_EXT)?;
    Ok(())
}

/// `rask.encode(value) -> bytes`: `value` as MessagePack.
#[pyfunction]
fn encode<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = to_msgpack(value)?;
    Ok(PyBytes::new(py, &bytes))
}

/// `rask.decode(data) -> value`: MessagePack bytes as a Python value.
#[pyfunction]
fn decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let value = from_msgpack(data)?;
    to_python(py, &value)
}

/// `value` as MessagePack bytes.
///
/// # Errors
/// `TypeError` for a value (or a part of one) that has no MessagePack form, naming its type.
pub fn to_msgpack(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let value = to_value(value)?;
    Ok(write(&value))
}

/// Positional arguments as a rask call's arguments: a MessagePack array.
///
/// # Errors
/// As [`to_msgpack`].
pub fn args_to_msgpack(args: &Bound<'_, PyTuple>) -> PyResult<Vec<u8>> {
    let values = args
        .iter()
        .map(|a| to_value(&a))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(write(&Value::Array(values)))
}

/// MessagePack bytes as a value.
///
/// # Errors
/// `ValueError` if `data` is not one complete MessagePack value.
pub fn from_msgpack(data: &[u8]) -> PyResult<Value> {
    let mut reader = data;
    let value = rmpv::decode::read_value(&mut reader)
        .map_err(|e| PyValueError::new_err(format!("not MessagePack: {e}")))?;
    if !reader.is_empty() {
        return Err(PyValueError::new_err(format!(
            "{} bytes after the MessagePack value",
            reader.len()
        )));
    }
    Ok(value)
}

fn write(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
    out
}

/// A Python value as a MessagePack value.
///
/// # Errors
/// `TypeError` naming the type of the first part that has no MessagePack form; `OverflowError`
/// for an int beyond 64 bits; `ValueError` for nesting deeper than 512.
pub fn to_value(value: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_value_at(value, 0)
}

fn to_value_at(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "value nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if v.is_none() {
        return Ok(Value::Nil);
    }
    // bool before int: a Python bool is an int.
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(Value::Boolean(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = v.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyOverflowError::new_err(
            "int too large for MessagePack (at most 64 bits)",
        ));
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return Ok(Value::F64(f.value()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.as_ref().into()));
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Value::Binary(b.as_bytes().to_vec()));
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(Value::Binary(b.to_vec()));
    }
    if v.is_instance_of::<PyMemoryView>() {
        let bytes = v.call_method0("tobytes")?;
        return Ok(Value::Binary(bytes.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    if let Ok(l) = v.cast::<PyList>() {
        return l
            .iter()
            .map(|x| to_value_at(&x, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array);
    }
    if let Ok(t) = v.cast::<PyTuple>() {
        return t
            .iter()
            .map(|x| to_value_at(&x, depth + 1))
            .collect::<PyResult<_>>()
            .map(Value::Array);
    }
    if let Ok(d) = v.cast::<PyDict>() {
        return d
            .iter()
            .map(|(k, x)| Ok((to_value_at(&k, depth + 1)?, to_value_at(&x, depth + 1)?)))
            .collect::<PyResult<_>>()
            .map(Value::Map);
    }
    if let Ok(e) = v.cast::<ExtType>() {
        let e = e.get();
        return Ok(Value::Ext(e.code, e.data.clone()));
    }
    if let Some(numpy) = numpy_kind(v)? {
        return match numpy {
            NumpyKind::Array => ndarray_to_value(v),
            NumpyKind::Scalar => to_value_at(&v.call_method0("item")?, depth + 1),
        };
    }
    Err(PyTypeError::new_err(format!(
        "rask cannot send a value of type {}: only None, bool, int, float, str, bytes, list, \
         tuple, dict and numpy arrays cross as MessagePack",
        type_name(v)
    )))
}

enum NumpyKind {
    Array,
    Scalar,
}

/// Whether `v` is a numpy array or scalar, without importing numpy when the program has not.
fn numpy_kind(v: &Bound<'_, PyAny>) -> PyResult<Option<NumpyKind>> {
    let module = v.get_type().module()?;
    if !module.to_cow()?.starts_with("numpy") {
        return Ok(None);
    }
    let numpy = v.py().import("numpy")?;
    if v.is_instance(&numpy.getattr("ndarray")?)? {
        return Ok(Some(NumpyKind::Array));
    }
    if v.is_instance(&numpy.getattr("generic")?)? {
        return Ok(Some(NumpyKind::Scalar));
    }
    Ok(None)
}

fn ndarray_to_value(array: &Bound<'_, PyAny>) -> PyResult<Value> {
    let dtype = array.getattr("dtype")?;
    if dtype.getattr("hasobject")?.is_truthy()? {
        return Err(PyTypeError::new_err(
            "rask cannot send a numpy array of Python objects (dtype object): only arrays of \
             numbers, bools, bytes or fixed-width strings",
        ));
    }
    let type_string: String = dtype.getattr("str")?.extract()?;
    let shape: Vec<u64> = array.getattr("shape")?.extract()?;
    let data = array.call_method1("tobytes", ("C",))?;
    let payload = Value::Array(vec![
        Value::String(type_string.into()),
        Value::Array(shape.into_iter().map(Value::from).collect()),
        Value::Binary(data.cast::<PyBytes>()?.as_bytes().to_vec()),
    ]);
    Ok(Value::Ext(NDARRAY_EXT, write(&payload)))
}

fn type_name(v: &Bound<'_, PyAny>) -> String {
    let ty = v.get_type();
    let name = ty
        .fully_qualified_name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned());
    name
}

/// A MessagePack value as a Python value.
///
/// # Errors
/// `ValueError` for a numpy ext value whose payload is malformed.
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Nil => py.None().into_bound(py),
        Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Integer(i) => match i.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => i.as_u64().unwrap_or(u64::MAX).into_pyobject(py)?.into_any(),
        },
        Value::F32(f) => PyFloat::new(py, f64::from(*f)).into_any(),
        Value::F64(f) => PyFloat::new(py, *f).into_any(),
        Value::String(s) => match s.as_str() {
            Some(s) => PyString::new(py, s).into_any(),
            // Not UTF-8: the bytes as they are rather than a failure.
            None => PyBytes::new(py, s.as_bytes()).into_any(),
        },
        Value::Binary(b) => PyBytes::new(py, b).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_python(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(pairs) => {
            let dict = PyDict::new(py);
            for (k, v) in pairs {
                dict.set_item(key_to_python(py, k)?, to_python(py, v)?)?;
            }
            dict.into_any()
        }
        Value::Ext(code, data) if *code == NDARRAY_EXT => match numpy(py) {
            Some(numpy) => ndarray_from_ext(py, numpy.bind(py), data)?,
            None => Bound::new(py, ExtType::new(*code, data.clone()))?.into_any(),
        },
        Value::Ext(code, data) => Bound::new(py, ExtType::new(*code, data.clone()))?.into_any(),
    })
}

/// A map key: arrays become tuples (recursively), so that they hash.
fn key_to_python<'py>(py: Python<'py>, key: &Value) -> PyResult<Bound<'py, PyAny>> {
    match key {
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|i| key_to_python(py, i))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(PyTuple::new(py, items)?.into_any())
        }
        other => to_python(py, other),
    }
}

/// numpy, if it is installed (looked up once per process).
fn numpy(py: Python<'_>) -> Option<&Py<PyModule>> {
    static NUMPY: PyOnceLock<Option<Py<PyModule>>> = PyOnceLock::new();
    NUMPY
        .get_or_init(py, || py.import("numpy").ok().map(Bound::unbind))
        .as_ref()
}

fn ndarray_from_ext<'py>(
    py: Python<'py>,
    numpy: &Bound<'py, PyModule>,
    payload: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let malformed =
        |what: &str| PyValueError::new_err(format!("malformed numpy ext value: {what}"));
    let Value::Array(parts) = from_msgpack(payload)? else {
        return Err(malformed("not an array"));
    };
    let [Value::String(dtype), Value::Array(shape), Value::Binary(data)] = parts.as_slice() else {
        return Err(malformed("not [dtype, shape, data]"));
    };
    let dtype = dtype.as_str().ok_or_else(|| malformed("dtype not UTF-8"))?;
    let shape = shape
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| malformed("shape not of ints")))
        .collect::<PyResult<Vec<_>>>()?;
    let dtype = numpy.call_method1("dtype", (dtype,))?;
    // A bytearray, so that the array is writable without another copy.
    let buffer = PyByteArray::new(py, data);
    let flat = numpy.call_method1("frombuffer", (buffer, dtype))?;
    flat.call_method1("reshape", (PyTuple::new(py, shape)?,))
        .map_err(|e| malformed(&e.to_string()))
}
