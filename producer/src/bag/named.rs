//! [`Bag`] operations by function name, over dynamically typed elements
//! ([`rmpv::Value`]): for callers without typed task handles, such as the Python package. They
//! build the same graphs as the typed operations.

use rask_common::bag_ops;
use rask_common::builtins;
use rask_common::{Arg, Delayed, Task};
use rmpv::Value;

use super::{call, Bag};

impl Bag<Value> {
    /// [`Bag::map`] with the function given by name.
    pub fn map_named(&self, function: &'static str) -> Bag<Value> {
        self.each_partition(bag_ops::MAP, function)
    }

    /// [`Bag::filter`] with the function given by name (it must return a bool).
    pub fn filter_named(&self, function: &'static str) -> Bag<Value> {
        self.each_partition(bag_ops::FILTER, function)
    }

    /// [`Bag::flat_map`] with the function given by name (it must return a list).
    pub fn flat_map_named(&self, function: &'static str) -> Bag<Value> {
        self.each_partition(bag_ops::FLAT_MAP, function)
    }

    /// [`Bag::sum`] of elements that must be numbers (an integer if all are, else a float);
    /// the sum fails naming the first element that is not a number.
    pub fn sum_values(&self) -> Delayed<Value> {
        let sum = |list: Arg<Vec<Value>>| call(builtins::sum::NAME, vec![list.erase()]);
        self.reduce(sum, sum, sum)
    }

    /// [`Bag::mean`] of elements that must be numbers (`None` for an empty bag).
    pub fn mean_values(&self) -> Delayed<Option<f64>> {
        self.reduce(
            |part| call::<(f64, u64)>(bag_ops::bag_mean_part::NAME, vec![part.erase()]),
            |parts| call(bag_ops::bag_mean_merge::NAME, vec![parts.erase()]),
            |parts| call(bag_ops::bag_mean::NAME, vec![parts.erase()]),
        )
    }
}
