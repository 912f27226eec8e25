//! Signed task messages (`signing_keys`): workers run what verifies under any of their keys
//! (rotation) and dead-letter unsigned, forged and tampered messages with the reason, storing
//! nothing for them, and keep serving; `rask dead requeue` keeps a message's signature.
//! Signed broadcast requests: a signed task body replayed to the broadcast exchange, and a
//! captured request with another `reply_to` or `expiration`, are refused unanswered.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use rask::builtins::inc;
use rask::{Future, TaskKey};
use rask_common::broker::{self, Destination};
use rask_common::message::{encode_value, REASON_HEADER};
use rask_common::ops::BroadcastReply;
use rask_common::signing::{MessageKind, Signer, SIGNATURE_HEADER};
use rask_common::{Settings, Store, TaskMessage};
use rask_tests::{dead_letter_reason, http_get, metric, TestEnv, PATIENCE};

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
        MessageKind::Task,
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
    let properties = Signer::new(&[NEW]).unwrap().sign_properties(
        MessageKind::Task,
        broker::task_properties(&signed),
        &body,
    );
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
    let id = answering_worker(&env, &signed).await;
    // Unsigned, or signed with another key: refused, and not answered (an unverified
    // `reply_to` is nobody's to send to); the worker counts the refusals.
    for keys in [&[][..], &[ATTACKER]] {
        let other = rask::Client::connect(signing(&env.settings, keys))
            .await
            .unwrap();
        let report = other.ping_workers(Duration::from_secs(2)).await.unwrap();
        assert!(
            report.answers.is_empty() && report.failed.is_empty(),
            "{report:?}"
        );
        assert_eq!(report.missing, vec![id.clone()]);
        other.close().await.unwrap();
    }
    let store = Store::connect(&env.settings).await.unwrap();
    assert_eq!(refusals(&store, "signature").await, 2.0);
    // And the worker keeps answering signed requests.
    let report = signed.ping_workers(PATIENCE).await.unwrap();
    assert_eq!(report.answers.get(&id).map(String::as_str), Some("pong"));
    signed.close().await.unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_signed_task_replayed_as_a_broadcast_is_refused_and_nothing_replies() {
    let mut env = TestEnv::new("replayed-task").await;
    env.settings = signing(&env.settings, &[NEW]);
    let client = env.client().await;
    // A signed task waits in the queue (no worker yet), where anyone with a broker login can
    // copy it (or from the dead-letter queue).
    let task = client.submit(inc, (41,)).await.unwrap();
    let mut attacker = Attacker::connect(&env).await;
    let stolen = attacker
        .channel
        .basic_get(env.settings.queue.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("the task waits in the queue")
        .delivery;
    let requeue = lapin::options::BasicRejectOptions { requeue: true };
    stolen.reject(requeue).await.unwrap();

    let worker = env.run_worker(rask_worker::Registry::with_builtins());
    answering_worker(&env, &client).await;
    // Replayed to the broadcast exchange with the attacker's reply queue: before, every worker
    // ran `inc(41)` at once and sent the attacker its result.
    let properties = stolen
        .properties
        .clone()
        .with_reply_to(attacker.replies_queue.as_str().into())
        .with_correlation_id("replay".into())
        .with_expiration("60000".into());
    attacker.broadcast(&env, &stolen.data, properties).await;
    let store = Store::connect(&env.settings).await.unwrap();
    attacker.refused_unanswered(&store, "signature", 1).await;

    // The task itself was left alone and runs as a task.
    assert_eq!(task.result_within(PATIENCE).await.unwrap(), 42);
    attacker.close().await;
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_broadcast_with_another_reply_to_or_expiration_is_refused() {
    let mut env = TestEnv::new("tampered-run").await;
    env.settings = signing(&env.settings, &[NEW]);
    let worker = env.run_worker(rask_worker::Registry::with_builtins());
    let client = env.client().await;
    let id = answering_worker(&env, &client).await;
    // The attacker taps the fanout broadcast exchange: it gets a copy of every request.
    let mut attacker = Attacker::connect(&env).await;
    let tap = attacker.tap(&env).await;
    let report = client.run(inc, (41,), PATIENCE).await.unwrap();
    assert_eq!(report.answers.get(&id), Some(&42));
    let captured = attacker
        .channel
        .basic_get(tap.as_str().into(), Default::default())
        .await
        .unwrap()
        .expect("the tap holds a copy of the request")
        .delivery;
    let properties = &captured.properties;
    // Its answers redirected to the attacker; or made to live an hour.
    let redirected = properties
        .clone()
        .with_reply_to(attacker.replies_queue.as_str().into());
    let prolonged = properties.clone().with_expiration("3600000".into());
    for tampered in [redirected, prolonged] {
        attacker.broadcast(&env, &captured.data, tampered).await;
    }
    let store = Store::connect(&env.settings).await.unwrap();
    attacker.refused_unanswered(&store, "signature", 2).await;
    attacker.close().await;
    client.close().await.unwrap();
    worker.stop().await.unwrap();
}

/// Waits until the (one) worker of `env` answers a ping from `client` (it is registered and
/// its broadcast queue bound) and returns its id.
async fn answering_worker(env: &TestEnv, client: &rask::Client) -> String {
    let found = std::sync::Mutex::new(None);
    env.eventually("the worker answers a ping", || async {
        let report = client.ping_workers(Duration::from_secs(2)).await.unwrap();
        let id = report.answers.into_iter().find(|(_, pong)| pong == "pong");
        let answered = id.is_some();
        *found.lock().unwrap() = id.map(|(id, _)| id);
        answered
    })
    .await;
    found.into_inner().unwrap().expect("set when answered")
}

/// The `rask_broadcasts_refused_total{reason}` counter of the (one) live worker of `store`.
async fn refusals(store: &Store, reason: &str) -> f64 {
    let workers = rask_common::ops::live_workers(store).await.unwrap();
    let address = workers[0].metrics_addr.expect("the worker serves metrics");
    let (code, text) = http_get(&address.to_string(), "/metrics").await;
    assert_eq!(code, 200, "{text}");
    metric(
        &text,
        &format!("rask_broadcasts_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Someone with a broker login and no signing key: a channel, and a reply queue of its own.
struct Attacker {
    connection: lapin::Connection,
    channel: Channel,
    replies_queue: String,
    replies: lapin::Consumer,
}

impl Attacker {
    async fn connect(env: &TestEnv) -> Self {
        let unsigned = signing(&env.settings, &[]);
        let connection = broker::connect(&unsigned, "attacker").await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        let (replies_queue, replies) =
            broker::consume_private_queue(&channel, "", None, "attacker")
                .await
                .unwrap();
        Attacker {
            connection,
            channel,
            replies_queue,
            replies,
        }
    }

    /// A queue of its own bound to the broadcast exchange.
    async fn tap(&self, env: &TestEnv) -> String {
        let exchange = broker::declare_broadcast_exchange(&self.channel, &env.settings)
            .await
            .unwrap();
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                "".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        queue.name().as_str().to_owned()
    }

    /// Publishes `body` with `properties` to the broadcast exchange.
    async fn broadcast(&self, env: &TestEnv, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                env.settings.broadcast_exchange().as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
    }

    /// Waits until the worker counted `count` requests refused for `reason`, failing the test
    /// if any answer reaches the attacker meanwhile (a worker publishes nothing for a request it
    /// refuses unanswered, and counts a refusal after any answer it does send).
    async fn refused_unanswered(&mut self, store: &Store, reason: &str, count: u32) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            // Any answer fails the test; none within 20 ms: look at the worker's count.
            let wait = tokio::time::timeout(Duration::from_millis(20), self.replies.next());
            if let Ok(Some(reply)) = wait.await {
                let reply = reply.unwrap();
                let decoded: Result<BroadcastReply, _> = rask_common::ops::decode(&reply.data);
                panic!("an answer reached the attacker: {decoded:?}");
            }
            if refusals(store, reason).await >= f64::from(count) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker did not count {count} refusals for {reason}"
            );
        }
        let late = self.replies.next().now_or_never();
        assert!(
            !matches!(late, Some(Some(_))),
            "an answer reached the attacker"
        );
    }

    async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}
