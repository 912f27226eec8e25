//! Errors that trying again cannot fix, against real servers: a configuration RabbitMQ refuses
//! stops the worker with exit code 78 (EX_CONFIG) and a message naming the setting; `/health`
//! answers 503 whenever the worker is not consuming; one outcome Redis refuses does not hold the
//! acknowledgements of the others; a released graph task the broker refuses fails instead of
//! requeueing its parent forever.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rask::builtins::{echo, inc};
use rask::local::{self, Lifetime, RedisSpec, ServerProcess};
use rask::{FailureKind, Future};
use rask_common::{broker, Keys, Settings};
use rask_tests::{
    dead_letter_reason, failure, http_get, read_counter, shared_servers, PrivateRabbitMq,
    PrivateServers, ServerUrls, TestEnv, PATIENCE,
};
use rask_worker::Registry;

rask::task! {
    /// `x` plus the length of `text` (a dependent whose message is as large as `text`).
    fn tagged(text: String, x: i64) -> i64 { x + text.len() as i64 }
}

/// An environment on the shared servers with a classic task queue, whatever the suite's
/// cluster variables say (these tests declare the queue themselves).
async fn classic_env(name: &str) -> TestEnv {
    TestEnv::on(shared_servers().await, name)
}

/// `env`'s worker settings serving `/health` on a free port of its own; returns the address.
fn serve_health(env: &mut TestEnv) -> SocketAddr {
    let port = local::free_port().expect("a free port");
    env.settings.metrics_listen = SocketAddr::from(([127, 0, 0, 1], port));
    env.settings.metrics_listen
}

/// `/health` at `address`: its status code and JSON body, or `None` while nothing listens.
async fn health(address: SocketAddr) -> Option<(u16, serde_json::Value)> {
    tokio::net::TcpStream::connect(address).await.ok()?;
    let (code, body) = http_get(&address.to_string(), "/health").await;
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"));
    Some((code, body))
}

/// Polls `/health` at `address` until `condition` holds for its body (failing after
/// [`PATIENCE`]); returns the status code and body of that answer.
async fn health_when(
    address: SocketAddr,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = health(address).await;
        if let Some((code, body)) = &answer {
            if condition(body) {
                return (*code, body.clone());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last /health: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queue_declared_with_other_arguments_stops_the_worker_with_exit_78() {
    let env = classic_env("other-arguments").await;
    // The task queue as an earlier deployment declared it: priorities up to 5, where the
    // worker's settings say 9.
    let earlier = Settings {
        max_priority: 5,
        ..env.settings.clone()
    };
    let connection = broker::connect(&earlier, "test: an earlier deployment")
        .await
        .unwrap();
    broker::declare_topology(&connection, &earlier)
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;

    let mut worker = env.spawn_workers(1).remove(0);
    let status = worker
        .wait(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the worker stops instead of reconnecting forever");
    let log = std::fs::read_to_string(worker.log_path()).unwrap();
    assert_eq!(status.code(), Some(78), "exit code EX_CONFIG; log:\n{log}");
    let named = format!(
        "queue {} exists with other arguments: x-max-priority",
        env.settings.queue
    );
    assert!(log.contains(&named), "{log}");
    assert!(log.contains("max_priority = 9"), "{log}");
}

#[tokio::test]
async fn a_refused_login_stops_the_worker_with_exit_78() {
    let mut env = classic_env("refused-login").await;
    let wrong = env
        .settings
        .amqp_url
        .replacen(":guest@", ":not-the-password@", 1);
    assert_ne!(
        wrong, env.settings.amqp_url,
        "the test servers' login is guest:guest"
    );
    env.settings.amqp_url = wrong;
    let mut worker = env.spawn_workers(1).remove(0);
    let status = worker
        .wait(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the worker stops instead of reconnecting forever");
    let log = std::fs::read_to_string(worker.log_path()).unwrap();
    assert_eq!(status.code(), Some(78), "exit code EX_CONFIG; log:\n{log}");
    assert!(
        log.contains("RabbitMQ refused the login of amqp_url"),
        "{log}"
    );
    assert!(log.contains("check its user and password"), "{log}");
    assert!(
        !log.contains("not-the-password"),
        "the password is masked: {log}"
    );
}

#[tokio::test]
async fn health_is_503_while_the_task_queue_is_locked_and_200_once_consuming() {
    let mut env = classic_env("locked").await;
    let address = serve_health(&mut env);
    // Another connection holds a queue of the task queue's name exclusively: the worker cannot
    // declare it (RESOURCE_LOCKED) until that connection closes, while it reaches both servers.
    let holder = broker::connect(&env.settings, "test: exclusive holder")
        .await
        .unwrap();
    let channel = holder.create_channel().await.unwrap();
    channel
        .queue_declare(
            env.settings.queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let worker = env.run_worker(Registry::with_builtins());

    let (code, body) = health_when(address, "the worker to reach both servers", |b| {
        b["broker"] == true && b["store"] == true
    })
    .await;
    assert_eq!(code, 503, "not consuming, so not healthy: {body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["consuming"], false, "{body}");

    holder.close(200, "released".into()).await.unwrap();
    let (code, body) = health_when(address, "the worker to consume", |b| b["ok"] == true).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["consuming"], true, "{body}");
    let client = env.client().await;
    let future = client.submit(inc, (41,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 42);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn health_is_503_while_the_broker_is_down_and_200_after() {
    let mut servers = PrivateServers::start("health-broker").await;
    let mut env = TestEnv::on(servers.urls(), "health-broker");
    let address = serve_health(&mut env);
    let worker = env.run_worker(Registry::with_builtins());
    let (code, _) = health_when(address, "the worker to consume", |b| b["ok"] == true).await;
    assert_eq!(code, 200);

    servers.rabbitmq.stop().await.unwrap();
    let (code, body) = health_when(address, "the worker to notice", |b| b["ok"] == false).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["consuming"], false, "{body}");

    servers.rabbitmq.restart().await.unwrap();
    let (code, body) =
        health_when(address, "the worker to consume again", |b| b["ok"] == true).await;
    assert_eq!(code, 200, "{body}");
    let client = env.client().await;
    let future = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 2);
    worker.stop().await.unwrap();
}

/// Points `env` at a Redis of its own (not append-only, in its folder), returned to be stopped
/// on drop; RabbitMQ stays the shared one.
async fn private_redis(env: &mut TestEnv) -> ServerProcess {
    let spec = RedisSpec {
        dir: env.path("redis"),
        port: local::free_port().expect("a free port"),
        append_only: false,
        cluster: false,
        fsync: Default::default(),
    };
    let redis = ServerProcess::start_redis(&spec, Lifetime::TiedToCaller)
        .await
        .expect("starting Redis");
    env.settings.redis_url = redis.url();
    redis
}

/// Runs `CONFIG SET name value` on the Redis at `url`.
async fn config_set(url: &str, name: &str, value: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_result_over_redis_bulk_limit_fails_alone_and_holds_no_other() {
    let mut env = classic_env("bulk-limit").await;
    let _redis = private_redis(&mut env).await;
    // Redis refuses any value over 1 MB (its least proto-max-bulk-len; 512 MB by default).
    config_set(&env.settings.redis_url, "proto-max-bulk-len", "1mb").await;
    env.settings.concurrency = 4;
    let client = env.client().await;
    // Queued before the worker starts, so that they are stored in the same batches.
    let big = "x".repeat(2 << 20);
    let refused = client
        .submit(echo, (rmpv::Value::from(big.as_str()),))
        .await
        .unwrap();
    let small = client.map(inc, (0..50).map(|i| (i,))).await.unwrap();
    let worker = env.run_worker(Registry::with_builtins());

    let values = client.gather(&small).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=50).collect::<Vec<i64>>());
    // Redis would drop the connection on it (which looks like a network failure): it is
    // refused before it is sent.
    let f = failure(refused.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::ResultTooLarge, "{f}");
    let sizes = format!(
        "(key {}) returned a result of {} bytes, over Redis's proto-max-bulk-len = 1048576",
        refused.key(),
        big.len() + 5
    );
    assert!(f.message.contains(&sizes), "{f}");
    // Every delivery was settled: none goes back to the queue when the worker stops.
    worker.stop().await.unwrap();
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
}

#[tokio::test]
async fn a_batch_whose_release_script_fails_for_one_task_acks_the_others() {
    let mut env = classic_env("script-error").await;
    env.settings.concurrency = 4;
    let client = env.client().await;
    let tasks = client.map(inc, (0..50).map(|i| (i,))).await.unwrap();
    // The graph bookkeeping of task 17 is corrupt: its dependents "set" is a string, so the
    // release script of any batch holding it fails (WRONGTYPE).
    let bad = tasks[17].key().clone();
    let keys = Keys::new(env.settings.key_prefix.as_str());
    let redis = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(keys.dependents(&bad))
        .arg("not a set")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let worker = env.run_worker(Registry::with_builtins());

    // The others are stored and acknowledged; the worker goes on serving.
    for (i, task) in tasks.iter().enumerate() {
        if i != 17 {
            assert_eq!(task.result_within(PATIENCE).await.unwrap(), i as i64 + 1);
        }
    }
    let later = client.submit(inc, (100,)).await.unwrap();
    assert_eq!(later.result_within(PATIENCE).await.unwrap(), 101);
    // Task 17's delivery is dead-lettered with Redis's reason, not retried forever.
    let dead = env.dead_letters(1).await;
    let reason = dead_letter_reason(&dead[0]).unwrap();
    assert!(reason.contains("WRONGTYPE"), "{reason}");
    assert!(reason.contains("dependents"), "{reason}");
    worker.stop().await.unwrap();
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
}

/// Runs `root`, then `dependent` (released by it) through `env`'s worker; returns the
/// dependent's failure after checking the root's value, and how often the root was redelivered.
async fn released_dependent_fails(
    env: &TestEnv,
    root: &rask::Delayed<i64>,
    dependent: &rask::Delayed<i64>,
) -> (rask::TaskFailure, i64) {
    let worker = env.run_worker(Registry::with_builtins().with::<tagged>());
    let client = env.client().await;
    let futures: Vec<Future<i64>> = client
        .persist_many(&[root.clone(), dependent.clone()])
        .await
        .unwrap();
    assert_eq!(futures[0].result_within(PATIENCE).await.unwrap(), 2);
    let f = failure(futures[1].result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Unpublishable, "{f}");
    assert_eq!(&f.key, dependent.key());
    assert!(f.message.contains(dependent.key().as_str()), "{f}");
    let deliveries = Keys::new(env.settings.key_prefix.as_str()).deliveries(root.key());
    let redelivered = read_counter(&env.settings.redis_url, &deliveries).await;
    worker.stop().await.unwrap();
    // Nothing goes round any more.
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 0);
    (f, redelivered)
}

#[tokio::test]
async fn a_redis_replica_stops_the_worker_with_exit_78_and_loses_nothing() {
    let mut env = classic_env("replica").await;
    let primary = private_redis(&mut env).await;
    let _replica = private_redis(&mut env).await;
    // The worker's redis_url names a replica, which refuses every write (READONLY).
    let client = redis::Client::open(env.settings.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port())
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let producer = env.client().await;
    let task = producer.submit(inc, (41,)).await.unwrap();
    let mut worker = env.spawn_workers(1).remove(0);
    let status = worker
        .wait(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the worker stops instead of retrying forever");
    let log = std::fs::read_to_string(worker.log_path()).unwrap();
    assert_eq!(status.code(), Some(78), "exit code EX_CONFIG; log:\n{log}");
    assert!(log.contains("read only replica"), "{log}");
    assert!(log.contains("redis_url must name a primary"), "{log}");

    // Nothing was acknowledged: a worker on the primary runs the task.
    env.settings.redis_url = primary.url();
    let _worker = env.spawn_workers(1);
    let client = env.client().await;
    let task: Future<i64> = client.future(task.key().clone());
    assert_eq!(task.result_within(PATIENCE).await.unwrap(), 42);
}

#[tokio::test]
async fn a_dependent_the_broker_refuses_fails_instead_of_looping() {
    let rabbitmq = PrivateRabbitMq::start("refused-dependent", "max_message_size = 65536\n").await;
    let urls = ServerUrls {
        amqp: rabbitmq.url("/"),
        redis: shared_servers().await.redis,
    };
    let root = inc.delayed(1);

    // Over the broker's max_message_size (about 100 kB; rask's max_message_bytes is 64 MiB): the
    // broker closes the channel (PRECONDITION_FAILED), for good. The root is acknowledged at once.
    // Both dependents must go through the broker: a worker that ran them itself (local
    // continuation, docs/protocol.md §11) would never publish them.
    let mut env = TestEnv::on(urls.clone(), "too-large-dependent");
    env.settings.local_continuation = false;
    let dependent = tagged.delayed("y".repeat(100_000), &root);
    let (f, redelivered) = released_dependent_fails(&env, &root, &dependent).await;
    assert!(f.message.contains("larger than configured max size"), "{f}");
    assert_eq!(redelivered, 0, "the root was never requeued");

    // Nacked by a queue at its byte limit (a policy with `overflow: reject-publish`): a nack may
    // pass, so the root is requeued, and its redeliveries count even though its outcome is
    // stored: at max_deliveries the dependent fails instead.
    let mut env = TestEnv::on(urls, "nacked-dependent");
    env.settings.local_continuation = false;
    env.settings.max_deliveries = 2;
    let pattern = format!("^{}$", env.settings.queue.replace('.', "\\."));
    let policy = r#"{"max-length-bytes":20000,"overflow":"reject-publish"}"#;
    rabbitmq
        .ctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "byte-limit",
            &pattern,
            policy,
        ])
        .await;
    let dependent = tagged.delayed("n".repeat(30_000), &root);
    let (f, redelivered) = released_dependent_fails(&env, &root, &dependent).await;
    assert!(f.message.contains("(nack)"), "{f}");
    assert!(f.message.contains("max_deliveries"), "{f}");
    assert_eq!(redelivered, 2, "requeued until max_deliveries");
}
