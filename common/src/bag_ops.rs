//! The native operations of lazy collections (the producer's `Bag`): the names of the element-wise
//! operations workers run with a user function, and the built-in tasks every stock worker runs for
//! partitions and reductions.
//!
//! A partition is a MessagePack array stored as one task result. Element-wise operations
//! ([`MAP`], [`FILTER`], [`FLAT_MAP`], [`KEY_BY`], [`FOLD`]) call a registered function once per
//! element inside one task; the worker implements them, as they need its registry. The tasks here
//! need no user function: they build, cut and join partitions, and reduce them in two steps, once
//! per partition and then over partial results (in a tree, any number of times), so their inputs
//! and outputs are plain [`rmpv::Value`]s compared by [`compare`].

use std::cmp::Ordering;
use std::collections::BTreeMap;

use rmpv::Value;

use crate::builtins::Number;

/// `(function, partition) -> partition`: the results of `function` on each element.
pub const MAP: &str = "rask.bag.map";
/// `(function, partition) -> partition`: the elements for which `function` returns `true`.
pub const FILTER: &str = "rask.bag.filter";
/// `(function, partition) -> partition`: the concatenated lists `function` returns per element.
pub const FLAT_MAP: &str = "rask.bag.flat_map";
/// `(function, partition) -> partition`: `[function(element), element]` pairs.
pub const KEY_BY: &str = "rask.bag.key_by";
/// `(function, initial, partition) -> value`: `function(… function(initial, e0) …, en)`.
pub const FOLD: &str = "rask.bag.fold";

/// The names of the element-wise operations, which workers implement themselves.
pub const ELEMENT_OPS: [&str; 5] = [MAP, FILTER, FLAT_MAP, KEY_BY, FOLD];

crate::task! {
    /// A partition given by value: returns its elements (the leaves of a `Bag::from_iter`).
    pub fn bag_items(items: Vec<Value>) -> Vec<Value> { items }
}

crate::task! {
    /// The partitions `parts`, concatenated in order (fewer partitions).
    pub fn bag_concat(parts: Vec<Vec<Value>>) -> Vec<Value> { parts.concat() }
}

crate::task! {
    /// Piece `index` of `part` cut into `pieces` contiguous pieces whose lengths differ by at
    /// most one, the longer ones first (more partitions).
    pub fn bag_split(part: Vec<Value>, pieces: u64, index: u64) -> Result<Vec<Value>, String> {
        let range = piece(part.len(), pieces, index)
            .ok_or_else(|| format!("piece {index} of {pieces} does not exist"))?;
        Ok(part[range].to_vec())
    }
}

crate::task! {
    /// The number of elements of a partition.
    pub fn bag_count(items: Vec<Value>) -> u64 { items.len() as u64 }
}

crate::task! {
    /// The total of partial counts.
    pub fn bag_count_merge(counts: Vec<u64>) -> Result<u64, String> {
        counts
            .iter()
            .try_fold(0u64, |total, n| total.checked_add(*n))
            .ok_or_else(|| "count overflows u64".to_owned())
    }
}

crate::task! {
    /// `(sum, count)` of a partition of numbers, the partial result of a mean.
    pub fn bag_mean_part(numbers: Vec<Number>) -> (f64, u64) {
        let sum = numbers.iter().map(|n| match n {
            Number::Int(i) => *i as f64,
            Number::Float(x) => *x,
        }).sum();
        (sum, numbers.len() as u64)
    }
}

crate::task! {
    /// Partial means `(sum, count)` merged into one.
    pub fn bag_mean_merge(parts: Vec<(f64, u64)>) -> Result<(f64, u64), String> {
        merge_means(&parts)
    }
}

crate::task! {
    /// The mean of partial means `(sum, count)`: `None` if there are no elements at all.
    pub fn bag_mean(parts: Vec<(f64, u64)>) -> Result<Option<f64>, String> {
        let (sum, count) = merge_means(&parts)?;
        Ok((count > 0).then(|| sum / count as f64))
    }
}

crate::task! {
    /// The `k` largest (or smallest) elements of a partition by [`compare`], best first.
    pub fn bag_top(k: u64, largest: bool, items: Vec<Value>) -> Vec<Value> { top(k, largest, items) }
}

crate::task! {
    /// The `k` largest (or smallest) elements of partial results of [`bag_top`], best first.
    pub fn bag_top_merge(k: u64, largest: bool, parts: Vec<Vec<Value>>) -> Vec<Value> {
        top(k, largest, parts.concat())
    }
}

crate::task! {
    /// The largest (or smallest) element of partial results of [`bag_top`]; `None` if there
    /// are none (the minimum and maximum of a bag).
    pub fn bag_top_one(largest: bool, parts: Vec<Vec<Value>>) -> Option<Value> {
        top(1, largest, parts.concat()).pop()
    }
}

crate::task! {
    /// The elements of the `k` largest `[key, element]` pairs of partial results of [`bag_top`]
    /// over such pairs, best first (the end of a top-k by key).
    pub fn bag_top_by_merge(k: u64, parts: Vec<Vec<Value>>) -> Result<Vec<Value>, String> {
        top(k, true, parts.concat())
            .into_iter()
            .map(|pair| match pair {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.pop().expect("two items")),
                other => Err(format!("{other} is not a [key, element] pair")),
            })
            .collect()
    }
}

crate::task! {
    /// The distinct elements of a partition, in the order of [`compare`].
    pub fn bag_distinct(items: Vec<Value>) -> Vec<Value> { distinct(items) }
}

crate::task! {
    /// The distinct elements of partial results of [`bag_distinct`], in the order of [`compare`].
    pub fn bag_distinct_merge(parts: Vec<Vec<Value>>) -> Vec<Value> { distinct(parts.concat()) }
}

crate::task! {
    /// `[element, count]` for each distinct element of a partition, most frequent first (ties
    /// in the order of [`compare`]).
    pub fn bag_frequencies(items: Vec<Value>) -> Result<Vec<(Value, u64)>, String> {
        frequencies(items.into_iter().map(|v| (v, 1)))
    }
}

crate::task! {
    /// Partial results of [`bag_frequencies`] added up, most frequent first.
    pub fn bag_frequencies_merge(parts: Vec<Vec<(Value, u64)>>) -> Result<Vec<(Value, u64)>, String> {
        frequencies(parts.into_iter().flatten())
    }
}

/// The range of piece `index` of `len` elements cut into `pieces` contiguous pieces whose lengths
/// differ by at most one, the longer ones first; `None` if there is no such piece.
pub fn piece(len: usize, pieces: u64, index: u64) -> Option<std::ops::Range<usize>> {
    if index >= pieces {
        return None;
    }
    let (pieces, index) = (usize::try_from(pieces).ok()?, usize::try_from(index).ok()?);
    let (size, longer) = (len / pieces, len % pieces);
    let start = index * size + index.min(longer);
    let end = start + size + usize::from(index < longer);
    Some(start..end)
}

/// The sum of partial means; an error if the counts overflow (only forged partial results can).
fn merge_means(parts: &[(f64, u64)]) -> Result<(f64, u64), String> {
    parts
        .iter()
        .try_fold((0.0, 0u64), |(sum, count), (s, c)| {
            Some((sum + s, count.checked_add(*c)?))
        })
        .ok_or_else(|| "the counts of the partial means overflow u64".to_owned())
}

fn top(k: u64, largest: bool, mut items: Vec<Value>) -> Vec<Value> {
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    if largest {
        items.sort_by(|a, b| compare(b, a));
    } else {
        items.sort_by(compare);
    }
    items.truncate(k);
    items
}

fn distinct(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by(compare);
    items.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
    items
}

/// The counts of equal values added up, most frequent first; an error if a count overflows
/// (only forged partial results can).
fn frequencies(counted: impl Iterator<Item = (Value, u64)>) -> Result<Vec<(Value, u64)>, String> {
    let mut counts: BTreeMap<Ordered, u64> = BTreeMap::new();
    for (value, n) in counted {
        let count = counts.entry(Ordered(value)).or_default();
        *count = count
            .checked_add(n)
            .ok_or_else(|| "a count of equal elements overflows u64".to_owned())?;
    }
    let mut pairs: Vec<(Value, u64)> = counts.into_iter().map(|(v, n)| (v.0, n)).collect();
    // Stable: equal counts stay in value order.
    pairs.sort_by_key(|pair| std::cmp::Reverse(pair.1));
    Ok(pairs)
}

/// A value ordered by [`compare`].
struct Ordered(Value);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// The total order of values that reductions sort and compare by: first by kind (nil, booleans,
/// numbers, text, bytes, lists, maps, ext values), then numbers by value (integers and floats
/// together; floats by `total_cmp`), text and bytes bytewise, lists and maps lexicographically.
/// For numbers, text, and tuples, lists or array-encoded structs of them, this is Rust's `Ord`.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    use Value::*;
    let by_kind = rank(a).cmp(&rank(b));
    if by_kind != Ordering::Equal {
        return by_kind;
    }
    match (a, b) {
        (Boolean(x), Boolean(y)) => x.cmp(y),
        (String(x), String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Binary(x), Binary(y)) => x.cmp(y),
        (Array(x), Array(y)) => lexicographic(x.iter(), y.iter(), compare),
        (Map(x), Map(y)) => lexicographic(x.iter(), y.iter(), |(k1, v1), (k2, v2)| {
            compare(k1, k2).then_with(|| compare(v1, v2))
        }),
        (Ext(t1, d1), Ext(t2, d2)) => t1.cmp(t2).then_with(|| d1.cmp(d2)),
        _ => compare_numbers(a, b),
    }
}

fn rank(value: &Value) -> u8 {
    match value {
        Value::Nil => 0,
        Value::Boolean(_) => 1,
        Value::Integer(_) | Value::F32(_) | Value::F64(_) => 2,
        Value::String(_) => 3,
        Value::Binary(_) => 4,
        Value::Array(_) => 5,
        Value::Map(_) => 6,
        Value::Ext(..) => 7,
    }
}

fn compare_numbers(a: &Value, b: &Value) -> Ordering {
    let int = |v: &Value| match v {
        Value::Integer(i) => i.as_i64().map(i128::from).or(i.as_u64().map(i128::from)),
        _ => None,
    };
    let float = |v: &Value| match v {
        Value::Integer(i) => i.as_f64().unwrap_or(0.0),
        Value::F32(x) => f64::from(*x),
        Value::F64(x) => *x,
        _ => 0.0,
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => float(a).total_cmp(&float(b)),
    }
}

fn lexicographic<T>(
    mut a: impl Iterator<Item = T>,
    mut b: impl Iterator<Item = T>,
    cmp: impl Fn(T, T) -> Ordering,
) -> Ordering {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => match cmp(x, y) {
                Ordering::Equal => {}
                other => return other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Invocation, Task};

    fn run<T>(inv: Invocation<T>) -> T {
        match inv {
            Invocation::Blocking(f) => f().expect("succeeds"),
            Invocation::Async(_) => unreachable!("sync tasks only"),
        }
    }

    fn ints(xs: &[i64]) -> Vec<Value> {
        xs.iter().map(|x| Value::from(*x)).collect()
    }

    #[test]
    fn pieces_cover_the_range_in_order() {
        let ranges: Vec<_> = (0..4).map(|i| piece(10, 4, i).unwrap()).collect();
        assert_eq!(ranges, vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(piece(2, 3, 2), Some(2..2));
        assert_eq!(piece(2, 3, 3), None);
        assert_eq!(run(bag_split::invoke((ints(&[1, 2, 3]), 2, 1))), ints(&[3]));
    }

    #[test]
    fn values_order_like_rust_for_numbers_text_and_tuples() {
        let sorted = |mut v: Vec<Value>| {
            v.sort_by(compare);
            v
        };
        assert_eq!(
            sorted(vec![3.into(), (-1).into(), 2.5.into(), u64::MAX.into()]),
            vec![(-1).into(), 2.5.into(), 3.into(), u64::MAX.into()]
        );
        assert_eq!(
            sorted(vec!["b".into(), "ab".into(), "a".into()]),
            vec!["a".into(), "ab".into(), "b".into()]
        );
        let pair = |a: i64, b: &str| Value::Array(vec![a.into(), b.into()]);
        assert_eq!(
            sorted(vec![pair(2, "a"), pair(1, "z"), pair(1, "b")]),
            vec![pair(1, "b"), pair(1, "z"), pair(2, "a")]
        );
    }

    #[test]
    fn reductions_of_parts_and_merges() {
        assert_eq!(
            run(bag_top::invoke((2, true, ints(&[5, 1, 9, 3])))),
            ints(&[9, 5])
        );
        assert_eq!(
            run(bag_top_merge::invoke((
                3,
                false,
                vec![ints(&[1, 5]), ints(&[0, 7])]
            ))),
            ints(&[0, 1, 5])
        );
        assert_eq!(run(bag_top_one::invoke((true, vec![vec![], vec![]]))), None);
        assert_eq!(
            run(bag_distinct_merge::invoke((vec![
                ints(&[1, 2]),
                ints(&[2, 1, 0])
            ],))),
            ints(&[0, 1, 2])
        );
        assert_eq!(
            run(bag_frequencies_merge::invoke((vec![
                vec![("a".into(), 1), ("b".into(), 2)],
                vec![("a".into(), 2), ("c".into(), 3)],
            ],))),
            vec![("a".into(), 3), ("c".into(), 3), ("b".into(), 2)]
        );
        assert_eq!(run(bag_mean::invoke((vec![],))), None);
        assert_eq!(
            run(bag_mean::invoke((vec![(3.0, 2), (3.0, 1)],))),
            Some(2.0)
        );
        // Forged partial results whose counts overflow fail instead of wrapping or panicking.
        let Invocation::Blocking(mean) = bag_mean::invoke((vec![(1.0, u64::MAX), (1.0, 1)],))
        else {
            unreachable!("sync tasks only")
        };
        assert!(mean().unwrap_err().message().contains("overflow"));
        let forged = vec![vec![("a".into(), u64::MAX)], vec![("a".into(), 1)]];
        let Invocation::Blocking(merged) = bag_frequencies_merge::invoke((forged,)) else {
            unreachable!("sync tasks only")
        };
        assert!(merged().unwrap_err().message().contains("overflow"));
        let pairs = vec![vec![
            Value::Array(vec![1.into(), "x".into()]),
            Value::Array(vec![2.into(), "y".into()]),
        ]];
        assert_eq!(
            run(bag_top_by_merge::invoke((1, pairs))),
            vec![Value::from("y")]
        );
    }
}
