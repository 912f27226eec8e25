//! Messages that are not tasks: dead-lettered with a reason, failures stored where a key can be
//! read, and the worker keeps serving: a few by hand, then a thousand of every kind (random
//! bytes, truncated, wrong version, unknown function, wrong argument types, oversized) among a
//! thousand good tasks; and tasks whose headers no rask client writes (bytes that are not UTF-8,
//! every field type) run as any other.

use std::collections::HashMap;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use rask::builtins::inc;
use rask::{Error, FailureKind, Future, TaskKey};
use rask_common::message::PROTOCOL_VERSION;
use rask_common::{broker, TaskMessage};
use rask_tests::{dead_letter_reason, TestEnv, PATIENCE};
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
    let bad_version = bad_version.encode().unwrap();
    let mut bodies = garbage.clone();
    bodies.push(bad_version.clone());
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
    let dead = dead_letters(&env, bodies.len()).await;
    for message in &dead {
        let reason = dead_letter_reason(message)
            .unwrap_or_else(|| panic!("no reason on {:?}", message.data));
        if message.data == bad_version {
            assert_eq!(reason, wrong_version_reason());
        } else {
            // Not MessagePack, or not a map: the decoder's own words follow.
            let prefix = "not a rask task message: ";
            assert!(
                reason.starts_with(prefix) && reason.len() > prefix.len(),
                "{reason:?} on {:?}",
                message.data
            );
        }
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

    env.publish_body(&bad.encode().unwrap()).await;

    match dependent.result_within(PATIENCE).await.unwrap_err() {
        Error::Task(f) => {
            assert_eq!(f.kind, FailureKind::DependencyFailed);
            assert!(f.message.contains(bad.key.as_str()), "{}", f.message);
        }
        other => panic!("expected a task failure, got {other:?}"),
    }
    worker.stop().await.unwrap();
}

/// The first `n` messages of `env`'s dead-letter queue (taken off it), waiting for them.
async fn dead_letters(env: &TestEnv, n: usize) -> Vec<Delivery> {
    let connection = broker::connect(&env.settings, "dead-letter reader")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
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
    tokio::time::timeout(PATIENCE, consumer.take(n).collect::<Vec<_>>())
        .await
        .expect("the dead letters arrive")
        .into_iter()
        .map(|d| d.unwrap())
        .collect()
}

/// Headers any AMQP client may send and RabbitMQ passes on: long strings that are not UTF-8
/// (AMQP's long string is bytes), rask's own header names with values of the wrong type, and a
/// table holding every field type there is. (A client library that decodes long strings as
/// UTF-8 text, or panics on a field type it does not know, loses its connection on such a
/// message, and meets it again on every reconnect.)
fn hostile_headers() -> Vec<(&'static str, FieldTable)> {
    let header = |name: &str, value: AMQPValue| {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(name), value);
        headers
    };
    let not_utf8 = || AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, 0x00, 0xc3]));
    let mut every_type = FieldTable::default();
    let values = [
        AMQPValue::Boolean(true),
        AMQPValue::ShortShortInt(-1),
        AMQPValue::ShortShortUInt(255),
        AMQPValue::ShortInt(-2),
        AMQPValue::ShortUInt(65_535),
        AMQPValue::LongInt(-3),
        AMQPValue::LongUInt(u32::MAX),
        AMQPValue::LongLongInt(i64::MIN),
        // Finite: RabbitMQ's own parser fails on NaN and infinities, closing the publisher's
        // connection, so no such message reaches a queue.
        AMQPValue::Float(-1.5),
        AMQPValue::Double(f64::MAX),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 255,
            value: u32::MAX,
        }),
        not_utf8(),
        AMQPValue::Timestamp(u64::MAX),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8; 3])),
        AMQPValue::Void,
    ];
    for (i, value) in values.iter().enumerate() {
        every_type.insert(ShortString::from(format!("v{i}")), value.clone());
    }
    every_type.insert(
        ShortString::from("array"),
        AMQPValue::FieldArray(FieldArray::from(values.to_vec())),
    );
    every_type.insert(
        ShortString::from("table"),
        AMQPValue::FieldTable(every_type.clone()),
    );
    vec![
        (
            "a header that is not UTF-8",
            header("x-anything", not_utf8()),
        ),
        (
            "a traceparent that is not UTF-8",
            header("traceparent", not_utf8()),
        ),
        (
            "a signature that is not UTF-8 (signing off)",
            header(rask_common::signing::SIGNATURE_HEADER, not_utf8()),
        ),
        (
            "a delivery count that is text",
            header("x-delivery-count", AMQPValue::LongString("many".into())),
        ),
        ("every field type, nested", every_type),
    ]
}

#[tokio::test]
async fn tasks_with_hostile_headers_run_and_the_worker_keeps_serving() {
    let env = TestEnv::new("badheaders").await;
    let worker = env.run_worker(Registry::with_builtins());
    let client = env.client().await;
    let mut tasks = Vec::new();
    for (x, (what, headers)) in (0_i64..).zip(hostile_headers()) {
        let message = TaskMessage::new(
            TaskKey::unique("inc"),
            "inc",
            rmp_serde::to_vec(&(x,)).unwrap(),
        );
        env.publish_with_headers(&message.encode().unwrap(), headers)
            .await;
        tasks.push((what, message.key, x));
    }
    // Not a task, with a header that is not UTF-8: dead-lettered, its headers kept.
    let (_, not_utf8) = hostile_headers().swap_remove(0);
    env.publish_with_headers(b"not a task", not_utf8.clone())
        .await;

    for (what, key, x) in tasks {
        let future: Future<i64> = client.future(key);
        assert_eq!(
            future.result_within(PATIENCE).await.unwrap(),
            x + 1,
            "the task with {what}"
        );
    }
    let good = client.map(inc, (0..100).map(|i| (i,))).await.unwrap();
    let values = client.gather(&good).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=100).collect::<Vec<i64>>());

    let [dead] = dead_letters(&env, 1)
        .await
        .try_into()
        .expect("one dead letter");
    assert_eq!(dead.data, b"not a task");
    let reason = dead_letter_reason(&dead).expect("a reason");
    assert!(reason.starts_with("not a rask task message: "), "{reason}");
    let headers = dead.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        headers.inner().get("x-anything"),
        not_utf8.inner().get("x-anything"),
        "the copy keeps the original's headers"
    );
    worker.stop().await.unwrap();
}

/// The reason a worker gives for a message of protocol version 999.
fn wrong_version_reason() -> String {
    format!("protocol version 999 is not supported (this build speaks {PROTOCOL_VERSION})")
}

/// The malformed messages of [`a_thousand_malformed_messages_do_not_disturb_a_thousand_good_ones`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformed {
    RandomBytes,
    Truncated,
    WrongVersion,
    UnknownFunction,
    WrongArgumentTypes,
    Oversized,
}

impl Malformed {
    const ALL: [Malformed; 6] = [
        Malformed::RandomBytes,
        Malformed::Truncated,
        Malformed::WrongVersion,
        Malformed::UnknownFunction,
        Malformed::WrongArgumentTypes,
        Malformed::Oversized,
    ];

    /// A body of this kind, and the key of its task when a worker can read one.
    fn body(self, max_bytes: usize) -> (Vec<u8>, Option<TaskKey>) {
        let task = |function: &str, args: Vec<u8>| {
            TaskMessage::new(TaskKey::unique(function), function, args)
        };
        let keyed = |m: TaskMessage| (m.encode().unwrap(), Some(m.key));
        match self {
            Malformed::RandomBytes => {
                let random = uuid::Uuid::new_v4();
                let len = 1 + usize::from(random.as_bytes()[0] % 48);
                let bytes = (0..len.div_ceil(16)).flat_map(|_| *uuid::Uuid::new_v4().as_bytes());
                (bytes.take(len).collect(), None)
            }
            Malformed::Truncated => {
                let body = task("inc", rmp_serde::to_vec(&(1,)).unwrap())
                    .encode()
                    .unwrap();
                (body[..body.len() / 2].to_vec(), None)
            }
            Malformed::WrongVersion => {
                let mut m = task("inc", rmp_serde::to_vec(&(1,)).unwrap());
                m.version = 999;
                keyed(m)
            }
            Malformed::UnknownFunction => {
                keyed(task("no_such_fn", rmp_serde::to_vec(&(1,)).unwrap()))
            }
            Malformed::WrongArgumentTypes => {
                keyed(task("inc", rmp_serde::to_vec(&("one",)).unwrap()))
            }
            Malformed::Oversized => keyed(task(
                "echo",
                rmp_serde::to_vec(&(vec![7u8; max_bytes],)).unwrap(),
            )),
        }
    }

    /// Whether a worker dead-letters it (the others are tasks whose call fails).
    fn dead_lettered(self) -> bool {
        !matches!(
            self,
            Malformed::UnknownFunction | Malformed::WrongArgumentTypes
        )
    }

    /// The reason a worker gives when it dead-letters `body`, of this kind, with
    /// `max_message_bytes = max_bytes`.
    fn reason(self, body: &[u8], max_bytes: usize) -> String {
        match self {
            Malformed::Oversized => format!(
                "message of {} bytes exceeds max_message_bytes = {max_bytes}",
                body.len()
            ),
            Malformed::WrongVersion => wrong_version_reason(),
            // What the decoder says of these bytes (which are random, or cut short).
            Malformed::RandomBytes | Malformed::Truncated => {
                TaskMessage::decode(body)
                    .expect_err("not a task message")
                    .reason
            }
            Malformed::UnknownFunction | Malformed::WrongArgumentTypes => {
                unreachable!("{self:?} is a task: not dead-lettered")
            }
        }
    }

    /// The failure stored on its future, if it has a key.
    fn failure(self) -> FailureKind {
        match self {
            Malformed::UnknownFunction => FailureKind::UnknownTask,
            Malformed::WrongArgumentTypes => FailureKind::BadArguments,
            _ => FailureKind::BadMessage,
        }
    }
}

#[tokio::test]
async fn a_thousand_malformed_messages_do_not_disturb_a_thousand_good_ones() {
    let env = TestEnv::new("malformed").await;
    let max_bytes = 4096;
    let mut workers = env.spawn_workers_with(2, &[("RASK_MAX_MESSAGE_BYTES", "4096")]);
    let pids: Vec<u32> = workers.iter().map(|w| w.pid()).collect();
    let client = env.client().await;
    let connection = broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();

    let bad: Vec<(Malformed, Vec<u8>, Option<TaskKey>)> = (0..1000)
        .map(|i| {
            let kind = Malformed::ALL[i % Malformed::ALL.len()];
            let (body, key) = kind.body(max_bytes);
            (kind, body, key)
        })
        .collect();
    for (_, body, _) in &bad {
        channel
            .basic_publish(
                env.settings.exchange.as_str().into(),
                env.settings.queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    let good = client.map(inc, (0..1000).map(|i| (i,))).await.unwrap();

    // Every good task is right.
    let values = client.gather(&good).timeout(PATIENCE).await.unwrap();
    assert_eq!(values, (1..=1000).collect::<Vec<i64>>());
    // Every bad one with a readable key failed on its future, with the right kind.
    let keyed: Vec<(Malformed, Future<i64>)> = bad
        .iter()
        .filter_map(|(kind, _, key)| Some((*kind, client.future(key.clone()?))))
        .collect();
    let futures: Vec<Future<i64>> = keyed.iter().map(|(_, f)| f.clone()).collect();
    let results = client
        .gather(&futures)
        .timeout(PATIENCE)
        .each()
        .await
        .unwrap();
    for ((kind, future), result) in keyed.iter().zip(results) {
        let failure = result.unwrap_err().failure().cloned();
        assert_eq!(
            failure.map(|f| f.kind),
            Some(kind.failure()),
            "{kind:?} {}",
            future.key()
        );
    }
    // Every bad one that is not a task went to the dead-letter queue with its reason, and
    // nothing else did.
    let mut expected: Vec<Vec<u8>> = bad
        .iter()
        .filter(|(kind, _, _)| kind.dead_lettered())
        .map(|(_, body, _)| body.clone())
        .collect();
    let dead = env.dead_letters(expected.len()).await;
    let kinds: HashMap<&[u8], Malformed> = bad
        .iter()
        .map(|(kind, body, _)| (body.as_slice(), *kind))
        .collect();
    for message in &dead {
        let reason = dead_letter_reason(message)
            .unwrap_or_else(|| panic!("no reason on {:?}", message.data));
        let kind = *kinds
            .get(message.data.as_slice())
            .unwrap_or_else(|| panic!("{:?} was not published as malformed", message.data));
        assert_eq!(reason, kind.reason(&message.data, max_bytes), "{kind:?}");
        if kind == Malformed::Truncated {
            assert!(reason.starts_with("not a rask task message: "), "{reason}");
        }
    }
    let mut dead_bodies: Vec<Vec<u8>> = dead.iter().map(|m| m.data.clone()).collect();
    dead_bodies.sort();
    expected.sort();
    assert!(
        dead_bodies == expected,
        "the dead letters are the malformed messages"
    );
    assert_eq!(env.queue_depth(&env.settings.dead_letter_queue).await.0, 0);
    // The same processes served throughout.
    for (worker, pid) in workers.iter_mut().zip(pids) {
        assert!(worker.is_running().unwrap() && worker.pid() == pid);
    }
}
