//! The core path against real servers: submit, map, gather, re-attach, release, TTL, every
//! way a task can fail ending as a typed error on its future, and `call`'s direct reply.

use std::time::Duration;

use futures::StreamExt;
use rask::builtins::{add, fail, inc};
use rask::{Error, FailureKind, Future, TaskKey};
use rask_common::message::encode_value;
use rask_common::reply::ReplyTo;
use rask_common::{Outcome, Store, TaskMessage};
use rask_tests::{failure, TestEnv, PATIENCE};
use rask_worker::Registry;

rask::task! {
    /// Panics on purpose.
    fn explode(text: String) -> i64 { panic!("boom: {text}") }
}

#[tokio::test]
async fn map_and_gather_10000_tasks_on_two_worker_processes() {
    let env = TestEnv::new("map10k").await;
    let _workers = env.spawn_workers(2);
    let client = env.client().await;
    let futures = client.map(inc, (0..10_000).map(|i| (i,))).await.unwrap();
    assert_eq!(futures.len(), 10_000);
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=10_000).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_second_client_reattaches_by_key() {
    let env = TestEnv::new("reattach").await;
    let worker = env.run_worker(Registry::with_builtins());
    let first = env.client().await;
    let key = first.submit(add, (20, 22)).await.unwrap().key().clone();
    first.close().await.unwrap();
    drop(first);

    let second = env.client().await;
    let future: Future<i64> = second.future(TaskKey::new(key.as_str()).unwrap());
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 42);
    assert!(future.done().await.unwrap());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn release_deletes_the_result() {
    let env = TestEnv::new("release").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let future = client.submit(inc, (1,)).await.unwrap();
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 2);
    assert_eq!(client.release(&[future.key().clone()]).await.unwrap(), 1);
    assert!(!future.done().await.unwrap());
    assert_eq!(client.release(&[future.key().clone()]).await.unwrap(), 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn results_are_stored_with_the_configured_ttl() {
    let mut env = TestEnv::new("ttl").await;
    env.settings.result_ttl = Duration::from_secs(90);
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let future = client.submit(inc, (1,)).await.unwrap();
    future.result_within(PATIENCE).await.unwrap();

    let store = Store::connect(&env.settings).await.unwrap();
    let key = store.keys().result(future.key());
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    assert!(ttl_ms > 80_000 && ttl_ms <= 90_000, "PTTL {key} = {ttl_ms}");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_function_fails_naming_it_and_the_known_ones() {
    let env = TestEnv::new("unknown").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client
        .map_encoded::<i64>("no_such_fn", [encode_value(&(1,)).map_err(Into::into)])
        .await
        .unwrap();
    let f = failure(futures[0].result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::UnknownTask);
    assert_eq!(f.task, "no_such_fn");
    assert_eq!(&f.key, futures[0].key());
    assert!(
        f.message.contains("no_such_fn") && f.message.contains("inc"),
        "{}",
        f.message
    );
    assert!(!f.worker.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn bad_arguments_fail_naming_the_expected_types() {
    let env = TestEnv::new("badargs").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client
        .map_encoded::<i64>("add", [encode_value(&("one", 2)).map_err(Into::into)])
        .await
        .unwrap();
    let f = failure(futures[0].result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::BadArguments);
    assert!(f.message.contains("(i64, i64)"), "{}", f.message);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_panic_fails_the_future_with_its_message_and_the_worker_goes_on() {
    let env = TestEnv::new("panic").await;
    let worker = env.run_worker(Registry::with_builtins().with::<explode>());
    let client = env.client().await;
    let boom = client.submit(explode, ("now".into(),)).await.unwrap();
    let f = failure(boom.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Panicked);
    assert_eq!(f.message, "boom: now");
    let after = client.submit(inc, (9,)).await.unwrap();
    assert_eq!(after.result_within(PATIENCE).await.unwrap(), 10);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn fail_returns_a_typed_error_with_task_key_and_worker() {
    let env = TestEnv::new("fail").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let future = client.submit(fail, ("it broke".into(),)).await.unwrap();
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::Failed);
    assert_eq!(f.message, "it broke");
    assert_eq!(f.task, "fail");
    assert_eq!(&f.key, future.key());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn gather_times_out_with_a_typed_error_when_nothing_runs() {
    let env = TestEnv::new("timeout").await;
    let client = env.client().await; // no worker consumes this test's queue
    let futures = client.map(inc, [(1,), (2,)]).await.unwrap();
    let error = client
        .gather(&futures)
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    match error {
        Error::Timeout {
            pending, waited, ..
        } => {
            assert_eq!(pending, 2);
            assert!(waited >= Duration::from_millis(300));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn gather_each_returns_failures_per_item_in_input_order() {
    let env = TestEnv::new("each").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client
        .map_encoded::<i64>(
            "inc",
            [
                encode_value(&(1,)),
                encode_value(&("x",)),
                encode_value(&(3,)),
            ]
            .into_iter()
            .map(|r| r.map_err(Into::into)),
        )
        .await
        .unwrap();
    let results = client
        .gather(&futures)
        .timeout(PATIENCE)
        .each()
        .await
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &2);
    assert_eq!(
        results[1].as_ref().unwrap_err().failure().unwrap().kind,
        FailureKind::BadArguments
    );
    assert_eq!(results[2].as_ref().unwrap(), &4);
    // Fail-fast gather returns the failure itself.
    let first = client.gather(&futures).timeout(PATIENCE).await.unwrap_err();
    assert_eq!(first.failure().unwrap().key, *futures[1].key());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn as_completed_yields_every_result_once() {
    let env = TestEnv::new("ascompleted").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client.map(inc, (0..200).map(|i| (i,))).await.unwrap();
    let mut seen = vec![false; futures.len()];
    let mut stream = client.as_completed(&futures);
    while let Some((index, result)) = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
        assert!(!seen[index], "index {index} yielded twice");
        seen[index] = true;
        assert_eq!(result.unwrap(), index as i64 + 1);
    }
    assert!(seen.iter().all(|s| *s));
    worker.stop().await.unwrap();
}

/// Results announced while nothing waits (the client's subscription skips them) are gathered
/// all the same, in input order, a key given twice included (the waiter borrows the keys of the
/// futures instead of copying them).
#[tokio::test]
async fn results_announced_before_gather_are_gathered_in_order() {
    let env = TestEnv::new("announced").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let futures = client.map(inc, (0..300).map(|i| (i,))).await.unwrap();
    env.eventually("every result stored before anything waits", || async {
        let mut all = true;
        for future in futures.iter().rev() {
            all &= future.done().await.unwrap();
            if !all {
                break;
            }
        }
        all
    })
    .await;
    let mut twice = futures.clone();
    twice.push(futures[7].clone());
    let values = client.gather(&twice).timeout(PATIENCE).await.unwrap();
    let mut expected: Vec<i64> = (1..=300).collect();
    expected.push(8);
    assert_eq!(values, expected);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_notification_delays_a_result_but_never_loses_it() {
    let env = TestEnv::new("lostnote").await;
    // The client logs in to Redis as a user of its own (on every node), so that the test can
    // cut its subscription and no other client's: redis-rs cannot name a RESP2 pub/sub
    // connection (`CLIENT SETNAME`), but `CLIENT KILL` can pick connections by user.
    let user = env.settings.key_prefix.clone();
    let rules = ["~*", "&*", "+@all"].map(String::from);
    let settings = env.as_redis_user(&user, &rules).await;
    let client = rask::Client::connect(settings).await.unwrap();
    let real = client.submit(inc, (1,)).await.unwrap();
    let silent_key = TaskKey::unique("inc");
    let futures: Vec<Future<i64>> = vec![real.clone(), client.future(silent_key.clone())];
    let mut stream = client.as_completed(&futures);

    // The first result arrives through the normal path, so the waiter has read both keys once
    // and is now waiting for announcements.
    let worker = env.run_worker(Registry::with_builtins());
    let (index, value) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((index, value.unwrap()), (0, 2));

    // Store the second result without announcing it, then cut every subscriber's connection.
    let bytes = rask_common::Outcome::Value(encode_value(&41i64).unwrap())
        .encode()
        .unwrap();
    let store = Store::connect(&env.settings).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.keys().result(&silent_key))
        .arg(bytes)
        .query_async(&mut store.connection())
        .await
        .unwrap();
    // The client subscribed on one node (of a Redis Cluster: any): find that connection first,
    // then cut it alone (killing by user node after node would race the resubscription from
    // one node to the next).
    let mut subscriptions = Vec::new();
    for url in env.settings.redis_nodes() {
        let redis = redis::Client::open(url).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .unwrap();
        for line in list.lines() {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            if field("user").as_deref() == Some(user.as_str()) {
                subscriptions.push((conn.clone(), field("id").unwrap()));
            }
        }
    }
    assert_eq!(subscriptions.len(), 1, "the client subscribes once");
    let (mut conn, id) = subscriptions.pop().unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the client's one subscription was cut");

    // The waiter resubscribes, re-reads what is pending, and finds it.
    let (index, value) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((index, value.unwrap()), (1, 41));
    worker.stop().await.unwrap();
    drop(stream);
    client.close().await.unwrap();
    for url in env.settings.redis_nodes() {
        let redis = redis::Client::open(url).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn call_returns_the_value_or_the_typed_failure() {
    let env = TestEnv::new("call").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let value = tokio::time::timeout(PATIENCE, client.call(add, (40, 2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, 42);
    let error = tokio::time::timeout(PATIENCE, client.call(fail, ("nope".into(),)))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(failure(error).message, "nope");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_reply_carries_the_outcome_as_stored_not_a_later_runs() {
    let env = TestEnv::new("replystored").await;
    let client = env.client().await;
    let store = Store::connect(&env.settings).await.unwrap();
    let to = ReplyTo::unique();
    // The node a client subscribes on (the one Redis, or the first node of a cluster).
    let redis = &rask_common::store::subscription_clients(&env.settings).unwrap()[0];
    let mut replies = redis.get_async_pubsub().await.unwrap();
    replies
        .subscribe(store.keys().reply_channel(&to))
        .await
        .unwrap();

    // An earlier run stored 1000; this run of `inc(41)` would store 42, and finds it taken.
    let key = TaskKey::unique("inc");
    let earlier = Outcome::Value(encode_value(&1000_i64).unwrap())
        .encode()
        .unwrap();
    store
        .store_and_release(&[(key.clone(), earlier.clone())])
        .await
        .unwrap();
    let mut message = TaskMessage::new(key.clone(), "inc", encode_value(&(41_i64,)).unwrap());
    message.reply = Some(to);
    env.publish_body(&message.encode().unwrap()).await;
    let worker = env.run_worker(Registry::with_builtins());

    let mut messages = replies.on_message();
    let reply = tokio::time::timeout(PATIENCE, messages.next())
        .await
        .expect("a reply arrives")
        .unwrap();
    let (replied_key, outcome) = rask_common::reply::decode(reply.get_payload_bytes()).unwrap();
    assert_eq!(replied_key, key);
    assert_eq!(outcome, earlier.as_slice(), "the stored outcome, not 42");
    let future: Future<i64> = client.future(key);
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 1000);
    worker.stop().await.unwrap();
}
