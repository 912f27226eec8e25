//! Lazy collections (`Bag`) against real servers: a word count and a map/filter/sum over a
//! million integers matching local computations, persisted partitions reused by later
//! reductions (runs counted in Redis), a failing element named by its index, and the documented
//! results of reductions on empty, one-element and small bags.

use std::collections::HashMap;
use std::time::Instant;

use rask::builtins::{add, sum_ints};
use rask::{Bag, Client, Delayed, FailureKind};
use rask_tests::{failure, TestEnv, PATIENCE};
use rask_worker::Registry;
use serde::{Deserialize, Serialize};

rask::task! {
    /// The words of a line.
    fn words(line: String) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }
}

rask::task! {
    /// `3 x`.
    fn triple(x: i64) -> i64 { 3 * x }
}

rask::task! {
    /// Whether `x` is even.
    fn is_even(x: i64) -> bool { x % 2 == 0 }
}

rask::task! {
    /// `-x`.
    fn negate(x: i64) -> i64 { -x }
}

rask::task! {
    /// `x`, except that it fails for 30.
    fn refuse_30(x: i64) -> Result<i64, String> {
        if x == 30 { Err(format!("refusing {x}")) } else { Ok(x) }
    }
}

rask::task! {
    /// `x`, except that it panics for 7.
    fn explode_on_7(x: i64) -> i64 {
        assert_ne!(x, 7, "exploding on {x}");
        x
    }
}

/// An element that knows where to count the runs of [`counted`] on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tagged {
    redis_url: String,
    counter: String,
    x: i64,
}

rask::task! {
    /// The element's `x`, after counting the run in its Redis counter.
    async fn counted(item: Tagged) -> Result<i64, String> {
        let client = redis::Client::open(item.redis_url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("INCR")
            .arg(item.counter)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(item.x)
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<words>()
        .with::<triple>()
        .with::<is_even>()
        .with::<negate>()
        .with::<refuse_30>()
        .with::<explode_on_7>()
        .with::<counted>()
}

/// `compute` waits without a limit: bound it, so that a bug fails the test instead of hanging it.
async fn compute<T>(client: &Client, delayed: &Delayed<T>) -> rask::Result<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(PATIENCE, client.compute(delayed))
        .await
        .expect("computed within PATIENCE")
}

/// `lines` lines of 0 to 12 words drawn, unevenly, from 500 (a fixed pseudo-random sequence).
fn corpus(lines: usize) -> Vec<String> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    (0..lines)
        .map(|_| {
            let n = next() % 13;
            (0..n)
                .map(|_| format!("w{}", (next() % 100) * (next() % 100) / 20))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test]
async fn word_count_over_100000_lines_in_50_partitions_matches_a_local_count() {
    let env = TestEnv::new("bag-words").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let lines = corpus(100_000);
    let mut local: HashMap<&str, u64> = HashMap::new();
    for word in lines.iter().flat_map(|l| l.split_whitespace()) {
        *local.entry(word).or_default() += 1;
    }
    let mut expected: Vec<(String, u64)> =
        local.into_iter().map(|(w, n)| (w.to_owned(), n)).collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));

    let started = Instant::now();
    let bag = Bag::from_iter(lines.iter().cloned(), 50).flat_map(words);
    assert_eq!(bag.npartitions(), 50);
    let counts = compute(&client, &bag.frequencies()).await.unwrap();
    println!("word count of 100,000 lines: {:?}", started.elapsed());
    assert_eq!(counts.len(), expected.len());
    assert_eq!(counts, expected);
    let total: u64 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(compute(&client, &bag.count()).await.unwrap(), total);
    worker.stop().await.unwrap();
}

// Two runtime threads: the in-process worker's own work (reading and storing partitions) runs
// beside the partitions being mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_filter_sum_over_a_million_integers_matches() {
    let env = TestEnv::new("bag-million").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let started = Instant::now();
    let evens = Bag::from_iter(0..1_000_000_i64, 200)
        .map(triple)
        .filter(is_even);
    let (sum, count) = (evens.sum(), evens.count());
    let (sum, count) = tokio::join!(compute(&client, &sum), compute(&client, &count));
    println!(
        "map/filter/sum over 1,000,000 integers: {:?}",
        started.elapsed()
    );
    let local = (0..1_000_000_i64).map(|x| 3 * x).filter(|x| x % 2 == 0);
    assert_eq!(sum.unwrap(), local.clone().sum::<i64>());
    assert_eq!(count.unwrap(), local.count() as u64);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn persisted_partitions_serve_later_reductions_without_running_again() {
    let env = TestEnv::new("bag-persist").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let counter = format!("{}:test-counter:bag", env.settings.key_prefix);
    let runs = || async {
        let redis = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        let runs: Option<i64> = redis::cmd("GET")
            .arg(&counter)
            .query_async(&mut conn)
            .await
            .unwrap();
        runs.unwrap_or(0)
    };
    let items: Vec<Tagged> = (0..100)
        .map(|x| Tagged {
            redis_url: env.settings.redis_url.clone(),
            counter: counter.clone(),
            x,
        })
        .collect();
    let pipeline = |partitions| Bag::from_iter(items.clone(), partitions).map(counted);

    let kept = pipeline(4).persist(&client).await.unwrap();
    client
        .wait(&kept.futures(&client))
        .timeout(PATIENCE)
        .await
        .unwrap();
    assert_eq!(runs().await, 100, "each element mapped once");

    assert_eq!(compute(&client, &kept.count()).await.unwrap(), 100);
    assert_eq!(compute(&client, &kept.sum()).await.unwrap(), 4950);
    // Another process, by key; and the same pipeline built again (same content keys).
    let other = env.client().await;
    let by_key: Bag<i64> = Bag::from_keys(kept.keys());
    assert_eq!(compute(&other, &by_key.max()).await.unwrap(), Some(99));
    assert_eq!(
        compute(&client, &pipeline(4).mean()).await.unwrap(),
        Some(49.5)
    );
    assert_eq!(
        runs().await,
        100,
        "the reductions reused the persisted partitions"
    );

    // A different partitioning is a different pipeline: it maps again (the counter counts).
    assert_eq!(compute(&client, &pipeline(5).count()).await.unwrap(), 100);
    assert_eq!(runs().await, 200);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_element_fails_its_partition_naming_its_index_and_everything_downstream() {
    let env = TestEnv::new("bag-failure").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    // Partition 1 holds 25..50: 30 is its element 5.
    let bag = Bag::from_iter(0..100_i64, 4).map(refuse_30);
    let kept = bag.persist(&client).await.unwrap();
    let futures = kept.futures(&client);
    let f = failure(futures[1].result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Failed);
    assert_eq!(f.key, kept.keys()[1]);
    assert_eq!(f.task, "rask.bag.map");
    assert!(
        f.message.contains("element 5 (of 25)")
            && f.message.contains("refuse_30")
            && f.message.contains("refusing 30"),
        "{}",
        f.message
    );
    assert_eq!(
        futures[0].result_within(PATIENCE).await.unwrap(),
        (0..25).collect::<Vec<_>>(),
        "the other partitions are fine"
    );

    let f = failure(compute(&client, &bag.sum()).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert!(
        f.message.contains(kept.keys()[1].as_str()) && f.message.contains("element 5 (of 25)"),
        "{}",
        f.message
    );

    // A panic keeps its kind; 7 is element 2 of the second partition (5..10).
    let exploding = Bag::from_iter(0..10_i64, 2).map(explode_on_7);
    let f = failure(compute(&client, &exploding.count()).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert!(
        f.message.contains("panicked") && f.message.contains("element 2 (of 5)"),
        "{}",
        f.message
    );
    let f = failure(
        tokio::time::timeout(PATIENCE, exploding.compute(&client))
            .await
            .unwrap()
            .unwrap_err(),
    );
    assert_eq!(f.kind, FailureKind::Panicked);
    assert!(f.message.contains("exploding on 7"), "{}", f.message);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn reductions_of_empty_one_element_and_small_bags_are_as_documented() {
    let env = TestEnv::new("bag-edges").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;

    for empty in [Bag::<i64>::from_iter([], 4), Bag::from_keys([])] {
        assert_eq!(compute(&client, &empty.count()).await.unwrap(), 0);
        assert_eq!(compute(&client, &empty.sum()).await.unwrap(), 0);
        assert_eq!(compute(&client, &empty.mean()).await.unwrap(), None);
        assert_eq!(compute(&client, &empty.min()).await.unwrap(), None);
        assert_eq!(compute(&client, &empty.max()).await.unwrap(), None);
        assert!(compute(&client, &empty.top_k(3)).await.unwrap().is_empty());
        assert!(compute(&client, &empty.distinct())
            .await
            .unwrap()
            .is_empty());
        assert!(compute(&client, &empty.frequencies())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(compute(&client, &empty.fold(add, add, 0)).await.unwrap(), 0);
    }
    assert!(Bag::<i64>::from_iter([], 4)
        .compute(&client)
        .await
        .unwrap()
        .is_empty());

    let one = Bag::from_iter([7_i64], 3);
    assert_eq!(one.npartitions(), 1);
    assert_eq!(compute(&client, &one.mean()).await.unwrap(), Some(7.0));
    assert_eq!(compute(&client, &one.min()).await.unwrap(), Some(7));
    assert_eq!(compute(&client, &one.max()).await.unwrap(), Some(7));
    assert_eq!(compute(&client, &one.top_k(3)).await.unwrap(), vec![7]);
    assert_eq!(compute(&client, &one.distinct()).await.unwrap(), vec![7]);

    let small = Bag::from_iter([5_i64, 1, 9, 3, 9, 2, 1], 3);
    assert_eq!(
        compute(&client, &small.top_k(3)).await.unwrap(),
        vec![9, 9, 5]
    );
    assert!(compute(&client, &small.top_k(0)).await.unwrap().is_empty());
    assert_eq!(
        compute(&client, &small.top_k_by(3, negate)).await.unwrap(),
        vec![1, 1, 2],
        "the largest keys are the smallest elements"
    );
    assert_eq!(
        compute(&client, &small.distinct()).await.unwrap(),
        vec![1, 2, 3, 5, 9]
    );
    assert_eq!(
        compute(&client, &small.frequencies()).await.unwrap(),
        vec![(1, 2), (9, 2), (2, 1), (3, 1), (5, 1)]
    );
    assert_eq!(
        compute(&client, &small.mean()).await.unwrap(),
        Some(30.0 / 7.0)
    );
    assert_eq!(
        compute(&client, &small.fold(add, add, 0)).await.unwrap(),
        30
    );
    assert_eq!(
        compute(&client, &small.reduction(sum_ints, sum_ints))
            .await
            .unwrap(),
        30
    );
    for partitions in [1, 2, 5, 7] {
        assert_eq!(
            small
                .repartition(partitions)
                .compute(&client)
                .await
                .unwrap(),
            vec![5, 1, 9, 3, 9, 2, 1],
            "{partitions} partitions keep the order"
        );
    }
    let text = Bag::from_iter(["b", "a", "b"].map(String::from), 2);
    assert_eq!(
        compute(&client, &text.distinct()).await.unwrap(),
        vec!["a".to_owned(), "b".to_owned()]
    );
    assert_eq!(
        compute(&client, &text.min()).await.unwrap(),
        Some("a".to_owned())
    );
    worker.stop().await.unwrap();
}
