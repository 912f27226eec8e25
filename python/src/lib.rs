//! # rask-python: the extension module `rask._rask`
//!
//! The Rust half of the `rask` Python package (`python/rask/` is the Python half, which users
//! import). It wraps the Rust client library, so that settings (`rask.toml`, `RASK_*`),
//! reconnects, confirms, signing, TLS, shards and Redis Cluster behave exactly as in Rust.
//!
//! ## Layout
//! - `runtime.rs`: the one tokio runtime the extension's async work runs on.
//! - `values.rs`: Python values <-> MessagePack (the only place that converts them).
//! - `errors.rs`: rask errors as the Python exceptions of `rask.errors` (`TaskFailed`,
//!   `TimeoutError`, `RaskError`).
//! - `client/`: `rask.Client` and its futures (submit, map, gather, graphs, ...).
//! - `worker/`: Python tasks served by the Rust worker runtime (`python -m rask worker`).

pub mod errors;
pub mod runtime;
pub mod values;

mod client;
mod worker;

use pyo3::prelude::*;

/// The module `rask._rask`: what the Python package builds on.
#[pymodule]
fn _rask(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    values::register(m)?;
    client::register(m)?;
    worker::register(m)?;
    Ok(())
}
