//! Task options from Python keyword arguments: `priority`, `countdown` (seconds), `retries`,
//! `time_limit` (seconds), `pool`.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rask::{RetryPolicy, TaskOptions};

/// The options named in `kwargs` (`None`: the defaults).
///
/// # Errors
/// `TypeError` for an unknown option, `ValueError` for a negative duration.
pub(crate) fn from_kwargs(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<TaskOptions> {
    let mut options = TaskOptions::new();
    let Some(kwargs) = kwargs else {
        return Ok(options);
    };
    for (name, value) in kwargs.iter() {
        if value.is_none() {
            continue;
        }
        let name: String = name.extract()?;
        options = match name.as_str() {
            "priority" => options.priority(value.extract()?),
            "countdown" => options.countdown(seconds(&name, &value)?),
            "retries" => options.retry(RetryPolicy::new(value.extract::<u32>()? + 1)),
            "time_limit" => options.time_limit(seconds(&name, &value)?),
            "pool" => options.pool(value.extract::<String>()?),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unknown task option {other:?}: rask takes priority, countdown, retries, \
                     time_limit and pool"
                )))
            }
        };
    }
    Ok(options)
}

fn seconds(name: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs: f64 = value.extract()?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a duration in seconds >= 0, not {secs}"
        ))
    })
}
