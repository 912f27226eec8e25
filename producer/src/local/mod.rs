//! Private RabbitMQ, Redis and worker processes on loopback, like Dask's
//! `LocalCluster`: what `rask local up / down / status` runs, and what the
//! integration-test harness starts, kills and restarts.
//!
//! # Layout
//!
//! - [`ServerProcess`]: one RabbitMQ or Redis with its own ports and data
//!   folder; start (returns once it serves), stop, kill, restart.
//!   [`RabbitMqSpec`] and [`RedisSpec`] say where and how.
//! - [`Worker`]: one worker process with its own environment and log.
//! - [`Lifetime`]: whether a process outlives its caller
//!   ([`Lifetime::Detached`], for `rask local up`) or is stopped when the
//!   caller exits or drops the handle ([`Lifetime::TiedToCaller`], for
//!   tests).
//! - [`up`], [`down`], [`status`]: the detached cluster recorded in
//!   `DIR/state.json` ([`ClusterState`]).
//! - [`supervise`]: what `rask local supervise`, started by `up`, runs: the
//!   workers as its children, each started again after an abnormal exit.
//! - [`port_is_free`], [`free_port`], [`sibling_binary`]: small helpers the
//!   CLI and the test harness need too.
//!
//! Everything listens on 127.0.0.1 only. Nothing here prints: progress goes
//! to `tracing`, failures are returned as `std::io::Error`s whose messages
//! name the process, port and log file.
//!
//! # Example
//!
//! ```no_run
//! use rask::local::{free_port, Fsync, Lifetime, RedisSpec, ServerProcess};
//!
//! # async fn example() -> std::io::Result<()> {
//! let spec = RedisSpec {
//!     dir: "/tmp/rask-example/redis".into(),
//!     port: free_port()?,
//!     append_only: true,
//!     fsync: Fsync::EverySec,
//!     cluster: false,
//! };
//! let mut redis = ServerProcess::start_redis(&spec, Lifetime::TiedToCaller).await?;
//! println!("Redis serves at {}", redis.url());
//! redis.kill().await?; // as a crash would
//! redis.restart().await?; // same folder: the append-only data is back
//! redis.stop().await?;
//! # Ok(())
//! # }
//! ```

mod binaries;
mod cluster;
mod logs;
mod pid;
mod pool_spec;
mod ports;
mod rabbitmq_server;
mod recorded;
mod redis_server;
mod server;
mod spawn;
mod state;
mod supervisor;
mod worker;

#[cfg(test)]
mod lifecycle_test;

pub use binaries::sibling_binary;
pub use cluster::{default_dir, up, LocalClusterSpec};
pub use pool_spec::{PoolWorkers, RESOURCES_VARIABLE};
pub use ports::{free_port, port_is_free};
pub use rabbitmq_server::RabbitMqSpec;
pub use recorded::{down, status};
pub use redis_server::{Fsync, RedisSpec};
pub use server::ServerProcess;
pub use spawn::Lifetime;
pub use state::{ClusterState, ProcessKind, ProcessRecord, Supervision, WorkerState};
pub use supervisor::{supervise, SuperviseSpec, EXIT_CONFIG};
pub use worker::{Worker, WorkerSpec, READY_MARKER};
