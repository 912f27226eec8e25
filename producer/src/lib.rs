//! # rask
//!
//! The client of rask, a distributed task system over RabbitMQ and Redis: submit typed tasks,
//! map them over many inputs, gather results by future key, from any process.
//!
//! ```no_run
//! use rask::{builtins::inc, Client, Settings};
//!
//! # async fn example() -> rask::Result<()> {
//! let client = Client::connect(Settings::load()?).await?;
//! let one = client.submit(inc, (41,)).await?;
//! assert_eq!(one.result().await?, 42);
//! let many = client.map(inc, (0..1000).map(|i| (i,))).await?;
//! let values: Vec<i64> = client.gather(&many).await?;
//! assert_eq!(values[999], 1000);
//! # Ok(()) }
//! ```
//!
//! Define your own tasks with [`task!`] in a crate shared by producers and workers; build the
//! worker with the `rask-worker` library.
//!
//! ## Layout
//! - [`Client`] (`client.rs`): connecting, submitting, mapping, releasing.
//! - `graph.rs`: [`Client::persist`] and [`Client::compute`] of lazy task graphs ([`Delayed`]).
//! - [`Bag`] (`bag/`): lazy partitioned collections with native `map`, `filter`, reductions.
//! - [`TaskOptions`] (`options.rs`): countdown/eta, priority, retries, time limit per task.
//! - `publish.rs`: pipelined, confirmed publishing with a window; republishes what a lost
//!   connection left unconfirmed.
//! - `connection.rs`: the client's RabbitMQ connection and channel, replaced with backoff when lost.
//! - `dead.rs`: listing and requeueing dead-lettered messages ([`DeadLetter`]).
//! - `purge.rs`: [`Client::purge`]: every task queue shard and delay queue, every result.
//! - `retry.rs`: the client's Redis writes ride out a Redis restart (idempotent ones only).
//! - `completions.rs`: one Redis subscription per client; waiters re-read on any gap.
//! - `scatter.rs`: [`Client::scatter`] (local data as stored results) and [`Client::wait`].
//! - [`Future`] (`future.rs`) and [`Gather`] (`gather.rs`): waiting for results.
//! - `run.rs`: [`Client::run`], one function on every live worker (broadcast), answers by id.
//! - [`Monitor`] (`status.rs`): [`ClusterStatus`] (queues, live workers, throughput, errors)
//!   for `rask status` and the dashboard.
//! - `progress.rs`: [`Client::progress`] and [`Client::gather_with_progress`].
//! - [`local`]: a private RabbitMQ, Redis and workers on loopback (`rask local`).
//! - [`Error`] (`error.rs`): what can fail.

mod bag;
mod call;
mod client;
mod completions;
mod connection;
mod dead;
mod error;
mod future;
mod gather;
mod graph;
pub mod local;
mod options;
mod progress;
mod publish;
mod purge;
mod retry;
mod run;
mod scatter;
mod status;

pub use bag::{Bag, Numeric};
pub use client::Client;
pub use dead::{DeadLetter, Requeued};
pub use error::{Error, Result};
pub use future::Future;
pub use gather::{Gather, GatherEach};
pub use options::TaskOptions;
pub use progress::{Completed, Progress};
pub use purge::{Purged, PurgedQueue};
pub use rask_common::ops::{
    BroadcastFailure, RecentError, WorkerCounters, WorkerEntry, WorkerInfo,
};
pub use rask_common::{
    builtins, task, Arg, Delayed, FailureKind, ResourceSlots, Resources, RetryPolicy, Settings,
    Task, TaskError, TaskFailure, TaskKey,
};
pub use run::RunReport;
pub use scatter::Wait;
pub use status::{ClusterStatus, Monitor, QueueRole, QueueStatus};

/// The README's Rust examples, compiled as doctests so that they cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
