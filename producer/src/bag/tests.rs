//! Building bags: partitions, keys, graphs (no servers).

use rask_common::bag_ops::bag_items;
use rask_common::builtins::{inc, sum_ints};
use rask_common::{Task, TaskKey};

use super::*;

rask_common::task! {
    /// Test: whether `x` is even.
    fn even(x: i64) -> bool { x % 2 == 0 }
}

rask_common::task! {
    /// Test: the words of a line.
    fn words(line: String) -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() }
}

fn functions(bag: &Bag<impl Sized>) -> Vec<String> {
    bag.keys()
        .iter()
        .map(|k| k.as_str().rsplit_once('-').unwrap().0.to_owned())
        .collect()
}

#[test]
fn from_iter_makes_even_contiguous_partitions_with_content_keys() {
    let bag = Bag::from_iter(0..10_i64, 4);
    assert_eq!(bag.npartitions(), 4);
    assert_eq!(functions(&bag), vec!["bag_items"; 4]);
    assert_eq!(
        bag.keys(),
        Bag::from_iter(0..10_i64, 4).keys(),
        "same items, same keys"
    );
    assert_ne!(bag.keys(), Bag::from_iter(0..10_i64, 3).keys());
    let sizes = [3, 3, 2, 2];
    let mut start = 0;
    for (key, size) in bag.keys().iter().zip(sizes) {
        let chunk: Vec<i64> = (start..start + size).collect();
        start += size;
        let expected = call::<Vec<i64>>(bag_items::NAME, vec![Arg::from(chunk).erase()]);
        assert_eq!(key, expected.key());
    }
    assert_eq!(
        Bag::from_iter(0..2_i64, 5).npartitions(),
        2,
        "no more partitions than items"
    );
    assert_eq!(
        Bag::<i64>::from_iter([], 5).npartitions(),
        1,
        "one empty partition"
    );
}

#[test]
fn transformations_build_one_task_per_partition_and_send_nothing() {
    let bag = Bag::from_iter(0..100_i64, 8).map(inc).filter(even);
    assert_eq!(functions(&bag), vec![bag_ops::FILTER; 8]);
    let lines = Bag::from_iter(["a b".to_owned()], 1).flat_map(words);
    assert_eq!(functions(&lines), vec![bag_ops::FLAT_MAP]);
    let again = Bag::from_iter(0..100_i64, 8).map(inc).filter(even);
    assert_eq!(bag.keys(), again.keys());
    let dot = bag.to_dot();
    assert!(
        dot.contains("rask.bag.map") && dot.contains("rask.bag.filter"),
        "{dot}"
    );
    assert_eq!(dot.matches("label=\"bag_items").count(), 8, "{dot}");
}

#[test]
fn reductions_combine_in_a_tree() {
    let bag = Bag::from_iter(0..1000_i64, 40);
    let count = bag.count();
    assert!(count.key().as_str().starts_with("bag_count_merge-"));
    let dot = count.to_dot();
    // 40 leaves, ceil(40 / 16) = 3 merges, one root.
    assert_eq!(dot.matches("label=\"bag_count\\n").count(), 40, "{dot}");
    assert_eq!(dot.matches("label=\"bag_count_merge").count(), 4, "{dot}");
    let small = Bag::from_iter(0..10_i64, 2);
    assert_eq!(small.sum().node().deps().len(), 2);
    assert_eq!(
        small.reduction(sum_ints, sum_ints).node().function(),
        sum_ints::NAME
    );
    let empty: Bag<i64> = Bag::from_keys([]);
    assert_eq!(empty.mean().node().deps().len(), 0);
}

#[test]
fn repartition_joins_or_cuts_and_keeps_what_stays() {
    let bag = Bag::from_iter(0..100_i64, 6);
    assert_eq!(bag.repartition(6).keys(), bag.keys());
    let fewer = bag.repartition(4);
    assert_eq!(
        functions(&fewer),
        vec!["bag_concat", "bag_concat", "bag_items", "bag_items"]
    );
    let more = bag.repartition(8);
    assert_eq!(more.npartitions(), 8);
    assert_eq!(functions(&more)[..4], ["bag_split"; 4]);
    assert_eq!(functions(&more)[4..], ["bag_items"; 4]);
    let stored: Bag<i64> = Bag::from_keys([TaskKey::new("bag_items-x").unwrap()]);
    assert_eq!(stored.repartition(3).npartitions(), 3);
    assert_eq!(Bag::<i64>::from_keys([]).repartition(2).npartitions(), 2);
}

#[test]
fn options_go_on_the_tasks_making_the_partitions_not_on_their_inputs() {
    let options = rask_common::TaskOptions::new()
        .priority(3)
        .time_limit(std::time::Duration::from_secs(2));
    let items = Bag::from_iter(0..10_i64, 3);
    let mapped = items.map(inc).with_options(options.clone());
    assert_eq!(mapped.keys(), items.map(inc).keys(), "keys do not change");
    for part in &mapped.parts {
        let Part::Lazy(delayed) = part else {
            panic!("mapped partitions are calls")
        };
        assert_eq!(delayed.node().options(), &options);
        for input in delayed.node().deps() {
            let rask_common::graph::Dep::Node(input) = input else {
                panic!("the input is a call")
            };
            assert_eq!(input.options(), &rask_common::TaskOptions::default());
        }
    }
    let stored = Bag::<i64>::from_keys([TaskKey::new("kept-1").unwrap()]).with_options(options);
    assert_eq!(stored.keys(), vec![TaskKey::new("kept-1").unwrap()]);
}
