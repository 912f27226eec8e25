//! Lazy task graphs against real servers: results, reuse of identical work (content keys, and
//! published markers: a graph persisted again, by any producer, does not run again what is
//! queued), persisted graphs finishing without their producer, registrations retried or repeated,
//! failures propagating downstream, and large graphs (1,024-leaf reduction tree, 1,000- and
//! 20,000-input fan-ins, 10,000 nodes). `scripts/test.sh` runs them on a Redis Cluster too.

use std::time::Duration;

use rask::builtins::{add, inc, sleep_ms, sum_ints};
use rask::{Arg, Client, Delayed, FailureKind, Future, TaskKey};
use rask_common::dependencies::{Batch, ReadyTask, Registration};
use rask_common::events::{Origin, Recorder};
use rask_common::message::encode_value;
use rask_common::{Outcome, Store, TaskMessage};
use rask_tests::runs::{ready_workers, until_stored};
use rask_tests::{failure, Counter, TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// Returns `x` after counting its run in the Redis counter `counter`.
    async fn counted(redis_url: String, counter: String, x: i64) -> Result<i64, String> {
        let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("INCR")
            .arg(counter)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(x)
    }
}

rask::task! {
    /// `x`, except that it fails for `bad`.
    fn fail_on(x: i64, bad: i64) -> Result<i64, String> {
        if x == bad { Err(format!("refusing {x}")) } else { Ok(x) }
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<counted>()
        .with::<fail_on>()
}

/// `x` through [`counted`], counted by `runs`.
fn wrap(runs: &Counter, x: impl Into<Arg<i64>>) -> Delayed<i64> {
    counted.delayed(runs.url.clone(), runs.key.clone(), x)
}

/// A binary reduction tree of `add` over `leaves`.
fn reduce(mut level: Vec<Delayed<i64>>) -> Delayed<i64> {
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => add.delayed(a, b),
                [a] => a.clone(),
                _ => unreachable!("chunks of two"),
            })
            .collect();
    }
    level.pop().expect("at least one leaf")
}

/// Far above any graph's size: over leaves `inc(BIG + i)`, a sum of `n` leaves lies in
/// `[n * BIG, (n + 1) * BIG)`, so every node of a reduction holds a value no other node holds.
const BIG: i64 = 1 << 40;

/// Reads each of `nodes` by its key and checks that it holds its own value: the root alone
/// cannot tell two swapped results apart.
async fn assert_each_node(client: &Client, nodes: &[(Delayed<i64>, i64)]) {
    let futures: Vec<Future<i64>> = nodes
        .iter()
        .map(|(node, _)| client.future(node.key().clone()))
        .collect();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    for ((node, expected), value) in nodes.iter().zip(values) {
        assert_eq!(value, *expected, "{}", node.key());
    }
}

async fn persisted_value(future: &Future<i64>) -> rask::Result<i64> {
    future.result_within(PATIENCE).await
}

/// `compute` waits without a limit: bound it, so that a bug fails the test instead of hanging it.
async fn within<T>(compute: impl std::future::Future<Output = rask::Result<T>>) -> rask::Result<T> {
    tokio::time::timeout(PATIENCE, compute)
        .await
        .expect("computed within PATIENCE")
}

#[tokio::test]
async fn a_diamond_computes_and_runs_the_shared_top_once() {
    let env = TestEnv::new("diamond").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "top");
    let top = wrap(&runs, inc.delayed(1)); // 2
    let left = add.delayed(&top, 10); // 12
    let right = add.delayed(wrap(&runs, inc.delayed(1)), 20); // the same top, built again: 22
    let bottom = add.delayed(left, right); // 34
    let future = client.persist(&bottom).await.unwrap();
    assert_eq!(persisted_value(&future).await.unwrap(), 34);
    assert_eq!(runs.runs().await, 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_reduction_tree_over_1024_leaves_on_two_worker_processes() {
    let env = TestEnv::new("tree").await;
    let _workers = env.spawn_workers(2);
    let client = env.client().await;
    // Every node with its value, level by level.
    let mut level: Vec<(Delayed<i64>, i64)> = (0..1024)
        .map(|i| (inc.delayed(BIG + i), BIG + i + 1))
        .collect();
    let mut nodes = level.clone();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| (add.delayed(&pair[0].0, &pair[1].0), pair[0].1 + pair[1].1))
            .collect();
        nodes.extend(level.iter().cloned());
    }
    let (root, expected) = &level[0];
    let future = client.persist(root).await.unwrap();
    assert_eq!(persisted_value(&future).await.unwrap(), *expected);
    assert_eq!(nodes.len(), 2047);
    assert_each_node(&client, &nodes).await;
}

#[tokio::test]
async fn a_persisted_graph_finishes_without_its_producer() {
    let env = TestEnv::new("persist").await;
    let worker = env.run_worker(registry());
    let first = env.client().await;
    let root = reduce((0..64).map(|i| inc.delayed(i)).collect());
    let key = first.persist(&root).await.unwrap().key().clone();
    first.close().await.unwrap();
    drop(first);
    drop(root);

    let second = env.client().await;
    let future: Future<i64> = second.future(TaskKey::new(key.as_str()).unwrap());
    assert_eq!(
        persisted_value(&future).await.unwrap(),
        (1..=64).sum::<i64>()
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn compute_reuses_persisted_inputs() {
    let env = TestEnv::new("reuse").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "input");
    let input = client.persist(&wrap(&runs, 41)).await.unwrap();
    assert_eq!(persisted_value(&input).await.unwrap(), 41);

    // By future, and by rebuilding the same call (same content key): neither runs it again.
    assert_eq!(
        within(client.compute(&add.delayed(&input, 1)))
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        within(client.compute(&add.delayed(wrap(&runs, 41), 2)))
            .await
            .unwrap(),
        43
    );
    assert_eq!(runs.runs().await, 1);

    // A future of a plain submit works too, finished or not.
    let plain = client.submit(inc, (1,)).await.unwrap();
    let pair = [
        add.delayed(&plain, Arg::key(input.key().clone())),
        inc.delayed(&plain),
    ];
    assert_eq!(
        within(client.compute_many(&pair)).await.unwrap(),
        vec![43, 3]
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn impure_calls_run_every_time() {
    let env = TestEnv::new("impure").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "impure");
    let twice = [wrap(&runs, 1).impure(), wrap(&runs, 1).impure()];
    assert_ne!(twice[0].key(), twice[1].key());
    assert_eq!(
        within(client.compute_many(&twice)).await.unwrap(),
        vec![1, 1]
    );
    assert_eq!(runs.runs().await, 2);
    worker.stop().await.unwrap();
}

/// Ready messages in `env`'s task queue (none is being consumed when a test reads it).
async fn queued(env: &TestEnv) -> u32 {
    env.queue_depth(&env.settings.queue).await.0
}

/// `leaves` counted leaves `BIG + from + i` (options `options`) under a reduction tree; every
/// node with its value, the root last.
fn counted_tree(
    runs: &Counter,
    from: i64,
    leaves: i64,
    options: &rask::TaskOptions,
) -> Vec<(Delayed<i64>, i64)> {
    let mut level: Vec<(Delayed<i64>, i64)> = (from..from + leaves)
        .map(|i| (wrap(runs, BIG + i).with_options(options.clone()), BIG + i))
        .collect();
    let mut nodes = level.clone();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [(a, x), (b, y)] => (add.delayed(a, b), x + y),
                [one] => one.clone(),
                _ => unreachable!("chunks of two"),
            })
            .collect();
        nodes.extend(level.iter().cloned());
    }
    nodes
}

#[tokio::test]
async fn ready_sources_alike_share_batch_messages_and_each_keeps_its_own_result() {
    let env = TestEnv::new("sourcebatches").await;
    let client = env.client().await;
    let runs = Counter::new(&env, "leaves");
    // 40 leaves, 10 per message as their options say.
    let set = counted_tree(&runs, 0, 40, &rask::TaskOptions::new().batch(10));
    // 40 more without a size: as many per message as the run time workers measured allows
    // (2 ms / 100 µs = 20).
    let store = Store::connect(&env.settings).await.unwrap();
    let pace = Duration::from_micros(100);
    rask_common::batch::publish_pace(&store, &[("counted".to_owned(), pace)])
        .await
        .unwrap();
    let paced = counted_tree(&runs, 40, 40, &rask::TaskOptions::new());
    // No worker yet: what is queued is what the producer published.
    let first = client.persist(&set.last().unwrap().0).await.unwrap();
    assert_eq!(queued(&env).await, 4, "40 sources in 4 messages");
    let second = client.persist(&paced.last().unwrap().0).await.unwrap();
    assert_eq!(queued(&env).await, 4 + 2, "40 more in 2 messages");
    let worker = env.run_worker(registry());
    for (future, nodes) in [(first, &set), (second, &paced)] {
        let root = nodes.last().unwrap().1;
        assert_eq!(persisted_value(&future).await.unwrap(), root);
        assert_each_node(&client, nodes).await;
    }
    assert_eq!(runs.runs().await, 80, "each source ran once");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn identical_graphs_from_producers_share_their_results() {
    let env = TestEnv::new("twoproducers").await;
    let (a, b, c) = (env.client().await, env.client().await, env.client().await);
    let (leaf_runs, root_runs) = (Counter::new(&env, "leaves"), Counter::new(&env, "root"));
    let graph = || {
        let leaves: Vec<Delayed<i64>> = (0..50).map(|i| wrap(&leaf_runs, i)).collect();
        wrap(&root_runs, sum_ints.delayed(leaves))
    };
    // No worker yet: the first producer's leaves are queued, confirmed and so marked published
    // when the second producer persists the same graph, which leaves them to the queue.
    let first = a.persist(&graph()).await.unwrap();
    assert_eq!(queued(&env).await, 50);
    let second = b.persist(&graph()).await.unwrap();
    assert_eq!(
        queued(&env).await,
        50,
        "the second producer published nothing"
    );
    let worker = env.run_worker(registry());
    assert_eq!(persisted_value(&first).await.unwrap(), 1225);
    assert_eq!(persisted_value(&second).await.unwrap(), 1225);
    // Every leaf ran before the root was released, and nothing else was queued.
    assert_eq!(leaf_runs.runs().await, 50, "each leaf ran once");
    assert_eq!(root_runs.runs().await, 1);
    // Once the results are stored, the same graph runs nothing again.
    assert_eq!(within(c.compute(&graph())).await.unwrap(), 1225);
    assert_eq!((leaf_runs.runs().await, root_runs.runs().await), (50, 1));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_dependent_released_and_queued_is_not_published_again() {
    let env = TestEnv::new("releasedonce").await;
    let (a, b) = (env.client().await, env.client().await);
    let runs = Counter::new(&env, "dependent");
    let input = rask_common::graph::content_key("scatter", &encode_value(&9_100_i64).unwrap());
    let graph = || wrap(&runs, Arg::key(input.clone()));
    // Waits for a value not yet scattered; no worker runs.
    let first = a.persist(&graph()).await.unwrap();
    assert_eq!(queued(&env).await, 0);
    // Scattering releases it as a worker's store would: the release marks it published, and
    // the scattering client publishes it.
    a.scatter([9_100_i64]).await.unwrap();
    assert_eq!(queued(&env).await, 1);
    let second = b.persist(&graph()).await.unwrap();
    assert_eq!(
        queued(&env).await,
        1,
        "the second producer published nothing"
    );
    let worker = env.run_worker(registry());
    assert_eq!(persisted_value(&first).await.unwrap(), 9_100);
    assert_eq!(persisted_value(&second).await.unwrap(), 9_100);
    assert_eq!(runs.runs().await, 1);
    worker.stop().await.unwrap();
}

/// Five counted leaves (values `from..from + 5`) and their sum, the sum last.
fn counted_sum(runs: &Counter, from: i64) -> Vec<Delayed<i64>> {
    let leaves: Vec<Delayed<i64>> = (from..from + 5).map(|i| wrap(runs, i)).collect();
    let total = sum_ints.delayed(leaves.clone());
    leaves.into_iter().chain([total]).collect()
}

#[tokio::test]
async fn a_graph_persisted_again_after_its_results_are_released_runs_again() {
    let env = TestEnv::new("rerelease").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "leaves");
    let expected = (9_200..9_205).sum::<i64>();
    let nodes = counted_sum(&runs, 9_200);
    let root = nodes.last().unwrap();
    assert_eq!(within(client.compute(root)).await.unwrap(), expected);
    assert_eq!(runs.runs().await, 5);
    let keys: Vec<TaskKey> = nodes.iter().map(|n| n.key().clone()).collect();
    assert_eq!(client.release(&keys).await.unwrap(), 6);
    // Released results leave no marker behind that would keep the graph from running.
    assert_eq!(within(client.compute(root)).await.unwrap(), expected);
    assert_eq!(runs.runs().await, 10);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_graph_persisted_again_after_a_purge_runs() {
    let env = TestEnv::new("repurge").await;
    let client = env.client().await;
    let runs = Counter::new(&env, "leaves");
    let nodes = counted_sum(&runs, 9_300);
    let root = nodes.last().unwrap();
    // Queued and marked published; then the purge empties the queue and forgets the graph.
    client.persist(root).await.unwrap();
    assert_eq!(queued(&env).await, 5);
    assert_eq!(client.purge().await.unwrap().0, 5);
    assert_eq!(queued(&env).await, 0);
    // Persisted again, its leaves are published again: no marker vouches for purged messages.
    let future = client.persist(root).await.unwrap();
    assert_eq!(queued(&env).await, 5);
    let worker = env.run_worker(registry());
    assert_eq!(
        persisted_value(&future).await.unwrap(),
        (9_300..9_305).sum::<i64>()
    );
    assert_eq!(runs.runs().await, 5, "the purged messages never ran");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_leaf_fails_everything_downstream_naming_it() {
    let env = TestEnv::new("failure").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let runs = Counter::new(&env, "downstream");
    let leaves: Vec<Delayed<i64>> = (0..16).map(|i| fail_on.delayed(i, 5)).collect();
    let bad = leaves[5].key().clone();
    let root = wrap(&runs, reduce(leaves));
    let error = client.persist(&root).await.unwrap();
    let f = failure(persisted_value(&error).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert_eq!(&f.key, root.key());
    assert!(
        f.message.contains(bad.as_str())
            && f.message.contains("fail_on")
            && f.message.contains("refusing 5"),
        "{}",
        f.message
    );
    assert_eq!(
        runs.runs().await,
        0,
        "nothing downstream of the failure runs"
    );
    // A sibling branch without the failure still succeeds.
    let fine = reduce((0..4).map(|i| fail_on.delayed(i, 5)).collect());
    assert_eq!(within(client.compute(&fine)).await.unwrap(), 6);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_fan_in_of_1000_inputs() {
    let env = TestEnv::new("fanin").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let inputs: Vec<(Delayed<i64>, i64)> = (0..1000).map(|i| (inc.delayed(i), i + 1)).collect();
    let total = sum_ints.delayed(
        inputs
            .iter()
            .map(|(input, _)| input.clone())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        within(client.compute(&total)).await.unwrap(),
        (1..=1000).sum::<i64>()
    );
    assert_each_node(&client, &inputs).await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_graph_of_10000_nodes_on_two_worker_processes() {
    let env = TestEnv::new("graph10k").await;
    let _workers = env.spawn_workers(2);
    let client = env.client().await;
    let mut nodes: Vec<(Delayed<i64>, i64)> = Vec::with_capacity(10_000);
    let groups: Vec<Delayed<i64>> = (0..100)
        .map(|g| {
            let leaves: Vec<(Delayed<i64>, i64)> = (0..99)
                .map(|i| BIG + g * 99 + i)
                .map(|x| (inc.delayed(x), x + 1))
                .collect();
            let sum = leaves.iter().map(|(_, value)| value).sum();
            let group = sum_ints.delayed(
                leaves
                    .iter()
                    .map(|(leaf, _)| leaf.clone())
                    .collect::<Vec<_>>(),
            );
            nodes.extend(leaves);
            nodes.push((group.clone(), sum));
            group
        })
        .collect();
    let root = sum_ints.delayed(groups);
    let expected = (0..9900).map(|x| BIG + x + 1).sum::<i64>();
    let future = client.persist(&root).await.unwrap();
    assert_eq!(persisted_value(&future).await.unwrap(), expected);
    nodes.push((root, expected));
    assert_eq!(nodes.len(), 10_001);
    assert_each_node(&client, &nodes).await;
}

/// The messages of a fan-in over `leaves` plain `inc` calls (values unique to the test) and of
/// its leaves: what `persist` registers for the fan-in.
fn fan_in(leaves: std::ops::Range<i64>) -> (Delayed<i64>, Vec<TaskMessage>) {
    let leaves: Vec<Delayed<i64>> = leaves.map(|i| inc.delayed(i)).collect();
    let total = sum_ints.delayed(leaves.clone());
    let messages = leaves
        .iter()
        .map(|input| input.node().message().unwrap())
        .chain([total.node().message().unwrap()])
        .collect();
    (total, messages)
}

#[tokio::test]
async fn a_registration_retried_after_its_reply_was_lost_runs_the_graph() {
    let env = TestEnv::new("relost").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let (total, messages) = fan_in(7_000..7_005);
    // A first attempt that committed and whose reply was lost: nothing was published.
    let first = store.register_tasks(&messages).await.unwrap();
    assert_eq!(first.last(), Some(&Registration::Waiting));
    // `persist` registers again, as its retry does, and must publish the ready leaves.
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let future = client.persist(&total).await.unwrap();
    assert_eq!(
        persisted_value(&future).await.unwrap(),
        (7_001..=7_005).sum::<i64>()
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_registration_cut_short_after_writing_its_records_is_repaired_by_persisting_again() {
    let env = TestEnv::new("recut").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let (total, messages) = fan_in(8_000..8_005);
    // What a Redis Cluster's registration leaves when it fails after its first step: every
    // task's record, the fan-in's pending set with every input, and no dependents links.
    let keys = store.keys();
    let mut records = redis::pipe();
    for message in &messages {
        records
            .cmd("SET")
            .arg(keys.task(&message.key))
            .arg(message.encode().unwrap())
            .ignore();
        if !message.deps.is_empty() {
            let deps: Vec<&str> = message.deps.iter().map(TaskKey::as_str).collect();
            records
                .cmd("SADD")
                .arg(keys.pending(&message.key))
                .arg(deps)
                .ignore();
        }
    }
    records
        .query_async::<()>(&mut store.connection())
        .await
        .unwrap();
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let future = client.persist(&total).await.unwrap();
    assert_eq!(
        persisted_value(&future).await.unwrap(),
        (8_001..=8_005).sum::<i64>()
    );
    worker.stop().await.unwrap();
}

/// Lua's `unpack` fails beyond about 8,000 values: the scripts take a fan-in's inputs in chunks
/// (on a Redis Cluster, when registering it and when releasing it).
#[tokio::test]
async fn a_fan_in_of_20000_inputs_stored_before_or_after_it_is_registered() {
    let env = TestEnv::new("scatter20k").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    // Stored before: registering finds every input stored at once.
    let before = client.scatter(0..20_000_i64).await.unwrap();
    let sum_before = sum_ints.delayed(Arg::list(before.iter().map(Arg::from)));
    assert_eq!(
        within(client.compute(&sum_before)).await.unwrap(),
        (0..20_000).sum::<i64>()
    );
    // Stored after: one store releases every input of the waiting fan-in at once.
    let values: Vec<i64> = (20_000..40_000).collect();
    let keys: Vec<TaskKey> = values
        .iter()
        .map(|v| rask_common::graph::content_key("scatter", &encode_value(v).unwrap()))
        .collect();
    let sum_after = sum_ints.delayed(Arg::list(keys.iter().cloned().map(Arg::key)));
    let future = client.persist(&sum_after).await.unwrap();
    assert!(!future.done().await.unwrap());
    let after = client.scatter(values).await.unwrap();
    assert_eq!(
        after.iter().map(|f| f.key().clone()).collect::<Vec<_>>(),
        keys
    );
    assert_eq!(
        persisted_value(&future).await.unwrap(),
        (20_000..40_000).sum::<i64>()
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_graph_task_too_large_to_publish_is_refused_at_persist() {
    let mut env = TestEnv::new("toolarge").await;
    env.settings.max_message_bytes = 1024;
    let store = Store::connect(&env.settings).await.unwrap();
    let client = env.client().await;
    let input = inc.delayed(9_000);
    // Waits for `input`, so it would be published by the worker that stores `input`.
    let big = sum_ints.delayed(Arg::list(
        (0..400_i64)
            .map(|i| Arg::from(i * 1_000_000))
            .chain([Arg::from(&input)]),
    ));
    let root = add.delayed(&big, 1);
    let error = client.persist(&root).await.unwrap_err();
    match error {
        rask::Error::TooLarge { key, bytes, max } => {
            assert_eq!(&key, big.key(), "names the task too large");
            assert!(bytes > 1024, "{bytes}");
            assert_eq!(max, 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Refused before anything was registered.
    let mut conn = store.connection();
    for key in [input.key(), big.key(), root.key()] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(store.keys().task(key))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{key} was not registered");
    }
}

#[tokio::test]
async fn registering_and_releasing_are_idempotent() {
    let env = TestEnv::new("idempotent").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let (a, b) = (inc.delayed(1), inc.delayed(2));
    let c = add.delayed(&a, &b);
    let message = c.node().message().unwrap();
    assert_eq!(message.deps, vec![a.key().clone(), b.key().clone()]);
    let registered = store
        .register_tasks(std::slice::from_ref(&message))
        .await
        .unwrap();
    assert_eq!(registered, vec![Registration::Waiting]);
    // Registering is idempotent too: again, it answers what the task needs now.
    let register = || store.register_tasks(std::slice::from_ref(&message));
    assert_eq!(register().await.unwrap(), vec![Registration::Waiting]);

    // What a worker does per stored batch: store (write-once), release, announce.
    let value = |x: i64| Outcome::Value(encode_value(&x).unwrap()).encode().unwrap();
    let a_done = [(a.key().clone(), value(2))];
    let b_done = [(b.key().clone(), value(3))];
    assert!(store.store_and_release(&a_done).await.unwrap().is_empty());
    assert_eq!(register().await.unwrap(), vec![Registration::Waiting]);
    // Released tasks come back as their stored records, published as they are.
    let released = vec![ReadyTask::from_message(&message).unwrap()];
    assert_eq!(store.store_and_release(&b_done).await.unwrap(), released);
    // Released, and so marked published: registering again leaves it to the releasing worker.
    assert_eq!(register().await.unwrap(), vec![Registration::Known]);
    // That worker died before publishing and acking: the redelivered tasks release `c` again,
    // marked or not, so it is not lost.
    assert_eq!(store.store_and_release(&b_done).await.unwrap(), released);
    assert_eq!(store.store_and_release(&a_done).await.unwrap(), released);
    // Once `c` has a result, nothing releases it any more.
    assert!(store
        .store_and_release(&[(c.key().clone(), value(5))])
        .await
        .unwrap()
        .is_empty());
    assert!(store.store_and_release(&b_done).await.unwrap().is_empty());
    assert_eq!(register().await.unwrap(), vec![Registration::Known]);
}

/// Whether `key` exists in the store.
async fn exists(store: &Store, key: String) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut store.connection())
        .await
        .unwrap()
}

/// A published marker says that a task's message is queued and its result will come, so it
/// must never outlive its record or its result: a `persist` finding it would wait for ever.
#[tokio::test]
async fn a_published_marker_lives_only_while_its_task_has_a_record_and_no_result() {
    let env = TestEnv::new("marker").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let task = inc.delayed(9_400);
    let key = task.key().clone();
    let message = task.node().message().unwrap();
    let register = || store.register_tasks(std::slice::from_ref(&message));
    let marker = || store.keys().published(&key);
    let mark = || store.mark_published(std::slice::from_ref(&key));

    assert_eq!(register().await.unwrap(), vec![Registration::Ready]);
    // Registered again before its producer marked it (a retry after a lost reply): ready.
    assert_eq!(register().await.unwrap(), vec![Registration::Ready]);
    mark().await.unwrap();
    assert_eq!(register().await.unwrap(), vec![Registration::Known]);
    let (record_ttl, marker_ttl): (i64, i64) = redis::pipe()
        .cmd("PTTL")
        .arg(store.keys().task(&key))
        .cmd("PTTL")
        .arg(marker())
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert!(
        0 < marker_ttl && marker_ttl <= record_ttl,
        "{marker_ttl} ms, record {record_ttl} ms"
    );

    // Released: no marker, the record kept (lineage); registered again, it is ready again.
    assert_eq!(store.delete(std::slice::from_ref(&key)).await.unwrap(), 0);
    assert!(!exists(&store, marker()).await);
    assert!(exists(&store, store.keys().task(&key)).await);
    assert_eq!(register().await.unwrap(), vec![Registration::Ready]);
    // Once the record is gone (expired), nothing is marked.
    redis::cmd("DEL")
        .arg(store.keys().task(&key))
        .query_async::<()>(&mut store.connection())
        .await
        .unwrap();
    mark().await.unwrap();
    assert!(!exists(&store, marker()).await, "no record, no marker");

    // A marker left without a record (say, a record that expired before it) vouches for
    // nothing: registering writes the record anew and deletes the marker.
    redis::cmd("SET")
        .arg(marker())
        .arg("1")
        .query_async::<()>(&mut store.connection())
        .await
        .unwrap();
    assert_eq!(register().await.unwrap(), vec![Registration::Ready]);
    assert!(!exists(&store, marker()).await);

    // Storing the result deletes the marker, and a result stored first is never marked.
    mark().await.unwrap();
    assert!(exists(&store, marker()).await);
    let value = Outcome::Value(encode_value(&9_401_i64).unwrap())
        .encode()
        .unwrap();
    store
        .store_and_release(&[(key.clone(), value)])
        .await
        .unwrap();
    assert!(!exists(&store, marker()).await);
    mark().await.unwrap();
    assert!(!exists(&store, marker()).await);
    assert_eq!(register().await.unwrap(), vec![Registration::Known]);
}

#[tokio::test]
async fn a_graph_survives_its_worker_being_killed() {
    let env = TestEnv::new("killed").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let mut first = ready_workers(&env, 1).await;
    let client = env.client().await;
    let start = sleep_ms.delayed(200);
    let mut chain = start.clone();
    for _ in 0..14 {
        chain = sleep_ms.delayed(chain);
    }
    let future = client.persist(&chain).await.unwrap();
    // The worker consumed the chain's first task and stored its result: it is in the chain.
    let started: Future<u64> = client.future(start.key().clone());
    until_stored(&env, &store, std::slice::from_ref(&started), 1).await;
    first[0].kill().await.unwrap();
    assert!(
        !future.done().await.unwrap(),
        "the chain outlives the first worker"
    );
    let _second = env.spawn_workers(1);
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 200);
}

#[tokio::test]
async fn scattered_values_are_graph_inputs_and_gatherable() {
    let env = TestEnv::new("scatter").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let data = client.scatter([10_i64, 20, 30]).await.unwrap();
    assert!(data[0].key().as_str().starts_with("scatter-"));
    let again = client.scatter([20_i64]).await.unwrap();
    assert_eq!(again[0].key(), data[1].key(), "content addressed");
    let sums: Vec<Delayed<i64>> = data.iter().map(|d| add.delayed(d, 1)).collect();
    assert_eq!(
        within(client.compute_many(&sums)).await.unwrap(),
        vec![11, 21, 31]
    );
    let total = sum_ints.delayed(Arg::list(data.iter().map(Arg::from)));
    assert_eq!(within(client.compute(&total)).await.unwrap(), 60);
    assert_eq!(
        client.gather(&data).timeout(PATIENCE).await.unwrap(),
        vec![10, 20, 30]
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn scattering_releases_graph_tasks_waiting_for_it() {
    let env = TestEnv::new("scatterlate").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    // The graph is submitted before the data it names exists.
    let key = rask_common::graph::content_key("scatter", &encode_value(&5_i64).unwrap());
    let future = client
        .persist(&inc.delayed(Arg::key(key.clone())))
        .await
        .unwrap();
    assert!(!future.done().await.unwrap());
    let data = client.scatter([5_i64]).await.unwrap();
    assert_eq!(data[0].key(), &key);
    assert_eq!(persisted_value(&future).await.unwrap(), 6);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn wait_returns_once_every_outcome_is_stored_failures_included() {
    let env = TestEnv::new("wait").await;
    let client = env.client().await;
    let slow = client.submit(sleep_ms, (300,)).await.unwrap();
    let failing = client.submit(fail_on, (5, 5)).await.unwrap();
    let error = client
        .wait(std::slice::from_ref(&slow))
        .timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    let worker = env.run_worker(registry());
    client
        .wait(std::slice::from_ref(&failing))
        .timeout(PATIENCE)
        .await
        .unwrap();
    client
        .wait(std::slice::from_ref(&slow))
        .timeout(PATIENCE)
        .await
        .unwrap();
    assert!(slow.done().await.unwrap() && failing.done().await.unwrap());
    assert_eq!(slow.result().await.unwrap(), 300);
    assert!(failing.result().await.is_err());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn cancelling_fails_the_task_and_its_dependents_but_keeps_outcomes() {
    let env = TestEnv::new("cancel").await;
    let client = env.client().await;
    // No worker yet: `inc` is queued, `add` waits for it.
    let first = inc.delayed(1);
    let second = add.delayed(&first, 2);
    let root = client.persist(&second).await.unwrap();
    let done = client.scatter([7_i64]).await.unwrap();
    let cancelled: Future<i64> = client.future(first.key().clone());
    let both = [cancelled.clone(), done[0].clone()];
    assert_eq!(
        client.cancel(&both).await.unwrap(),
        1,
        "only the unfinished one"
    );

    let worker = env.run_worker(registry());
    let f = failure(cancelled.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    assert_eq!(f.task, "inc");
    let f = failure(persisted_value(&root).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert!(
        f.message.contains(first.key().as_str()) && f.message.contains("cancelled"),
        "{}",
        f.message
    );
    assert_eq!(done[0].result_within(PATIENCE).await.unwrap(), 7);
    // The queued `inc` runs (before or alongside the sentinel); the cancellation stays.
    let sentinel = client.submit(inc, (0,)).await.unwrap();
    assert_eq!(sentinel.result_within(PATIENCE).await.unwrap(), 1);
    let f = failure(cancelled.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Cancelled);
    worker.stop().await.unwrap();
}

/// A worker's batch of continued graph tasks ([`Batch::Graph`]) is stored and released by one
/// script call in the pipeline that stores it, with the same answers as the two-step path
/// ([`Batch::Unknown`]): in one batch, outcomes that release a dependent, one whose dependent
/// still waits for another input, and one without dependents; a redelivered batch releases
/// again; and a Redis that forgot its scripts (restarted) still stores and releases.
#[tokio::test]
async fn one_script_call_stores_and_releases_a_batch_some_releasing_and_some_not() {
    let env = TestEnv::new("fusedbatch").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let recorder = Recorder::new(&store, &env.settings, Origin::Worker("w-fused".into()));
    let value = |x: i64| Outcome::Value(encode_value(&x).unwrap()).encode().unwrap();
    for (n, batch) in [
        (0_i64, Batch::Graph),
        (1, Batch::Unknown),
        (2, Batch::Graph),
    ] {
        if n == 2 && !store.keys().is_clustered() {
            redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async::<()>(&mut store.connection())
                .await
                .unwrap();
        }
        let base = 9_700 + 10 * n;
        let (a, b, c, d) = (
            inc.delayed(base),
            inc.delayed(base + 1),
            inc.delayed(base + 2),
            inc.delayed(base + 3),
        );
        let released_now = add.delayed(&a, &b);
        let still_waiting = add.delayed(&c, &d);
        let plain = inc.delayed(base + 4);
        let messages = [
            released_now.node().message().unwrap(),
            still_waiting.node().message().unwrap(),
        ];
        assert_eq!(
            store.register_tasks(&messages).await.unwrap(),
            vec![Registration::Waiting; 2]
        );
        let stored: Vec<(TaskKey, Vec<u8>)> = [&a, &b, &c, &plain]
            .iter()
            .zip(0..)
            .map(|(t, i)| (t.key().clone(), value(base * 100 + i)))
            .collect();
        let store_batch = |outcomes: &[(TaskKey, Vec<u8>)]| {
            let outcomes = outcomes.to_vec();
            let (store, recorder) = (&store, &recorder);
            async move {
                store
                    .store_and_release_recording(&outcomes, &[], batch, recorder, &[])
                    .await
                    .unwrap()
            }
        };
        let first = vec![ReadyTask::from_message(&messages[0]).unwrap()];
        assert_eq!(store_batch(&stored).await, first, "{batch:?}");
        let keys: Vec<TaskKey> = stored.iter().map(|(key, _)| key.clone()).collect();
        let outcomes = store.get_outcomes(&keys).await.unwrap();
        let expected: Vec<Option<Vec<u8>>> = stored.iter().map(|(_, v)| Some(v.clone())).collect();
        assert_eq!(outcomes, expected, "every outcome of the batch is stored");
        // The released one is marked published; the other still waits for `d`.
        assert_eq!(
            store.register_tasks(&messages).await.unwrap(),
            vec![Registration::Known, Registration::Waiting]
        );
        // Redelivered: released again (its worker may have died before publishing it).
        assert_eq!(store_batch(&stored).await, first, "{batch:?} again");
        let last = [(d.key().clone(), value(base * 100 + 99))];
        let second = vec![ReadyTask::from_message(&messages[1]).unwrap()];
        assert_eq!(store_batch(&last).await, second, "{batch:?} last input");
    }
}
