//! `rask dead list` and `rask dead requeue` through the built binary: listing leaves messages in
//! place, requeueing replays a task (deleting the failure dead-lettering stored) and leaves the
//! others. The dead-letter queue is bounded in messages and bytes, keeping the newest.

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rask::{FailureKind, Future, TaskFailure, TaskKey};
use rask_common::message::{encode_value, REASON_HEADER};
use rask_common::{broker, Outcome, Store, TaskMessage};
use rask_tests::{TestEnv, PATIENCE};

/// Publishes `body` straight to the dead-letter exchange, with `reason` as a worker would.
async fn dead_letter(env: &TestEnv, body: &[u8], reason: Option<&str>) {
    let connection = broker::connect(&env.settings, "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let mut headers = lapin::types::FieldTable::default();
    if let Some(reason) = reason {
        headers.insert(
            REASON_HEADER.into(),
            lapin::types::AMQPValue::LongString(reason.into()),
        );
    }
    channel
        .basic_publish(
            env.settings.dead_letter_exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_in_place_and_requeued_by_key() {
    let env = TestEnv::new("dead-cli").await;
    let client = env.client().await; // declares the topology
                                     // A task dead-lettered with a failure stored on its future, and garbage without a key.
    let key = TaskKey::unique("inc");
    let task = TaskMessage::new(key.clone(), "inc", encode_value(&(41,)).unwrap());
    let failure = TaskFailure::new(
        FailureKind::DeliveryLimit,
        "delivered 3 times without an outcome",
        "inc",
        key.clone(),
        "w-1",
    );
    let store = Store::connect(&env.settings).await.unwrap();
    store
        .store_and_release(&[(key.clone(), Outcome::Failure(failure).encode().unwrap())])
        .await
        .unwrap();
    dead_letter(&env, &task.encode().unwrap(), Some("delivered 3 times")).await;
    dead_letter(&env, b"garbage", None).await;

    let listed = env.rask(&["dead", "list"], "").await;
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8(listed.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "{key}\tinc\t{}\tdelivered 3 times",
            task.encode().unwrap().len()
        )
    );
    assert_eq!(lines[1], "-\t-\t7\tno reason recorded");
    let json = env
        .rask(&["dead", "list", "--json", "--limit", "1"], "")
        .await;
    let json = String::from_utf8(json.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(first["key"], key.as_str());
    assert_eq!(first["reason"], "delivered 3 times");
    // Listing took nothing away.
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 2);

    // No worker yet: requeue the task by key and watch it arrive in the task queue.
    let requeued = env
        .rask(&["dead", "requeue", "--key", key.as_str()], "")
        .await;
    assert!(requeued.status.success(), "{requeued:?}");
    assert_eq!(
        String::from_utf8(requeued.stdout).unwrap().trim(),
        "requeued 1 dead-lettered message(s)"
    );
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 1);
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 1);
    // Its stored failure is gone, so the rerun's value is what the future gets.
    let _workers = env.spawn_workers(1);
    let future: Future<i64> = client.future(key);
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), 42);
    // The garbage is still there, and still listed.
    let listed = env.rask(&["dead", "list"], "").await;
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "-\t-\t7\tno reason recorded\n"
    );
    client.close().await.unwrap();
}

#[tokio::test]
async fn the_dead_letter_queue_keeps_the_newest_within_its_bounds() {
    // In messages: 12 bad messages through a worker, at most 5 kept.
    let mut env = TestEnv::new("dead-bound").await;
    env.settings.dead_letter_max_length = 5;
    env.settings.concurrency = 1;
    env.settings.prefetch = 1;
    let worker = env.run_worker(rask_worker::Registry::with_builtins());
    let client = env.client().await;
    let connection = broker::connect(&env.settings, "test").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    for i in 0..12 {
        channel
            .basic_publish(
                env.settings.exchange.as_str().into(),
                env.settings.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"not a task",
                BasicProperties::default().with_message_id(format!("bad-{i}").into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // One at a time, in order: once the task after them is done, each was dead-lettered (its
    // copy confirmed, the oldest dropped to make room: nothing waited on a full queue).
    let after = client.submit(rask::builtins::inc, (41,)).await.unwrap();
    assert_eq!(after.result_within(PATIENCE).await.unwrap(), 42);
    let dead_queue = env.settings.dead_letter_queue.clone();
    assert_eq!(env.queue_depth(&dead_queue).await.0, 5);
    let kept: Vec<String> = env
        .dead_letters(5)
        .await
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        kept,
        (7..12).map(|i| format!("bad-{i}")).collect::<Vec<_>>()
    );
    client.close().await.unwrap();
    worker.stop().await.unwrap();

    // In bytes: 1,000-byte dead letters under a bound of 3,500 bytes, at most 3 kept.
    let mut env = TestEnv::new("dead-bytes").await;
    env.settings.dead_letter_max_length = 0;
    env.settings.dead_letter_max_bytes = 3_500;
    let client = env.client().await; // declares the topology
    for i in 0..6u8 {
        dead_letter(&env, &[i; 1_000], Some("test")).await;
    }
    let dead_queue = env.settings.dead_letter_queue.clone();
    assert_eq!(env.queue_depth(&dead_queue).await.0, 3);
    let kept: Vec<u8> = env
        .dead_letters(3)
        .await
        .iter()
        .map(|d| d.data[0])
        .collect();
    assert_eq!(kept, vec![3, 4, 5]);
    client.close().await.unwrap();
}
