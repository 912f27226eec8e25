//! The reductions of a [`Bag`]: each runs once per partition, then combines the partial
//! results in a tree of at most [`FAN_IN`] inputs per task, and returns a [`Delayed`] of the
//! result (submit it with the client's `compute` or `persist`).
//!
//! The native ones (`count`, `sum`, `mean`, `min`, `max`, `top_k`, `distinct`, `frequencies`)
//! are built-in tasks of every stock worker ([`rask_common::bag_ops`]); `fold` and `reduction`
//! take the user's own tasks. Elements are compared, where a reduction compares, by
//! [`rask_common::bag_ops::compare`]: for numbers, text, and tuples of them, Rust's order.

use rask_common::bag_ops;
use rask_common::builtins;
use rask_common::{Arg, Delayed, Task};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{call, Bag};

/// Most partial results one combining task takes.
pub(super) const FAN_IN: usize = 16;

/// The element types [`Bag::sum`] and [`Bag::mean`] take: Rust's primitive numbers.
pub trait Numeric: sealed::Sealed + Serialize + DeserializeOwned {}

mod sealed {
    /// Keeps [`super::Numeric`] to the types implemented here (workers add them as MessagePack
    /// integers or floats).
    #[allow(unreachable_pub)]
    pub trait Sealed {}
}

macro_rules! numeric {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Numeric for $t {}
    )*};
}
numeric!(i8, i16, i32, i64, u8, u16, u32, u64, f32, f64);

impl<T> Bag<T> {
    /// The number of elements (0 for an empty bag).
    pub fn count(&self) -> Delayed<u64> {
        let name = bag_ops::bag_count_merge::NAME;
        self.reduce(
            |part| call::<u64>(bag_ops::bag_count::NAME, vec![part.erase()]),
            |parts| call(name, vec![parts.erase()]),
            |parts| call(name, vec![parts.erase()]),
        )
    }

    /// The sum of the elements, as `T` (0 for an empty bag). Integers are added as `i64` and
    /// fail on overflow; a float among them makes the sum a float.
    pub fn sum(&self) -> Delayed<T>
    where
        T: Numeric,
    {
        let sum = |list: Arg<Vec<T>>| call(builtins::sum::NAME, vec![list.erase()]);
        self.reduce(sum, sum, sum)
    }

    /// The arithmetic mean of the elements; `None` for an empty bag.
    pub fn mean(&self) -> Delayed<Option<f64>>
    where
        T: Numeric,
    {
        self.reduce(
            |part| call::<(f64, u64)>(bag_ops::bag_mean_part::NAME, vec![part.erase()]),
            |parts| call(bag_ops::bag_mean_merge::NAME, vec![parts.erase()]),
            |parts| call(bag_ops::bag_mean::NAME, vec![parts.erase()]),
        )
    }

    /// The smallest element; `None` for an empty bag.
    pub fn min(&self) -> Delayed<Option<T>> {
        self.extreme(false)
    }

    /// The largest element; `None` for an empty bag.
    pub fn max(&self) -> Delayed<Option<T>> {
        self.extreme(true)
    }

    /// The `k` largest elements, largest first (all of them, sorted, if there are at most `k`;
    /// none for an empty bag). Equal elements are all kept.
    pub fn top_k(&self, k: usize) -> Delayed<Vec<T>> {
        let k = k as u64;
        self.reduce(
            |part| call::<Vec<T>>(bag_ops::bag_top::NAME, top_args(k, true, part)),
            |parts| call(bag_ops::bag_top_merge::NAME, top_args(k, true, parts)),
            |parts| call(bag_ops::bag_top_merge::NAME, top_args(k, true, parts)),
        )
    }

    /// The `k` elements for which `key` returns the largest keys, largest first (ties: the
    /// larger element first). `key` runs once per element (`rask.bag.key_by`).
    pub fn top_k_by<F>(&self, k: usize, key: F) -> Delayed<Vec<T>>
    where
        F: Task<Args = (T,)>,
    {
        let k = k as u64;
        let keyed: Bag<(F::Output, T)> = self.each_partition(bag_ops::KEY_BY, F::NAME);
        let _ = key;
        keyed.reduce(
            |part| call::<Vec<(F::Output, T)>>(bag_ops::bag_top::NAME, top_args(k, true, part)),
            |parts| call(bag_ops::bag_top_merge::NAME, top_args(k, true, parts)),
            |parts| {
                call(
                    bag_ops::bag_top_by_merge::NAME,
                    vec![Arg::from(k).erase(), parts.erase()],
                )
            },
        )
    }

    /// The distinct elements, smallest first (none for an empty bag).
    pub fn distinct(&self) -> Delayed<Vec<T>> {
        let merge =
            |parts: Arg<Vec<Vec<T>>>| call(bag_ops::bag_distinct_merge::NAME, vec![parts.erase()]);
        self.reduce(
            |part| call(bag_ops::bag_distinct::NAME, vec![part.erase()]),
            merge,
            merge,
        )
    }

    /// Each distinct element with how many times it occurs, most frequent first (equal counts:
    /// smallest element first).
    pub fn frequencies(&self) -> Delayed<Vec<(T, u64)>> {
        let merge = |parts: Arg<Vec<Vec<(T, u64)>>>| {
            call(bag_ops::bag_frequencies_merge::NAME, vec![parts.erase()])
        };
        self.reduce(
            |part| call(bag_ops::bag_frequencies::NAME, vec![part.erase()]),
            merge,
            merge,
        )
    }

    /// Folds each partition with the user's `binop(accumulator, element)`, starting from
    /// `initial`, on the worker (`rask.bag.fold`, the task running once per element), then
    /// folds the partial results with `combine(accumulator, partial)`, again from `initial`
    /// (so `initial` must be neutral: `0` for a sum). `initial` for an empty bag.
    pub fn fold<F, C, A>(&self, binop: F, combine: C, initial: A) -> Delayed<A>
    where
        F: Task<Args = (A, T), Output = A>,
        C: Task<Args = (A, A), Output = A>,
        A: Serialize + Clone,
    {
        let (_, _) = (binop, combine);
        let fold = |function: &'static str, list: Arg<Vec<A>>| {
            call(
                bag_ops::FOLD,
                vec![
                    Arg::from(function).erase(),
                    Arg::from(initial.clone()).erase(),
                    list.erase(),
                ],
            )
        };
        self.reduce(
            |part| {
                call(
                    bag_ops::FOLD,
                    vec![
                        Arg::from(F::NAME).erase(),
                        Arg::from(initial.clone()).erase(),
                        part.erase(),
                    ],
                )
            },
            |parts| fold(C::NAME, parts),
            |parts| fold(C::NAME, parts),
        )
    }

    /// A reduction by the user's tasks: `per_partition` takes a partition's elements,
    /// `aggregate` a list of its results (or of its own); `aggregate` of an empty list for a
    /// bag without partitions.
    pub fn reduction<P, C>(&self, per_partition: P, aggregate: C) -> Delayed<P::Output>
    where
        P: Task<Args = (Vec<T>,)>,
        C: Task<Args = (Vec<P::Output>,), Output = P::Output>,
    {
        let (_, _) = (per_partition, aggregate);
        let merge = |parts: Arg<Vec<P::Output>>| call(C::NAME, vec![parts.erase()]);
        self.reduce(|part| call(P::NAME, vec![part.erase()]), merge, merge)
    }

    fn extreme(&self, largest: bool) -> Delayed<Option<T>> {
        self.reduce(
            |part| call::<Vec<T>>(bag_ops::bag_top::NAME, top_args(1, largest, part)),
            |parts| call(bag_ops::bag_top_merge::NAME, top_args(1, largest, parts)),
            |parts| {
                call(
                    bag_ops::bag_top_one::NAME,
                    vec![Arg::from(largest).erase(), parts.erase()],
                )
            },
        )
    }

    /// `leaf` on each partition, `merge` on runs of at most [`FAN_IN`] partial results until
    /// at most that many are left, then `root` on those (an empty list for no partitions).
    pub(super) fn reduce<P, R>(
        &self,
        leaf: impl Fn(Arg<Vec<T>>) -> Delayed<P>,
        merge: impl Fn(Arg<Vec<P>>) -> Delayed<P>,
        root: impl FnOnce(Arg<Vec<P>>) -> Delayed<R>,
    ) -> Delayed<R> {
        let mut level: Vec<Delayed<P>> = self.partitions().into_iter().map(leaf).collect();
        while level.len() > FAN_IN {
            level = level
                .chunks(FAN_IN)
                .map(|run| merge(Arg::from(run)))
                .collect();
        }
        root(Arg::from(level))
    }
}

/// The arguments of `bag_top` and `bag_top_merge`.
fn top_args<L>(k: u64, largest: bool, list: Arg<L>) -> Vec<rask_common::graph::ErasedArg> {
    vec![
        Arg::from(k).erase(),
        Arg::from(largest).erase(),
        list.erase(),
    ]
}
