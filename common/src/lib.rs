//! # rask-common
//!
//! What every rask process shares and nothing more: the wire format, keys, settings, connections
//! and errors. It spawns no tasks; the producer (`rask`) and worker (`rask-worker`) crates do.
//!
//! ## Layout
//! - [`message`]: the task message published to RabbitMQ (MessagePack, versioned).
//! - [`outcome`]: what a worker stores for a task: a value or a structured [`TaskFailure`].
//! - [`retry`]: the per-task [`RetryPolicy`] (attempts, exponential backoff with jitter).
//! - [`options`]: [`TaskOptions`], how a task (or a graph node) is scheduled, retried, limited.
//! - [`blobs`] (feature `blobs`; S3 with feature `s3`): the blob store of `blob_url`, large
//!   values kept by digest in a directory or a bucket.
//! - `blob` (feature `blobs`): `Blob`, one object of a blob store by URL (`file://`, `s3://`),
//!   read and written whole or streaming by task code.
//! - [`reference`]: values kept once outside the message, named by digest ([`reference::Reference`]).
//! - [`keys`]: task keys and the one place that builds Redis key and channel names.
//! - [`reply`]: direct replies: the outcome of a task a client `call`s, sent to that client as
//!   it is stored.
//! - [`task`](mod@task): the [`Task`] trait and the [`task!`] macro that defines typed tasks.
//! - [`context`]: what a task body may take besides its arguments: its [`TaskContext`] and the
//!   worker's [`State`].
//! - [`hedge`]: hedged execution: the [`hedge::Hedge`] policy and the count of hedge copies.
//! - [`graph`]: lazy task graphs: [`graph::Delayed`] calls, their [`graph::Arg`]s, content keys.
//! - [`splice`]: graph inputs spliced into a task's arguments as raw MessagePack bytes.
//! - [`dependencies`]: the Redis scripts that register graph tasks and release them when their
//!   inputs are stored.
//! - [`batch`]: batched small tasks: how many calls a batch message carries, and the run times
//!   workers publish to size them by; [`call_keys`]: the keys of a batch's calls, one group per
//!   message.
//! - [`builtins`]: the functions every stock worker runs (`inc`, `add`, `sum`, `echo`, …).
//! - [`bag_ops`]: the native operations of lazy collections (`Bag`): element-wise operation
//!   names and the partition and reduction tasks every stock worker runs.
//! - [`pool`]: pools of workers: validated [`Pool`] names, each pool's queue names, routing.
//! - [`settings`]: typed [`Settings`], loaded from defaults, `rask.toml` and `RASK_*` variables.
//! - [`signing`]: HMAC-SHA256 signatures of task messages and broadcast requests
//!   (`signing_keys`), each kind in its own domain, made when publishing and checked by workers
//!   before anything is decoded.
//! - [`broker`] and [`store`]: connecting to RabbitMQ (and declaring the topology) and to Redis.
//! - [`revocations`]: tasks cancelled with `force` (a sorted set with expiries, announced on
//!   a channel), which workers drop at admission or stop.
//! - [`pinged`]: a Redis subscription pinged so that a silently dead connection is noticed.
//! - [`store_risks`]: Redis settings under which results can vanish, warned about at start.
//! - [`replica_waits`]: the bookkeeping of waits for replicas (`redis_wait_replicas`).
//! - [`schedule`]: periodic tasks: cron patterns and intervals, which ticks are due, and their
//!   records and claims in Redis.
//! - [`limits`]: global rate and concurrency limits per function: the table, the token
//!   bucket and the concurrency leases in Redis.
//! - [`delay`]: the fixed ladder of delay queues that countdowns, etas and retries wait in.
//! - [`refusal`]: RabbitMQ's refusals of the settings (a login, a queue with other arguments)
//!   explained, naming the settings involved.
//! - [`ops`]: the worker registry entry and broadcast requests and replies (`rask status`,
//!   `rask run`, the dashboard).
//! - [`events`]: task states by key (`rask inspect`) and the bounded event stream
//!   (`rask events`), recorded in the batches of writes that happen anyway;
//!   [`batch_events`]: the calls of a batch message recorded as one.
//! - [`trace`]: the W3C trace context a task carries (body and AMQP headers) from its producer
//!   to its runs and to what is published on its behalf.
//! - [`error`]: the crate's [`Error`].

pub mod bag_ops;
pub mod batch;
pub mod batch_events;
#[cfg(feature = "blobs")]
pub mod blob;
pub mod blobs;
pub mod broker;
pub mod builtins;
pub mod call_keys;
pub mod context;
pub mod delay;
pub mod dependencies;
pub mod error;
mod event_codec;
pub mod events;
pub mod graph;
pub mod hedge;
pub mod keys;
pub mod limits;
pub mod message;
pub mod ops;
pub mod options;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod outcome;
pub mod pinged;
pub mod pool;
pub mod reference;
pub mod refusal;
pub mod replica_waits;
pub mod reply;
pub mod resources;
pub mod retry;
pub mod revocations;
pub mod schedule;
pub mod settings;
pub mod signing;
pub mod splice;
pub mod store;
mod store_conn;
pub mod store_risks;
pub mod task;
pub mod tls;
pub mod trace;
pub mod usage;

pub use context::{State, TaskContext};
pub use error::{Error, ErrorKind, Result};
pub use graph::{Arg, Delayed};
pub use keys::{Keys, TaskKey};
pub use message::{TaskMessage, PROTOCOL_VERSION};
pub use options::TaskOptions;
pub use outcome::{FailureKind, Outcome, StoredOutcome, TaskFailure};
pub use pool::Pool;
pub use resources::{ResourceSlots, Resources};
pub use retry::RetryPolicy;
pub use settings::Settings;
pub use store::Store;
pub use task::{Invocation, Task, TaskError};

#[doc(hidden)]
pub use rmpv;
