//! Local continuation (docs/protocol.md §11): a graph task released by outcomes a worker stored
//! runs on that worker, without going through the broker, while the deliveries that released it
//! stay unacknowledged until its outcome is stored; a worker killed mid-chain loses nothing.

use rask::builtins::sleep_ms;
use rask::{Delayed, Future, RetryPolicy, TaskOptions};
use rask_common::Store;
use rask_tests::runs::{ready_workers, until_stored};
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// `before` with the id of the worker that ran this task appended.
    async fn trail(ctx: &rask::TaskContext, before: Vec<String>) -> Result<Vec<String>, String> {
        let mut after = before;
        after.push(ctx.worker_id().to_owned());
        Ok(after)
    }
}

rask::task! {
    /// `before` with this run's attempt and worker appended; fails (retryably) on its first
    /// attempt.
    async fn flaky_trail(ctx: &rask::TaskContext, before: Vec<String>) -> Result<Vec<String>, rask::TaskError> {
        if ctx.attempt() == 0 {
            return Err(rask::TaskError::retryable("the first attempt fails"));
        }
        let mut after = before;
        after.push(format!("attempt {} on {}", ctx.attempt(), ctx.worker_id()));
        Ok(after)
    }
}

fn registry() -> Registry {
    Registry::with_builtins()
        .with::<trail>()
        .with::<flaky_trail>()
}

/// A chain of `n` [`trail`] tasks, each taking the one before.
fn chain(n: usize) -> Delayed<Vec<String>> {
    let mut last = trail.delayed(Vec::<String>::new()).impure();
    for _ in 1..n {
        last = trail.delayed(&last);
    }
    last
}

#[tokio::test]
async fn a_chain_runs_on_the_worker_that_released_each_task() {
    let env = TestEnv::new("continued-chain").await;
    let first = env.run_worker(registry());
    let second = env.run_worker(registry());
    let client = env.client().await;
    let future = client.persist(&chain(20)).await.unwrap();
    let ran = future.result_within(PATIENCE).await.unwrap();
    assert_eq!(ran.len(), 20);
    // Published, the 19 released tasks would go to either idle worker, round robin.
    assert!(
        ran.iter().all(|worker| *worker == ran[0]),
        "every task ran where the one before it ran: {ran:?}"
    );
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn a_continued_task_retries_through_the_broker() {
    let env = TestEnv::new("continued-retry").await;
    let worker = env.run_worker(registry());
    let client = env.client().await;
    let start = trail.delayed(Vec::<String>::new()).impure();
    let retried = flaky_trail
        .delayed(&start)
        .with_options(TaskOptions::default().retry(RetryPolicy::new(2)));
    let future = client.persist(&retried).await.unwrap();
    let ran = future.result_within(PATIENCE).await.unwrap();
    assert_eq!(ran.len(), 2);
    assert_eq!(ran[1], format!("attempt 1 on {}", ran[0]));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_killed_while_continuing_a_chain_loses_nothing() {
    let env = TestEnv::new("continued-killed").await;
    let store = Store::connect(&env.settings).await.unwrap();
    let mut first = ready_workers(&env, 1).await;
    let client = env.client().await;
    let mut links = vec![sleep_ms.delayed(150).impure()];
    for _ in 1..8 {
        let next = sleep_ms.delayed(links.last().unwrap());
        links.push(next);
    }
    let future = client.persist(links.last().unwrap()).await.unwrap();
    // The third link is stored: the fourth runs, continued on the worker, and every delivery
    // behind it (the first link's, the only one the broker delivered) is unacknowledged.
    let third: Future<u64> = client.future(links[2].key().clone());
    until_stored(&env, &store, std::slice::from_ref(&third), 1).await;
    first[0].kill().await.unwrap();
    env.eventually("the first link's delivery back in the queue", || async {
        env.queue_depth(&env.settings.queue).await.0 == 1
    })
    .await;
    assert!(
        !future.done().await.unwrap(),
        "the chain outlives its worker"
    );
    let _second = ready_workers(&env, 1).await;
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 150);
}
