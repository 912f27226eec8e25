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
//! - [`builtins`]: the stock worker's functions (`inc`, `echo`, the demo's `image_stats`, …).
//! - [`Client`] (`client.rs`): connecting, submitting, mapping, releasing.
//! - [`ContextExt`] (`context.rs`): a task running on a worker launches tasks through the
//!   worker's client and waits for them without holding its concurrency slot.
//! - `graph.rs`: [`Client::persist`] and [`Client::compute`] of lazy task graphs ([`Delayed`]).
//! - [`Bag`] (`bag/`): lazy partitioned collections with native `map`, `filter`, reductions.
//! - [`TaskOptions`] (from `rask-common`): countdown/eta, priority, retries, time limit per task
//!   or per graph node ([`Delayed::with_options`]).
//! - `pools.rs`: [`Client::check_routes`] (routes no live worker serves, and a warning once per
//!   pool and function) and [`Client::wait_for_workers`].
//! - `hedge.rs`: hedged execution ([`TaskOptions::hedge`]): a copy of each late task, the
//!   first outcome wins, the other copy is revoked.
//! - `batch.rs`: `map` packs many small calls into one batch message (`TaskOptions::batch`).
//! - `publish.rs`: pipelined, confirmed publishing with a window; republishes what a lost
//!   connection left unconfirmed.
//! - `connection.rs`: the client's RabbitMQ connection and channel, replaced with backoff when lost.
//! - `dead.rs`: listing and requeueing dead-lettered messages ([`DeadLetter`]).
//! - `purge.rs`: [`Client::purge`]: every task queue shard and delay queue, every result.
//! - `retry.rs`: the client's Redis writes ride out a Redis restart (idempotent ones only).
//! - `completions.rs`: one Redis subscription per client; waiters re-read on any gap.
//! - `schedule.rs`: [`Client::schedule`] and friends: periodic tasks ([`ScheduleSpec`]) that
//!   workers tick.
//! - `limits.rs`: [`Client::set_limit`] and friends: global rate and concurrency limits per
//!   function ([`Limit`]) that every worker applies.
//! - `scatter.rs`: [`Client::scatter`] (local data as stored results) and [`Client::wait`].
//! - [`Cancel`] (`cancel.rs`): [`Client::cancel`], and with [`Cancel::force`] revocations that
//!   stop running and queued work.
//! - [`Future`] (`future.rs`) and [`Gather`] (`gather.rs`): waiting for results.
//! - `run.rs`: [`Client::run`], one function on every live worker (broadcast), answers by id.
//! - [`Monitor`] (`status.rs`): [`ClusterStatus`] (queues, live workers, throughput, errors)
//!   for `rask status` and the dashboard.
//!   `graph_view.rs`: [`GraphView`], a persisted graph's tasks and their states by layer;
//!   `event_lag.rs`: [`EventStreamHead`], how far behind the task event stream is.
//! - `progress.rs`: [`Client::progress`] and [`Client::gather_with_progress`].
//! - `local` (feature `local`): a private RabbitMQ, Redis and workers on loopback (`rask local`,
//!   the tests and the bench use it; the command-line tool is the `rask-cli` crate).
//! - `events.rs`: the `queued` and `cancelled` task events of this client (written in batches in
//!   the background), [`Client::task_info`] and [`Client::events`] (`rask inspect`, `rask events`).
//! - `report.rs`: [`Client::report`], a self-contained HTML performance report of task events.
//! - [`Error`] (`error.rs`): what can fail.

mod bag;
mod batch;
pub mod builtins;
mod call;
mod cancel;
mod client;
mod completions;
mod connection;
mod context;
mod dead;
mod error;
mod event_lag;
mod events;
mod future;
mod gather;
mod graph;
mod graph_view;
mod hedge;
mod limits;
#[cfg(feature = "local")]
pub mod local;
mod pools;
mod progress;
mod publish;
mod purge;
mod references;
mod report;
mod retry;
mod run;
mod scatter;
mod schedule;
mod status;
mod trace;

pub use bag::{Bag, Numeric};
pub use cancel::Cancel;
pub use client::Client;
pub use context::ContextExt;
pub use dead::{DeadLetter, Requeued};
pub use error::{Error, Result};
pub use event_lag::EventStreamHead;
pub use future::Future;
pub use gather::{Gather, GatherEach};
pub use graph_view::{GraphNode, GraphView};
pub use limits::{LimitInfo, LimitSource};
pub use pools::{UnservedRoute, WaitForWorkers};
pub use progress::{Completed, Progress};
pub use purge::{Purged, PurgedQueue};
/// Large data by URL for task code (`file://`, `s3://`; feature `blobs`): see
/// [`rask_common::blob`]. Inside a task, `ctx.blob(url)` ([`TaskContext::blob`]).
#[cfg(feature = "blobs")]
pub use rask_common::blob::{Blob, BlobReader, BlobStores, BlobWriter};
pub use rask_common::events::{Event, EventKind, TaskInfo, TaskState};
pub use rask_common::hedge::Hedge;
pub use rask_common::limits::{Limit, Rate};
pub use rask_common::ops::{
    BroadcastFailure, RecentError, WorkerCounters, WorkerEntry, WorkerInfo,
};
pub use rask_common::schedule::{Missed, Schedule, Timing};
pub use rask_common::TaskOptions;
pub use rask_common::{
    task, Arg, Delayed, FailureKind, Pool, ResourceSlots, Resources, RetryPolicy, Settings, State,
    Task, TaskContext, TaskError, TaskFailure, TaskKey,
};
pub use run::RunReport;
pub use scatter::Wait;
pub use schedule::{ScheduleInfo, ScheduleSpec};
pub use status::{ClusterStatus, Monitor, PoolStatus, QueueRole, QueueStatus};

/// The README's Rust examples, compiled as doctests so that they cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
