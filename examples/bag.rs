//! A lazy collection on the stock workers' functions: a million numbers in 100 partitions,
//! mapped and reduced natively (one task per partition, not per element), persisted once and
//! reused by several reductions, and a failing element named by its index.
//!
//! Needs a running cluster with stock workers (`rask local up`).

use rask::builtins::{inc, leaf};
use rask::{Bag, Client, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(Settings::load()?).await?;

    // Nothing is sent while the pipeline is built: 100 partitions, 100 `rask.bag.map` tasks.
    let numbers = Bag::from_iter(0..1_000_000_i64, 100);
    let small = numbers.map(leaf); // i % 7 + 1
    println!("{} partitions", small.npartitions());

    // Persist once; the reductions below read the stored partitions instead of mapping again.
    let small = small.persist(&client).await?;
    println!("count     {}", client.compute(&small.count()).await?);
    println!("sum       {}", client.compute(&small.sum()).await?);
    println!("mean      {:?}", client.compute(&small.mean()).await?);
    println!("distinct  {:?}", client.compute(&small.distinct()).await?);
    println!("top 3     {:?}", client.compute(&small.top_k(3)).await?);
    let counts = client.compute(&small.frequencies()).await?;
    println!("most frequent {:?}", counts.first());
    println!("partitions by key: {:?}", &small.keys()[..2]);

    // An element that fails (i64::MAX + 1) fails its partition, naming its index.
    let edge = Bag::from_iter([1, 2, i64::MAX], 1).map(inc);
    let error = client.compute(&edge.sum()).await.unwrap_err();
    println!("failure: {error}");
    client.close().await?;
    Ok(())
}
