//! Fault injection against real servers: a worker SIGKILLed, RabbitMQ restarted under a `map`,
//! Redis restarted (and crashed) under a gather. Each run of 5,000 tasks must lose nothing and
//! return each task's own value; and `map_stream` never takes more arguments than the publish
//! window ahead of the broker's confirms.
//!
//! Every wait polls a condition with a deadline; nothing sleeps to synchronise.

use std::future::Future as StdFuture;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rask::builtins::inc;
use rask::{Future, Settings};
use rask_common::{Keys, Store};
use rask_tests::runs::{assert_paced_values, map_paced, ready_workers, stored};
use rask_tests::writes::ResultWrites;
use rask_tests::{PrivateServers, TestEnv};
use rask_worker::Registry;
use tokio::time::Instant;

/// Tasks per run.
const TASKS: usize = 5_000;
/// The longest any one wait of these tests may take (each test stays well under a minute).
const DEADLINE: Duration = Duration::from_secs(45);
/// How often a polled condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; fails the test after [`DEADLINE`].
async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: StdFuture<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "still not true after {DEADLINE:?}: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// An environment on `servers` whose workers run 8 tasks at once.
fn busy_env(servers: &PrivateServers, name: &str) -> TestEnv {
    let mut env = TestEnv::on(servers.urls(), name);
    env.settings.concurrency = 8;
    env
}

/// How many of `futures` were redelivered: their tasks' delivery counters in Redis (which a
/// worker counts up, on a classic queue, for each delivery RabbitMQ marks `redelivered`).
async fn redelivered<T>(store: &Store, futures: &[Future<T>]) -> usize {
    let counters: Vec<String> = futures
        .iter()
        .map(|f| store.keys().deliveries(f.key()))
        .collect();
    let counts: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&counters)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    counts.iter().filter(|n| n.is_some_and(|n| n >= 1)).count()
}

#[tokio::test]
async fn a_killed_worker_loses_no_task_of_5000() {
    let servers = PrivateServers::start("killworker").await;
    let env = busy_env(&servers, "killworker");
    let writes = ResultWrites::watch(&env.settings).await;
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    let futures = map_paced(&client, 0..TASKS).await.unwrap();
    // Workers start once everything is queued, so that the run is still young when polled.
    let mut workers = ready_workers(&env, 2).await;

    until("1,000 results are stored", || async {
        writes.tally().0 >= 1_000
    })
    .await;
    let status = workers[0].kill().await.unwrap();
    let at_kill = writes.tally().0;
    assert!(
        at_kill < TASKS,
        "the run was over before the kill ({at_kill} stored)"
    );
    assert_eq!(status.signal(), Some(9), "SIGKILLed");

    // Its unacknowledged tasks are redelivered to the other worker.
    let values = client.gather(&futures).timeout(DEADLINE).await.unwrap();
    assert_paced_values(&values, 0..TASKS);
    until("every result's write is announced", || async {
        writes.tally().0 == TASKS
    })
    .await;
    let (written, rewritten) = writes.tally();
    assert_eq!((written, rewritten), (TASKS, 0), "each result written once");
    assert!(workers[1].is_running().unwrap());

    // The kill hit tasks in flight: at least the ones the killed worker was running (8 at once,
    // with a queue of thousands) came back and were counted by the survivor. Polled: a task
    // stored just before the kill can be counted after the gather ends.
    let slots = env.settings.concurrency;
    until(
        &format!("at least {slots} tasks are counted as redelivered"),
        || async { redelivered(&store, &futures).await >= slots },
    )
    .await;
    eprintln!(
        "{} tasks redelivered after the kill",
        redelivered(&store, &futures).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_during_map_loses_nothing() {
    let mut servers = PrivateServers::start("restartmap").await;
    let env = busy_env(&servers, "restartmap");
    let _workers = ready_workers(&env, 2).await;
    let client = env.client().await;

    // The argument iterator stops half-way until the broker is down, so that the rest of the
    // `map` is published across the restart (the iterator is synchronous: it blocks its thread,
    // in `block_in_place`, on a channel the test feeds once the broker has stopped).
    let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
    let (down, broker_down) = std::sync::mpsc::channel::<()>();
    let mut stop = Some(stop);
    let args = (0..TASKS as i64).map(move |i| {
        if i == TASKS as i64 / 2 {
            stop.take().unwrap().send(()).unwrap();
            tokio::task::block_in_place(|| broker_down.recv()).unwrap();
        }
        (i,)
    });
    let mapping = {
        let client = client.clone();
        tokio::spawn(async move { client.map(inc, args).await })
    };

    stop_requested.await.unwrap();
    until("workers have run some of the first half", || async {
        stored_results(&env.settings).await >= 100
    })
    .await;
    servers.rabbitmq.stop().await.unwrap();
    down.send(()).unwrap();
    servers.rabbitmq.restart().await.unwrap();

    let futures = tokio::time::timeout(DEADLINE, mapping)
        .await
        .expect("map returns after the restart")
        .unwrap()
        .expect("map succeeds across the restart");
    assert_eq!(futures.len(), TASKS);
    let values = client.gather(&futures).timeout(DEADLINE).await.unwrap();
    assert_eq!(values, (1..=TASKS as i64).collect::<Vec<_>>());
    // The same client goes on submitting.
    let after = client.submit(inc, (41,)).await.unwrap();
    assert_eq!(after.result_within(DEADLINE).await.unwrap(), 42);
}

/// How many results of this deployment Redis holds (a SCAN of its prefix).
async fn stored_results(settings: &Settings) -> usize {
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!(
        "{}*",
        Keys::new(settings.key_prefix.as_str()).result_pattern_prefix()
    );
    let mut cursor: u64 = 0;
    let mut found = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        found += batch.len();
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

/// Runs 5,000 tasks on two worker processes with a client gathering them, stops Redis once
/// 1,000 results are stored (SIGKILL when `crash`, with `appendfsync always`, else SIGTERM) and
/// starts it again on the same append-only file; every result must be gathered, correct.
async fn gather_across_a_redis_restart(name: &str, crash: bool) {
    let mut servers = PrivateServers::start(name).await;
    let env = busy_env(&servers, name);
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    if crash {
        // What survives a SIGKILL is what `appendfsync always` promises: with `everysec`, Redis
        // answers writes it holds back for up to 2 s while a slow background fsync runs, and a
        // kill loses them (docs/reliability.md), as happens on a busy CI disk.
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg("always")
            .query_async(&mut store.connection())
            .await
            .unwrap();
    }
    let futures = map_paced(&client, 0..TASKS).await.unwrap();
    // Workers start once everything is queued, so that the run is still young when polled.
    let _workers = ready_workers(&env, 2).await;
    let gathering = {
        let (client, futures) = (client.clone(), futures.clone());
        tokio::spawn(async move { client.gather(&futures).timeout(DEADLINE).await })
    };

    until("1,000 results are stored", || async {
        stored(&store, &futures).await >= 1_000
    })
    .await;
    let before = stored(&store, &futures).await;
    if crash {
        servers.redis.kill().await.unwrap();
    }
    servers.redis.restart().await.unwrap();
    assert!(before < TASKS, "the run was over before Redis stopped");

    let values = tokio::time::timeout(DEADLINE, gathering)
        .await
        .expect("the gather resumes and ends")
        .unwrap()
        .expect("every result is gathered");
    assert_paced_values(&values, 0..TASKS);
    let store = Store::connect(&env.settings).await.unwrap();
    assert_eq!(stored(&store, &futures).await, TASKS, "nothing lost");
}

#[tokio::test]
async fn a_store_restart_during_gather_loses_nothing() {
    gather_across_a_redis_restart("restartredis", false).await;
}

#[tokio::test]
async fn a_store_crash_during_gather_loses_nothing() {
    gather_across_a_redis_restart("crashredis", true).await;
}

#[tokio::test]
async fn map_pulls_inputs_only_as_the_confirm_window_allows() {
    const WINDOW: usize = 16;
    const N: usize = 2_000;
    let mut env = TestEnv::new("window").await;
    env.settings.publish_window = WINDOW;
    let client = env.client().await;
    // What the stream has yielded (confirmed), and the most arguments ever taken ahead of it,
    // both seen from inside the argument iterator at the moment it is pulled.
    let confirmed = Arc::new(AtomicUsize::new(0));
    let most_ahead = Arc::new(AtomicUsize::new(0));
    let args = {
        let (confirmed, most_ahead) = (confirmed.clone(), most_ahead.clone());
        (0..N as i64).map(move |i| {
            let pulled = i as usize + 1;
            let ahead = pulled - confirmed.load(Ordering::SeqCst);
            most_ahead.fetch_max(ahead, Ordering::SeqCst);
            (i,)
        })
    };
    let mut futures: Vec<Option<Future<i64>>> = (0..N).map(|_| None).collect();
    let mut stream = std::pin::pin!(client.map_stream(inc, args));
    while let Some(next) = tokio::time::timeout(DEADLINE, stream.next()).await.unwrap() {
        let (index, future) = next.unwrap();
        confirmed.fetch_add(1, Ordering::SeqCst);
        assert!(
            futures[index].replace(future).is_none(),
            "index {index} twice"
        );
    }
    assert_eq!(confirmed.load(Ordering::SeqCst), N);
    let most_ahead = most_ahead.load(Ordering::SeqCst);
    assert_eq!(
        most_ahead, WINDOW,
        "pipelined up to the window, never beyond"
    );

    let futures: Vec<Future<i64>> = futures.into_iter().map(Option::unwrap).collect();
    let worker = env.run_worker(Registry::with_builtins());
    let values = client.gather(&futures).timeout(DEADLINE).await.unwrap();
    assert_eq!(values, (1..=N as i64).collect::<Vec<_>>());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_whose_task_the_broker_refuses_fails_instead_of_waiting() {
    let servers = PrivateServers::start("refused").await;
    let mut env = TestEnv::on(servers.urls(), "refused");
    env.settings.reconnect_max_wait = Duration::from_secs(1);
    let client = env.client().await;
    // Every queue refuses new messages (and no worker could run one anyway): the broker
    // answers each publish with a negative confirm.
    servers
        .ctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "refuse",
            ".*",
            r#"{"max-length":0,"overflow":"reject-publish"}"#,
        ])
        .await;
    let queue = env.settings.queue.clone();
    until("the policy applies to the task queue", || async {
        servers
            .ctl(&["list_queues", "name", "policy", "--no-table-headers"])
            .await
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "refuse"])
    })
    .await;

    let error = tokio::time::timeout(DEADLINE, client.call(inc, (1,)))
        .await
        .expect("the call gives up")
        .unwrap_err();
    assert!(
        matches!(error, rask::Error::Nacked(_)),
        "expected Error::Nacked, got {error:?}"
    );
}

#[tokio::test]
async fn a_producer_gives_up_after_reconnect_max_wait() {
    let mut servers = PrivateServers::start("giveup").await;
    let mut env = TestEnv::on(servers.urls(), "giveup");
    env.settings.reconnect_max_wait = Duration::from_secs(1);
    let client = env.client().await;
    servers.rabbitmq.stop().await.unwrap();

    let started = Instant::now();
    let error = tokio::time::timeout(DEADLINE, client.submit(inc, (1,)))
        .await
        .expect("the submit gives up")
        .unwrap_err();
    match error {
        rask::Error::Reconnect { waited, .. } => {
            assert!(waited >= Duration::from_secs(1), "{waited:?}");
        }
        other => panic!("expected Error::Reconnect, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}
