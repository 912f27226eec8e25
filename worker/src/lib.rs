//! # rask-worker
//!
//! The stateless rask worker as a library, so that users build their own worker binary with their
//! own functions exactly like the stock `rask-worker` is built:
//!
//! ```no_run
//! use rask_common::Settings;
//! use rask_worker::{Registry, Worker};
//!
//! rask_common::task! {
//!     /// Shouts.
//!     pub fn shout(text: String) -> String { text.to_uppercase() }
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::with_builtins().with::<shout>();
//! Worker::new(Settings::load()?, registry)
//!     .run(rask_worker::shutdown_signal())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`Worker`] (`worker.rs`): consume, run under a concurrency limit, hand outcomes on, drain on
//!   shutdown.
//! - `admit.rs`: what a delivery must pass before it runs: size, decoding, the delivery limit.
//! - `execute.rs`: one task to an outcome under its time limit; panics, errors and timeouts
//!   become stored failures. `pace.rs`: which plain functions are quick enough to run inline.
//!   `overrun.rs`: the threads of plain functions past their limit, counted and bounded.
//! - `revocations.rs`: tasks revoked by force cancels, in memory (checked at admission, and
//!   watched by running tasks, which are then stopped), kept up to date from Redis.
//! - `resources/`: a task needing resources (`gpu=1`) runs only while this worker has them
//!   free, holding numbered slots it can read ([`held_slots`]); one needing more than this
//!   worker has is handed to another worker of the queue, or fails with `ResourceUnavailable`.
//! - `limits/`: global rate and concurrency limits per function: the table in memory (a task
//!   of an unlimited function pays no round trip), a token or a lease taken at admission, or
//!   the task sent back through the delay ladder to wait.
//! - `send_back.rs`: a delivered task sent back to wait in the broker (a retry, a hand-off, a
//!   task over a limit): published through the delay ladder, confirmed, then acknowledged.
//! - `secede.rs`: a task waiting on tasks it launched gives its concurrency slot back, and
//!   parked tasks do not count against the prefetch window.
//! - `batch.rs`: a batch message's calls run one after the other, their outcomes stored
//!   together, the delivery acknowledged once; retries leave the batch alone.
//! - `retries.rs`: a retryable failure goes back to the broker through a delay queue.
//! - `bag.rs`: the element-wise operations of lazy collections (`rask.bag.map`, …): a registered
//!   function applied to each element of a partition inside one task.
//! - `references.rs`: arguments passed by reference read from Redis and checked against it.
//! - `inputs.rs`: a graph task's inputs read with the other tasks' in one batched `MGET` and
//!   spliced in as raw bytes, or its `DependencyFailed` outcome.
//! - `lineage.rs`: inputs found gone recomputed from their stored messages while the task waits
//!   for them again as a record.
//! - `events.rs`: task states and events of runs (slot, start, end), kept in memory and written
//!   with the result batches (`events` setting).
//! - `continuation.rs`: a graph task released by outcomes this worker stored runs here when a
//!   slot is free, instead of through the broker; `ticket.rs`: what settles a finished task (its
//!   delivery, or a hold on the deliveries that released it, acknowledged once it is settled).
//! - `writer/`: outcomes to Redis in batches, then acknowledgements (never before); a batch
//!   Redis refuses is split so that one refused outcome holds no other (`store.rs`), and
//!   released dependents the broker refuses fail instead of looping (`settle.rs`).
//! - `result_limit.rs`: the largest result stored (`max_result_bytes`, or Redis's
//!   `proto-max-bulk-len` if lower); a larger one becomes a `ResultTooLarge` failure.
//! - `runtime.rs`: the async runtime of a worker process, sized by `runtime_threads`
//!   ([`runtime`]).
//! - `fatal.rs`: an error found off the worker loop that must stop the worker (Redis refusing
//!   writes), raised once and awaited by the loop.
//! - `release.rs`: after a batch is stored, publish the graph tasks it made ready (before the
//!   acknowledgements).
//! - `pools.rs`: the pools served, each with its queues; the pool of a delivery or a message,
//!   so that retries, dead letters and released graph tasks stay in their pool.
//! - `scheduler.rs`: periodic tasks: claim the due ticks of the schedules in Redis and publish
//!   them (one worker per tick), and publish the ticks a dead claimant left unconfirmed.
//! - `dead_letter.rs`: messages that will not run go to the dead-letter queue with a reason.
//! - [`foreign`]: functions implemented outside Rust (Python), registered by name, taking and
//!   returning MessagePack, run like Rust tasks.
//! - [`Registry`] (`registry.rs`): functions by name, arguments decoded per function, and the
//!   worker state they share (built once at start).
//! - `ops.rs`: the worker's operations services beside the task loop, each on its own
//!   connection: `metrics.rs` (task counters, Prometheus `/metrics` and `/health`),
//!   `broadcast.rs` (answers `rask run` on an exclusive queue bound to the broadcast exchange)
//!   and `presence.rs` (the heartbeat entry in the worker registry).

mod admit;
mod bag;
mod batch;
mod broadcast;
mod continuation;
mod dead_letter;
mod error;
mod events;
mod execute;
mod fatal;
pub mod foreign;
mod inputs;
mod limits;
mod lineage;
mod metrics;
mod ops;
/// Exporting spans over OTLP/HTTP (feature `otlp`): [`rask_common::otlp`].
#[cfg(feature = "otlp")]
pub use rask_common::otlp;
mod overrun;
mod pace;
mod pools;
mod presence;
mod references;
mod registry;
mod release;
mod resources;
mod result_limit;
mod retries;
mod retry;
mod revocations;
mod runtime;
mod scheduler;
mod secede;
mod send_back;
mod signal;
mod spans;
mod ticket;
mod worker;
mod writer;

#[cfg(test)]
mod hostile_args_test;

pub use error::{Error, Result, EXIT_CONFIG};
pub use foreign::{ForeignCall, ForeignError, ForeignFunction};
pub use registry::Registry;
pub use resources::held_slots;
pub use runtime::runtime;
pub use signal::shutdown_signal;
pub use worker::Worker;
