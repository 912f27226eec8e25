//! Self-healing graphs against real servers: a graph task whose input's result is gone
//! (released, or expired) has the input recomputed from its stored message, once, and then
//! runs; when the input's message is gone too, the task fails naming the missing key.
//! `scripts/test.sh` runs them on a Redis Cluster too.

use rask::builtins::{add, sum_ints};
use rask::{Arg, Client, Delayed, FailureKind, TaskKey};
use rask_common::Store;
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

fn registry() -> Registry {
    Registry::with_builtins().with::<counted>()
}

/// `x` through [`counted`], counted by `runs`.
fn wrap(runs: &Counter, x: impl Into<Arg<i64>>) -> Delayed<i64> {
    counted.delayed(runs.url.clone(), runs.key.clone(), x)
}

/// A persisted and computed 3-level graph: four counted leaves (`leaves` counts their runs),
/// two counted middles summing pairs of them (`middles`), and a root adding the middles.
/// Returns the middles and their values.
async fn three_levels(
    env: &TestEnv,
    client: &Client,
    leaves: &Counter,
    middles: &Counter,
) -> [(Delayed<i64>, i64); 2] {
    let worker = env.run_worker(registry());
    let leaf: Vec<Delayed<i64>> = (0..4).map(|i| wrap(leaves, 9_700 + i)).collect();
    let m0 = wrap(middles, add.delayed(&leaf[0], &leaf[1]));
    let m1 = wrap(middles, add.delayed(&leaf[2], &leaf[3]));
    let root = add.delayed(&m0, &m1);
    let computed = tokio::time::timeout(PATIENCE, client.compute(&root)).await;
    assert_eq!(computed.unwrap().unwrap(), 4 * 9_700 + 6);
    assert_eq!((leaves.runs().await, middles.runs().await), (4, 2));
    worker.stop().await.unwrap();
    [(m0, 2 * 9_700 + 1), (m1, 2 * 9_700 + 5)]
}

/// A new graph over the middles, by key (as over futures), persisted while no worker runs: its
/// inputs are stored, so it is published at once, and runs once a worker starts.
fn over(middles: &[(Delayed<i64>, i64); 2]) -> Delayed<i64> {
    sum_ints.delayed(Arg::list([
        Arg::key(middles[0].0.key().clone()),
        Arg::key(middles[1].0.key().clone()),
        Arg::from(7),
    ]))
}

#[tokio::test]
async fn a_released_input_is_recomputed_from_its_message_once() {
    let env = TestEnv::new("lineage").await;
    let client = env.client().await;
    let (leaves, middles) = (Counter::new(&env, "leaves"), Counter::new(&env, "middles"));
    let mids = three_levels(&env, &client, &leaves, &middles).await;
    let graph = over(&mids);
    let future = client.persist(&graph).await.unwrap();
    let released: Vec<TaskKey> = vec![mids[0].0.key().clone()];
    assert_eq!(client.release(&released).await.unwrap(), 1);

    let worker = env.run_worker(registry());
    let value = future.result_within(PATIENCE).await.unwrap();
    assert_eq!(value, mids[0].1 + mids[1].1 + 7);
    // The released middle ran once more; its inputs, stored, did not run again.
    assert_eq!((leaves.runs().await, middles.runs().await), (4, 3));
    let store = Store::connect(&env.settings).await.unwrap();
    let rebuilds: i64 = redis::cmd("GET")
        .arg(store.keys().rebuilds(mids[0].0.key()))
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert_eq!(rebuilds, 1, "recorded once");
    // Its result is back, for whoever reads it later.
    let again: rask::Future<i64> = client.future(mids[0].0.key().clone());
    assert_eq!(again.result_within(PATIENCE).await.unwrap(), mids[0].1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_input_gone_with_its_message_fails_the_task_naming_it() {
    let env = TestEnv::new("lineagegone").await;
    let client = env.client().await;
    let (leaves, middles) = (Counter::new(&env, "leaves"), Counter::new(&env, "middles"));
    let mids = three_levels(&env, &client, &leaves, &middles).await;
    let graph = over(&mids);
    let future = client.persist(&graph).await.unwrap();
    let gone = mids[0].0.key().clone();
    assert_eq!(
        client.release(std::slice::from_ref(&gone)).await.unwrap(),
        1
    );
    // Its message expires too (lineage_ttl passed), as if never kept.
    let store = Store::connect(&env.settings).await.unwrap();
    let deleted: u64 = redis::cmd("DEL")
        .arg(store.keys().task(&gone))
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the middle's message was kept until then");

    let worker = env.run_worker(registry());
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::DependencyFailed);
    assert_eq!(&f.key, graph.key());
    assert!(
        f.message.contains(gone.as_str()) && f.message.contains("message is gone"),
        "{}",
        f.message
    );
    assert_eq!(middles.runs().await, 2, "nothing was recomputed");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_graph_computed_over_a_released_result_recomputes_it() {
    let env = TestEnv::new("lineagelater").await;
    let client = env.client().await;
    let (leaves, middles) = (Counter::new(&env, "leaves"), Counter::new(&env, "middles"));
    let mids = three_levels(&env, &client, &leaves, &middles).await;
    let released: Vec<TaskKey> = vec![mids[0].0.key().clone()];
    assert_eq!(client.release(&released).await.unwrap(), 1);

    // Registered after the release: the new graph waits for the released middle, which its
    // producer publishes again from its kept message.
    let worker = env.run_worker(registry());
    let graph = over(&mids);
    let computed = tokio::time::timeout(PATIENCE, client.compute(&graph)).await;
    assert_eq!(computed.unwrap().unwrap(), mids[0].1 + mids[1].1 + 7);
    assert_eq!((leaves.runs().await, middles.runs().await), (4, 3));
    worker.stop().await.unwrap();
}
