//! Scheduling against real servers: a countdown or eta waits in the broker (the delay ladder),
//! not in a worker, never less than asked, in a fixed set of queues however many distinct
//! delays there are; a higher priority overtakes a backlog.

use std::time::{Duration, Instant, SystemTime};

use rask::builtins::inc;
use rask::TaskOptions;
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// Appends `x` to the Redis list `list`, recording the order tasks ran in.
    async fn record(redis_url: String, list: String, x: i64) -> Result<i64, String> {
        let client = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("RPUSH")
            .arg(list)
            .arg(x)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(x)
    }
}

#[tokio::test]
async fn a_countdown_waits_in_the_broker_not_in_a_worker() {
    let env = TestEnv::new("countdown").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let countdown = Duration::from_secs(2);
    let submitted = Instant::now();
    let future = client
        .submit_with(inc, (1,), &TaskOptions::new().countdown(countdown))
        .await
        .unwrap();
    // The task is parked in the delay ladder, which nobody consumes (2,000 ms = 1,024 + 512 +
    // 256 + 128 + 64 + 16: it waits first at level 10); the task queue is empty.
    let delay_queue = rask_common::delay::level_name(&env.settings, 10);
    assert_eq!(env.queue_depth(&delay_queue).await, (1, 0));
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 2);
    assert!(
        submitted.elapsed() >= countdown,
        "ran after {:?}, before its countdown of {countdown:?}",
        submitted.elapsed()
    );
    for level in 0..rask_common::delay::LEVELS {
        let queue = rask_common::delay::level_name(&env.settings, level);
        assert_eq!(env.queue_depth(&queue).await.0, 0, "{queue}");
    }
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn distinct_delays_share_the_fixed_ladder_and_none_runs_early() {
    let env = TestEnv::new("ladder").await;
    let worker = env.run_worker(Registry::with_builtins().with::<record>());
    let client = env.client().await;
    let (url, list) = (
        env.settings.redis_url.clone(),
        format!("{}:test-runs", env.settings.key_prefix),
    );
    // Forty distinct delays, as jittered retries and countdowns make them: 1 ms to 1.6 s.
    let delays: Vec<Duration> = (0..40u64)
        .map(|i| Duration::from_millis(1 + i * 41))
        .collect();
    let runs = delays.iter().enumerate().map(|(i, delay)| {
        let (client, args) = (&client, (url.clone(), list.clone(), i as i64));
        async move {
            let submitted = Instant::now();
            let options = TaskOptions::new().countdown(*delay);
            let future = client.submit_with(record, args, &options).await.unwrap();
            let value = future.result_within(PATIENCE).await.unwrap();
            (value, submitted.elapsed())
        }
    });
    let done = futures::future::join_all(runs).await;
    for (i, ((value, waited), delay)) in done.into_iter().zip(&delays).enumerate() {
        assert_eq!(value, i as i64);
        assert!(
            waited >= *delay,
            "task {i} ran after {waited:?}, before {delay:?}"
        );
    }
    // Each ran once: a message the ladder routed twice would have run twice.
    let store = redis::Client::open(url).unwrap();
    let mut conn = store.get_multiplexed_async_connection().await.unwrap();
    let mut ran: Vec<i64> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    ran.sort_unstable();
    assert_eq!(ran, (0..40).collect::<Vec<i64>>());
    // The broker holds no queue per delay (as it did), only the 32 queues of the ladder.
    for delay in &delays {
        let queue = format!("{}.delay.{}ms", env.settings.queue, delay.as_millis());
        assert!(
            !queue_exists(&env, &queue).await,
            "a queue per delay: {queue}"
        );
    }
    for level in 0..rask_common::delay::LEVELS {
        let queue = rask_common::delay::level_name(&env.settings, level);
        assert!(queue_exists(&env, &queue).await, "{queue}");
    }
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

/// Whether RabbitMQ has a queue named `queue` (a passive declaration).
async fn queue_exists(env: &TestEnv, queue: &str) -> bool {
    let connection = rask_common::broker::connect(&env.settings, "test inspector")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .is_ok();
    let _ = connection.close(200, "done".into()).await;
    found
}

#[tokio::test]
async fn an_eta_runs_the_task_no_earlier_than_it() {
    let env = TestEnv::new("eta").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let eta = SystemTime::now() + Duration::from_millis(1500);
    let futures = client
        .map_with(inc, (0..10).map(|i| (i,)), &TaskOptions::new().eta(eta))
        .await
        .unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    // The delay is rounded up to the millisecond: never early.
    assert!(SystemTime::now() >= eta);
    assert_eq!(values, (1..=10).collect::<Vec<i64>>());
    // An eta in the past runs at once, through the task queue.
    let past = SystemTime::now() - Duration::from_secs(60);
    let now = client
        .submit_with(inc, (41,), &TaskOptions::new().eta(past))
        .await
        .unwrap();
    assert_eq!(now.result_within(PATIENCE).await.unwrap(), 42);
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_higher_priority_overtakes_a_backlog() {
    let mut env = TestEnv::new("priority").await;
    env.settings.concurrency = 1;
    env.settings.prefetch = 1;
    let client = env.client().await;
    let url = env.settings.redis_url.clone();
    let list = format!("{}:test-order", env.settings.key_prefix);
    let backlog = client
        .map_with(
            record,
            (0..200).map(|i| (url.clone(), list.clone(), i)),
            &TaskOptions::new().priority(1),
        )
        .await
        .unwrap();
    let urgent = client
        .submit_with(
            record,
            (url.clone(), list.clone(), 1000),
            &TaskOptions::new().priority(9),
        )
        .await
        .unwrap();
    // Only now does a worker start: it finds 201 tasks waiting.
    let worker = env.run_worker(Registry::with_builtins().with::<record>());
    assert_eq!(urgent.result_within(PATIENCE).await.unwrap(), 1000);
    client.gather(&backlog).timeout(PATIENCE).await.unwrap();
    let store = redis::Client::open(url).unwrap();
    let mut conn = store.get_multiplexed_async_connection().await.unwrap();
    let order: Vec<i64> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(order.len(), 201);
    assert_eq!(
        order[0],
        1000,
        "the urgent task ran first: {:?}",
        &order[..5]
    );
    // Equal priorities keep their order.
    assert_eq!(order[1..], (0..200).collect::<Vec<i64>>());
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_delay_queue_declared_with_other_arguments_is_reported_at_connect() {
    let mut env = TestEnv::new("ladder-conflict").await;
    env.settings.reconnect_max_wait = Duration::ZERO;
    // Level 3 of the ladder, declared by hand without its TTL.
    let queue = rask_common::delay::level_name(&env.settings, 3);
    let connection = rask_common::broker::connect(&env.settings, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, Default::default())
        .await
        .unwrap();
    // The ladder is declared without waiting for each answer; the refusal still surfaces,
    // naming the queue and the argument.
    let refused = tokio::time::timeout(PATIENCE, rask::Client::connect(env.settings.clone()))
        .await
        .expect("connecting ends");
    let error = refused
        .err()
        .expect("the declaration is refused")
        .to_string();
    assert!(
        error.contains("PRECONDITION_FAILED") && error.contains(&queue),
        "{error}"
    );
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}
