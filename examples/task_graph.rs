//! A lazy task graph on the stock workers' functions: a reduction tree over 1,024 leaves, built
//! without sending anything, submitted at once with `persist`, and reused by a second graph.
//!
//! Needs a running cluster with stock workers (`rask local up`).

use std::time::Duration;

use rask::builtins::{add, leaf, sum_ints};
use rask::{Client, Delayed, FailureKind, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(Settings::load()?).await?;

    // Nothing is sent while the graph is built; identical calls get identical (content) keys.
    let mut level: Vec<Delayed<i64>> = (0..1024).map(|i| leaf.delayed(i)).collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| add.delayed(&pair[0], &pair[1]))
            .collect();
    }
    let root = level.remove(0);

    // The whole graph at once: leaves are queued now, the rest waits in Redis and is released by
    // the workers as inputs are stored. The client could exit here; anyone can wait for the key.
    let total = client.persist(&root).await?;
    println!("submitted the tree; its root is {}", total.key());
    let value = total.result_within(Duration::from_secs(300)).await?;
    println!("sum of the leaves: {value}");

    // A graph built on a persisted result reuses it instead of recomputing the tree.
    let again = sum_ints.delayed(vec![root.clone(), add.delayed(&total, 1)]);
    assert_eq!(client.compute(&again).await?, 2 * value + 1);

    // A failure anywhere fails everything downstream, naming the task that failed first.
    let broken = add.delayed(&root, i64::MAX);
    let error = client.compute(&add.delayed(broken, 1)).await.unwrap_err();
    let failure = error.failure().expect("a task failure");
    assert_eq!(failure.kind, FailureKind::DependencyFailed);
    println!("as expected: {error}");

    client.close().await?;
    Ok(())
}
