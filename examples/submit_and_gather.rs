//! A client of the tasks in `tasks.rs`: submit one, map a hundred, gather them in order and as
//! they complete, re-attach to a result by its key, wait with a timeout, and handle failures.
//!
//! Needs a running cluster whose workers know these tasks: see `custom_worker.rs`.

mod tasks;

use std::time::Duration;

use futures::StreamExt;
use rask::{Client, FailureKind, Settings, TaskKey};

use tasks::{parse_number, text_stats, word_count, TextStats};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Defaults, then rask.toml if present, then RASK_* variables.
    let client = Client::connect(Settings::load()?).await?;

    // One task: `submit` returns once the broker has confirmed it; `result` waits for the value.
    let one = client
        .submit(word_count, ("the quick brown fox".to_owned(),))
        .await?;
    println!("submitted {}", one.key());
    assert_eq!(one.result().await?, 4);

    // A task returning a type of your own.
    let stats: TextStats = client
        .submit(text_stats, ("one line\nand another\n".to_owned(),))
        .await?
        .result()
        .await?;
    println!(
        "text_stats: {} lines, {} words, {} chars",
        stats.lines, stats.words, stats.chars
    );

    // A hundred tasks, published pipelined; the futures come back in input order.
    let texts = (1..=100).map(|n| (vec!["word"; n].join(" "),));
    let futures = client.map(word_count, texts).await?;

    // All results, in input order (the first failure, if any, would be the error).
    let counts: Vec<usize> = client.gather(&futures).await?;
    assert_eq!(counts, (1..=100).collect::<Vec<usize>>());

    // The same results in completion order, with each one's index into `futures`.
    let mut completed = client.as_completed(&futures);
    let mut seen = 0;
    while let Some((index, result)) = completed.next().await {
        assert_eq!(result?, index + 1);
        seen += 1;
    }
    println!("{seen} results as completed");

    // A future is only a key: any process that has the key can wait for the result. Here a
    // second client stands in for another process.
    let key: TaskKey = futures[41].key().clone();
    let elsewhere = Client::connect(Settings::load()?).await?;
    let again: rask::Future<usize> = elsewhere.future(key.clone());
    assert_eq!(again.result().await?, 42);
    elsewhere.close().await?;
    // Keys are text, e.g. to pass on the command line (`rask gather KEY`) and back.
    let parsed = TaskKey::new(key.to_string())?;
    assert_eq!(client.future::<usize>(parsed).result().await?, 42);

    // Waiting with a limit: on timeout the tasks keep running and can be gathered later.
    match client
        .gather(&futures)
        .timeout(Duration::from_secs(30))
        .await
    {
        Ok(counts) => println!("gathered {} results within 30 s", counts.len()),
        Err(e) if e.is_timeout() => println!("not done yet: {e}"),
        Err(e) => return Err(e.into()),
    }

    // A failed task is an error carrying a structured failure: which task, key, worker and why.
    let bad = client
        .submit(parse_number, ("forty-two".to_owned(),))
        .await?;
    match bad.result().await {
        Ok(n) => println!("parsed {n}?"),
        Err(e) => match e.failure() {
            Some(failure) if failure.kind == FailureKind::Failed => {
                println!(
                    "{} failed on worker {}: {}",
                    failure.key, failure.worker, failure.message
                );
            }
            Some(failure) => println!("{failure}"),
            None => return Err(e.into()),
        },
    }

    // Per-item results instead of failing on the first failed task.
    let inputs = ["1", "2", "three"].map(|s| (s.to_owned(),));
    let parsed = client.map(parse_number, inputs.clone()).await?;
    for (input, result) in inputs.iter().zip(client.gather(&parsed).each().await?) {
        match result {
            Ok(n) => println!("{:?} -> {n}", input.0),
            Err(e) => println!("{:?} -> error: {e}", input.0),
        }
    }

    // Results live in Redis for the `result_ttl` setting; release them once read.
    let mut keys: Vec<TaskKey> = futures.iter().map(|f| f.key().clone()).collect();
    keys.extend(parsed.iter().map(|f| f.key().clone()));
    let released = client.release(&keys).await?;
    println!("released {released} results");

    client.close().await?;
    Ok(())
}
