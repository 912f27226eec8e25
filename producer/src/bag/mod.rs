//! [`Bag`]: a lazy, partitioned collection whose common operations are native, after Dask's
//! bags. This module owns the type, its partitions and how it is built; `transform.rs` the
//! element-wise transformations, `reduce.rs` the reductions, `run.rs` submitting (`persist`,
//! `compute`), `named.rs` the same by function name over `rmpv::Value` elements (for the Python
//! package).
//!
//! A bag is a list of partitions, each the key of one task result holding a list of elements:
//! either a [`Delayed`] call not submitted yet, or a result already on the cluster (persisted).
//! Transformations and reductions only build a graph of ordinary [`Delayed`] calls of the
//! operations every stock worker runs ([`rask_common::bag_ops`]); nothing is sent until
//! [`Bag::persist`], [`Bag::compute`] or the client's `compute`/`persist` of a reduction. Keys
//! are content addressed as for any delayed call, so the same pipeline over the same input
//! reuses the partitions and partial results that are still stored.
//!
//! ```no_run
//! use rask::builtins::inc;
//! use rask::Bag;
//!
//! # async fn example(client: rask::Client) -> rask::Result<()> {
//! let numbers = Bag::from_iter(0..1_000_000_i64, 200); // 200 partitions, nothing sent
//! let bigger = numbers.map(inc); // one `rask.bag.map` task per partition
//! assert_eq!(client.compute(&bigger.count()).await?, 1_000_000);
//! let kept = bigger.persist(&client).await?; // partitions stay on the cluster
//! assert_eq!(client.compute(&kept.max()).await?, Some(1_000_000));
//! # Ok(()) }
//! ```

mod named;
mod reduce;
mod run;
mod transform;

use std::fmt;

use rask_common::bag_ops;
use rask_common::graph::ErasedArg;
use rask_common::{Arg, Delayed, Task, TaskKey};
use serde::Serialize;

use crate::future::Future;

pub use reduce::Numeric;

/// A lazy collection of elements of type `T`, split into partitions that workers process one
/// task per partition. Cheap to clone. Build it with [`Bag::from_iter`] (local data),
/// [`Bag::from_keys`] or [`Bag::from_futures`] (partitions already on the cluster), or
/// [`Bag::from_delayed`] (partitions computed by any graph).
pub struct Bag<T> {
    parts: Vec<Part<T>>,
}

/// One partition: a call producing it, or the key of its stored result.
enum Part<T> {
    Lazy(Delayed<Vec<T>>),
    Stored(TaskKey),
}

impl<T> Bag<T> {
    /// `items` in `partitions` contiguous partitions whose lengths differ by at most one (fewer
    /// if there are fewer items; one empty partition for no items). Each partition is a call of
    /// the built-in `bag_items` holding its elements, keyed by their content, so the same items
    /// make the same keys in every process. Nothing is sent; when the bag is submitted, the
    /// items travel in those tasks' messages and stay in Redis as their results (for the result
    /// TTL, like any result), which the element-wise tasks read.
    pub fn from_iter(items: impl IntoIterator<Item = T>, partitions: usize) -> Self
    where
        T: Serialize,
    {
        let mut items: Vec<T> = items.into_iter().collect();
        let (len, count) = (items.len(), partitions.clamp(1, items.len().max(1)));
        let mut parts = Vec::with_capacity(count);
        // From the end, so that each chunk is split off without copying the rest.
        for index in (0..count).rev() {
            let range = bag_ops::piece(len, count as u64, index as u64).expect("index < count");
            let chunk = items.split_off(range.start);
            parts.push(Part::Lazy(call(
                bag_ops::bag_items::NAME,
                vec![Arg::from(chunk).erase()],
            )));
        }
        parts.reverse();
        Bag { parts }
    }

    /// A bag of partitions stored on the cluster under `keys` (by [`Bag::persist`] in any
    /// process: see [`Bag::keys`]). Tasks using them wait for them if they are not stored yet.
    pub fn from_keys(keys: impl IntoIterator<Item = TaskKey>) -> Self {
        Bag {
            parts: keys.into_iter().map(Part::Stored).collect(),
        }
    }

    /// A bag of the partitions `futures` hold (each the list of its elements).
    pub fn from_futures(futures: &[Future<Vec<T>>]) -> Self {
        Bag::from_keys(futures.iter().map(|f| f.key().clone()))
    }

    /// A bag whose partitions are the results of `partitions` (calls of any tasks returning
    /// lists of elements), submitted with what uses them.
    pub fn from_delayed(partitions: impl IntoIterator<Item = Delayed<Vec<T>>>) -> Self {
        Bag {
            parts: partitions.into_iter().map(Part::Lazy).collect(),
        }
    }

    /// The same bag with `options` on the tasks that make its partitions (e.g.
    /// `bag.map(f).with_options(..)`: the `map` tasks), as [`Delayed::with_options`] sets them
    /// on one call (priority, retry policy, time limit). Partitions already
    /// stored (from keys or futures) are left as they are; keys do not change.
    pub fn with_options(self, options: rask_common::TaskOptions) -> Self {
        let parts = self
            .parts
            .into_iter()
            .map(|part| match part {
                Part::Lazy(delayed) => Part::Lazy(delayed.with_options(options.clone())),
                stored @ Part::Stored(_) => stored,
            })
            .collect();
        Bag { parts }
    }

    /// How many partitions the bag has (the tasks an element-wise operation takes).
    pub fn npartitions(&self) -> usize {
        self.parts.len()
    }

    /// The keys the partitions are (or will be) stored under, in order: after
    /// [`Bag::persist`], give them to any process for [`Bag::from_keys`].
    pub fn keys(&self) -> Vec<TaskKey> {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Lazy(delayed) => delayed.key().clone(),
                Part::Stored(key) => key.clone(),
            })
            .collect()
    }

    /// The partitions as arguments of delayed calls (`task.delayed(arg)` for a task taking a
    /// list of elements), in order.
    pub fn partitions(&self) -> Vec<Arg<Vec<T>>> {
        self.parts.iter().map(Part::arg).collect()
    }

    /// All elements, in order, as one delayed list (a `bag_concat` of the partitions): to use
    /// the whole bag as the argument of another task.
    pub fn to_delayed(&self) -> Delayed<Vec<T>> {
        call(
            bag_ops::bag_concat::NAME,
            vec![Arg::list(self.partitions()).erase()],
        )
    }

    /// The bag's graph as Graphviz DOT, as [`Delayed::to_dot`] renders it, with the partitions
    /// joined by one `bag_concat` node (see [`Bag::to_delayed`]). Reductions are `Delayed`
    /// values: call their own `to_dot`.
    pub fn to_dot(&self) -> String {
        self.to_delayed().to_dot()
    }

    /// A bag with a partition per call of the element-wise operation `op` of `task` on a
    /// partition of this bag.
    fn each_partition<U>(&self, op: &'static str, task: &'static str) -> Bag<U> {
        Bag {
            parts: self
                .parts
                .iter()
                .map(|part| Part::Lazy(call(op, vec![Arg::from(task).erase(), part.arg().erase()])))
                .collect(),
        }
    }
}

impl<T> Part<T> {
    fn arg(&self) -> Arg<Vec<T>> {
        match self {
            Part::Lazy(delayed) => Arg::from(delayed),
            Part::Stored(key) => Arg::key(key.clone()),
        }
    }
}

/// A delayed call of `function` with `args`, typed by what the caller knows it returns (how
/// the `delayed` method of a task handle builds one, for the untyped built-in operations).
fn call<R>(function: &'static str, args: Vec<ErasedArg>) -> Delayed<R> {
    Delayed::new(function, args)
}

impl<T> Clone for Bag<T> {
    fn clone(&self) -> Self {
        Bag {
            parts: self.parts.clone(),
        }
    }
}

impl<T> Clone for Part<T> {
    fn clone(&self) -> Self {
        match self {
            Part::Lazy(delayed) => Part::Lazy(delayed.clone()),
            Part::Stored(key) => Part::Stored(key.clone()),
        }
    }
}

impl<T> fmt::Debug for Bag<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bag")
            .field("partitions", &self.parts.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
