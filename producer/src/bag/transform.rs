//! The lazy transformations of a [`Bag`]: element-wise (`map`, `filter`, `flat_map`, run by
//! workers one task per partition) and `repartition`.

use rask_common::bag_ops;
use rask_common::{Arg, Task};

use super::{call, Bag, Part};

impl<T> Bag<T> {
    /// The results of `task` on each element (one `rask.bag.map` task per partition). Sends
    /// nothing. An element on which `task` fails fails its partition, naming the element's
    /// index in the partition and the error.
    pub fn map<F>(&self, task: F) -> Bag<F::Output>
    where
        F: Task<Args = (T,)>,
    {
        let _ = task;
        self.each_partition(bag_ops::MAP, F::NAME)
    }

    /// The elements for which `task` returns `true`, in order (one `rask.bag.filter` task per
    /// partition). Sends nothing.
    pub fn filter<F>(&self, task: F) -> Bag<T>
    where
        F: Task<Args = (T,), Output = bool>,
    {
        let _ = task;
        self.each_partition(bag_ops::FILTER, F::NAME)
    }

    /// The concatenated lists `task` returns for each element (one `rask.bag.flat_map` task
    /// per partition). Sends nothing.
    pub fn flat_map<F, U>(&self, task: F) -> Bag<U>
    where
        F: Task<Args = (T,), Output = Vec<U>>,
    {
        let _ = task;
        self.each_partition(bag_ops::FLAT_MAP, F::NAME)
    }

    /// The same elements, in the same order, in `partitions` partitions (at least one). Fewer
    /// partitions join runs of adjacent ones (`bag_concat`); more cut each one into pieces
    /// (`bag_split`). Partition sizes are not known before the bag is computed, so the new
    /// partitions are as even as the old ones were. Sends nothing; a partition that stays as
    /// it was is reused as it is.
    pub fn repartition(&self, partitions: usize) -> Bag<T> {
        let (from, to) = (self.parts.len(), partitions.max(1));
        if from == 0 {
            let empty: Vec<rmpv::Value> = Vec::new();
            let part = call(bag_ops::bag_items::NAME, vec![Arg::from(empty).erase()]);
            return Bag {
                parts: vec![Part::Lazy(part)],
            }
            .repartition(to);
        }
        let mut parts = Vec::with_capacity(to);
        if to <= from {
            for index in 0..to {
                let range = bag_ops::piece(from, to as u64, index as u64).expect("index < to");
                let group = &self.parts[range];
                parts.push(match group {
                    [one] => one.clone(),
                    _ => Part::Lazy(call(
                        bag_ops::bag_concat::NAME,
                        vec![Arg::list(group.iter().map(Part::arg)).erase()],
                    )),
                });
            }
        } else {
            for (index, part) in self.parts.iter().enumerate() {
                let pieces = bag_ops::piece(to, from as u64, index as u64)
                    .expect("index < from")
                    .len() as u64;
                if pieces == 1 {
                    parts.push(part.clone());
                    continue;
                }
                for piece in 0..pieces {
                    parts.push(Part::Lazy(call(
                        bag_ops::bag_split::NAME,
                        vec![
                            part.arg().erase(),
                            Arg::from(pieces).erase(),
                            Arg::from(piece).erase(),
                        ],
                    )));
                }
            }
        }
        Bag { parts }
    }
}
