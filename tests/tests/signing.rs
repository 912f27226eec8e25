//! Signed task messages (`signing_keys`): workers run what verifies under any of their keys
//! (rotation) and dead-letter unsigned, forged and tampered messages with the reason, storing
//! nothing for them, and keep serving; `rask dead requeue` keeps a message's signature.

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use rask::builtins::inc;
use rask::{Future, TaskKey};
use rask_common::broker::{self, Destination};
use rask_common::message::{encode_value, REASON_HEADER};
use rask_common::signing::{Signer, SIGNATURE_HEADER};
use rask_common::{Settings, Store, TaskMessage};
use rask_tests::{dead_letter_reason, TestEnv, PATIENCE};

const OLD: &str = "old-signing-key-0123456789abcdef";
const NEW: &str = "new-signing-key-0123456789abcdef";
const ATTACKER: &str = "not-our-key-0123456789abcdef0123";

/// What workers say about every message that does not verify.
const REASON: &str = "message signature does not verify";

/// `settings` signing with `keys` (none: unsigned).
fn signing(settings: &Settings, keys: &[&str]) -> Settings {
    Settings {
        signing_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..settings.clone()
    }
}

/// An `inc(n)` task message under a fresh key.
fn inc_message(n: i64) -> TaskMessage {
    TaskMessage::new(TaskKey::unique("inc"), "inc", encode_value(&(n,)).unwrap())
}

/// Publishes `message` to the task queue as a producer with `settings` would (signed when they
/// have keys), confirmed.
async fn publish(channel: &Channel, settings: &Settings, message: &TaskMessage) {
    let to = Destination::tasks(settings);
    broker::publish_task(channel, &to, message, &message.encode().unwrap())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Publishes `body` with `properties` to the exchange `exchange`, confirmed.
async fn publish_raw(
    channel: &Channel,
    settings: &Settings,
    exchange: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            settings.queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn only_messages_signed_with_a_current_key_run() {
    let mut env = TestEnv::new("signing").await;
    // Mid-rotation: workers hold the new key and the old one; the client signs with the new.
    let keys = format!("{NEW},{OLD}");
    let _workers = env.spawn_workers_with(1, &[("RASK_SIGNING_KEYS", keys.as_str())]);
    env.settings.signing_keys = vec![NEW.into()];
    let client = env.client().await;
    let unsigned = signing(&env.settings, &[]);
    let connection = broker::connect(&unsigned, "test publisher").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();

    // Signed with the first key (by the client) or the second: both run.
    let signed = client.submit(inc, (41,)).await.unwrap();
    assert_eq!(signed.result_within(PATIENCE).await.unwrap(), 42);
    let by_old = inc_message(1);
    publish(&channel, &signing(&env.settings, &[OLD]), &by_old).await;
    let by_old: Future<i64> = client.future(by_old.key);
    assert_eq!(by_old.result_within(PATIENCE).await.unwrap(), 2);

    // Unsigned, forged (a key the workers do not hold), tampered (the body of a signed message
    // changed), and renamed (its message_id changed).
    let unsigned_message = inc_message(10);
    publish(&channel, &unsigned, &unsigned_message).await;
    let forged = inc_message(20);
    publish(&channel, &signing(&env.settings, &[ATTACKER]), &forged).await;
    let tampered = inc_message(30);
    let signer = Signer::new(&[NEW]).unwrap();
    let genuine = signer.sign_properties(
        broker::task_properties(&tampered),
        &tampered.encode().unwrap(),
    );
    let changed = TaskMessage {
        args: encode_value(&(31,)).unwrap(),
        ..tampered.clone()
    };
    let queue_exchange = env.settings.exchange.clone();
    publish_raw(
        &channel,
        &env.settings,
        &queue_exchange,
        &changed.encode().unwrap(),
        genuine.clone(),
    )
    .await;
    let renamed = genuine.with_message_id("someone-else".into());
    publish_raw(
        &channel,
        &env.settings,
        &queue_exchange,
        &tampered.encode().unwrap(),
        renamed,
    )
    .await;

    let dead = env.dead_letters(4).await;
    for letter in &dead {
        let reason = dead_letter_reason(letter).expect("a reason");
        assert!(reason.contains(REASON), "{reason}");
    }
    let reasons: Vec<String> = dead.iter().filter_map(dead_letter_reason).collect();
    let count = |what: &str| reasons.iter().filter(|r| r.contains(what)).count();
    assert_eq!(count("not signed"), 1, "{reasons:?}");
    assert_eq!(count("forged, tampered"), 3, "{reasons:?}");

    // Nothing is stored for a message that does not verify: no failure on its key.
    let store = Store::connect(&env.settings).await.unwrap();
    let keys = [
        unsigned_message.key.clone(),
        forged.key.clone(),
        tampered.key.clone(),
    ];
    assert_eq!(
        store.get_outcomes(&keys).await.unwrap(),
        vec![None, None, None]
    );

    // So whoever forged a key cannot fail its real task: published properly, it runs.
    publish(&channel, &env.settings, &forged).await;
    let real: Future<i64> = client.future(forged.key.clone());
    assert_eq!(real.result_within(PATIENCE).await.unwrap(), 21);

    // And the worker kept serving all along.
    let after = client.submit(inc, (99,)).await.unwrap();
    assert_eq!(after.result_within(PATIENCE).await.unwrap(), 100);
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_requeued_signed_message_still_verifies() {
    let mut env = TestEnv::new("signing-requeue").await;
    env.settings.signing_keys = vec![NEW.into()];
    let client = env.client().await; // declares the topology
    let connection = broker::connect(&env.settings, "test publisher")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();

    // Two dead letters as a worker leaves them (its reason and name added to the headers): a
    // signed task, and an unsigned one.
    let dead_headers = |properties: BasicProperties| {
        let mut headers = properties.headers().clone().unwrap_or_default();
        for (name, value) in [(REASON_HEADER, "worker stopped"), ("x-rask-worker", "w-1")] {
            headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
        }
        properties.with_headers(headers)
    };
    let signed = inc_message(1);
    let body = signed.encode().unwrap();
    let properties = Signer::new(&[NEW])
        .unwrap()
        .sign_properties(broker::task_properties(&signed), &body);
    let dead_exchange = env.settings.dead_letter_exchange.clone();
    publish_raw(
        &channel,
        &env.settings,
        &dead_exchange,
        &body,
        dead_headers(properties),
    )
    .await;
    let unsigned = inc_message(2);
    publish_raw(
        &channel,
        &env.settings,
        &dead_exchange,
        &unsigned.encode().unwrap(),
        dead_headers(broker::task_properties(&unsigned)),
    )
    .await;

    // `rask dead requeue` holds no signing key: it replays messages as they are.
    let requeued = env.rask(&["dead", "requeue"], "").await;
    assert!(requeued.status.success(), "{requeued:?}");
    let _worker = env.spawn_workers_with(1, &[("RASK_SIGNING_KEYS", NEW)]);

    let signed: Future<i64> = client.future(signed.key);
    assert_eq!(signed.result_within(PATIENCE).await.unwrap(), 2);
    let dead = env.dead_letters(1).await;
    let reason = dead_letter_reason(&dead[0]).unwrap();
    assert!(reason.contains(REASON), "{reason}");
    assert_eq!(
        dead[0]
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(unsigned.key.as_str())
    );
    let headers = dead[0].properties.headers().clone().unwrap_or_default();
    assert!(!headers.inner().contains_key(SIGNATURE_HEADER));
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn broadcasts_run_only_when_signed() {
    let mut env = TestEnv::new("signed-run").await;
    env.settings = signing(&env.settings, &[NEW]);
    let worker = env.run_worker(rask_worker::Registry::with_builtins());
    let signed = rask::Client::connect(signing(&env.settings, &[NEW]))
        .await
        .unwrap();
    // Once the worker is registered, a signed ping is answered.
    env.eventually("a signed ping answered", || async {
        let report = signed
            .ping_workers(std::time::Duration::from_secs(2))
            .await
            .unwrap();
        report.answers.values().any(|pong| pong == "pong")
    })
    .await;
    let unsigned = rask::Client::connect(signing(&env.settings, &[]))
        .await
        .unwrap();
    let report = unsigned
        .ping_workers(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert!(report.answers.is_empty(), "{:?}", report.answers);
    let refusals: Vec<_> = report.failed.values().collect();
    assert_eq!(refusals.len(), 1, "{:?}", report.failed);
    assert!(
        refusals[0].message.contains("signature does not verify"),
        "{}",
        refusals[0].message
    );
    signed.close().await.unwrap();
    unsigned.close().await.unwrap();
    worker.stop().await.unwrap();
}
