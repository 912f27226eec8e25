//! Messages that are not tasks: dead-lettered with a reason, failures stored where a key can be
//! read, and the worker keeps serving.

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use rask::builtins::inc;
use rask::{Error, FailureKind, Future, TaskKey};
use rask_common::message::REASON_HEADER;
use rask_common::{broker, TaskMessage};
use rask_tests::{TestEnv, PATIENCE};
use rask_worker::Registry;

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_and_the_worker_keeps_serving() {
    let env = TestEnv::new("deadletter").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let connection = broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();

    let garbage: Vec<Vec<u8>> = vec![
        b"not msgpack at all".to_vec(),
        vec![0xc1],
        Vec::new(),
        vec![0x93, 0x01],
    ];
    let mut bad_version = TaskMessage::new(
        TaskKey::unique("inc"),
        "inc",
        rmp_serde::to_vec(&(1,)).unwrap(),
    );
    bad_version.version = 999;
    let bad_key = bad_version.key.clone();
    let mut bodies = garbage.clone();
    bodies.push(bad_version.encode().unwrap());
    for body in &bodies {
        channel
            .basic_publish(
                env.settings.exchange.as_str().into(),
                env.settings.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // The future of the message whose key could be read fails with a clear error.
    let future: Future<i64> = client.future(bad_key);
    match future.result_within(PATIENCE).await.unwrap_err() {
        Error::Task(f) => {
            assert_eq!(f.kind, FailureKind::BadMessage);
            assert!(f.message.contains("999"), "{}", f.message);
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    // The worker still serves good tasks.
    let good = client.map(inc, (0..100).map(|i| (i,))).await.unwrap();
    let values = client.gather(&good).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=100).collect::<Vec<i64>>());

    // Every bad message is in the dead-letter queue with a reason.
    let consumer = channel
        .basic_consume(
            env.settings.dead_letter_queue.as_str().into(),
            "dead-letter reader".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead: Vec<_> =
        tokio::time::timeout(PATIENCE, consumer.take(bodies.len()).collect::<Vec<_>>())
            .await
            .expect("every bad message reaches the dead-letter queue")
            .into_iter()
            .map(|d| d.unwrap())
            .collect();
    for message in &dead {
        let headers = message.properties.headers().clone().unwrap_or_default();
        let reason = headers.inner().get(REASON_HEADER).map(|v| format!("{v:?}"));
        assert!(
            reason.is_some_and(|r| !r.is_empty()),
            "no reason on {:?}",
            message.data
        );
    }
    let mut dead_bodies: Vec<Vec<u8>> = dead.iter().map(|m| m.data.clone()).collect();
    dead_bodies.sort();
    bodies.sort();
    assert_eq!(dead_bodies, bodies);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn graph_tasks_waiting_on_a_malformed_message_fail_instead_of_hanging() {
    let env = TestEnv::new("badgraph").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    // A graph task that takes the result of `bad`, whose message will be malformed.
    let mut bad = TaskMessage::new(
        TaskKey::unique("inc"),
        "inc",
        rmp_serde::to_vec(&(1,)).unwrap(),
    );
    bad.version = 999;
    let dependent = client
        .persist(&rask::builtins::add.delayed(rask::Arg::key(bad.key.clone()), 1))
        .await
        .unwrap();

    let connection = broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            env.settings.exchange.as_str().into(),
            env.settings.queue.as_str().into(),
            BasicPublishOptions::default(),
            &bad.encode().unwrap(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    match dependent.result_within(PATIENCE).await.unwrap_err() {
        Error::Task(f) => {
            assert_eq!(f.kind, FailureKind::DependencyFailed);
            assert!(f.message.contains(bad.key.as_str()), "{}", f.message);
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    worker.stop().await.unwrap();
}
