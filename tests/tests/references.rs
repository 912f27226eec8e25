//! Arguments passed by reference (`inline_limit`, docs/protocol.md §17): large arguments are
//! stored once in Redis under their digest and come back intact; `inline_limit = 0` keeps them in
//! the message; arguments that are gone or were changed fail the task with `BadArguments` naming
//! the digest (changed bytes are caught by their digest when messages are signed); `purge`
//! deletes them; a reference an older producer made (SHA-256) is still read, and one naming an
//! unknown hash function fails its task as a bad message.

use rask::builtins::echo;
use rask::{FailureKind, Future};
use rask_common::message::encode_value;
use rask_common::reference::{HashFunction, Location, Reference};
use rask_common::{Store, TaskKey, TaskMessage};
use rask_tests::{failure, TestEnv, PATIENCE};
use rmpv::Value;

/// The `inline_limit` of these tests (off by default).
const LIMIT: usize = 256 << 10;

/// A signing key for the signed test.
const KEY: &str = "reference-signing-key-0123456789";

/// `len` bytes unique to `seed`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The reference a producer makes for `echo(bytes)`.
fn reference_of(bytes: &[u8]) -> Reference {
    let args = encode_value(&(Value::Binary(bytes.to_vec()),)).unwrap();
    Reference::to(&args, Location::Store)
}

async fn redis(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.settings.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The stored bytes of the arguments `reference` names (`None`: not stored).
async fn stored(env: &TestEnv, reference: &Reference) -> Option<Vec<u8>> {
    let key = format!("{}:arg:{}", env.settings.key_prefix, reference.digest);
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut redis(env).await)
        .await
        .unwrap()
}

/// Replaces the stored arguments of `reference` with `bytes`.
async fn overwrite(env: &TestEnv, reference: &Reference, bytes: &[u8]) {
    let key = format!("{}:arg:{}", env.settings.key_prefix, reference.digest);
    redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .query_async::<()>(&mut redis(env).await)
        .await
        .unwrap();
}

#[tokio::test]
async fn large_arguments_travel_by_reference_and_come_back_intact() {
    let mut env = TestEnv::new("ref-roundtrip").await;
    env.settings.inline_limit = LIMIT;
    let _workers = env.spawn_workers(1);
    let client = env.client().await;
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 1 << 20)).collect();
    let futures = client
        .map(echo, payloads.iter().map(|p| (Value::Binary(p.clone()),)))
        .await
        .unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    for (value, sent) in values.iter().zip(&payloads) {
        assert_eq!(value, &Value::Binary(sent.clone()));
        let reference = reference_of(sent);
        let kept = stored(&env, &reference).await.expect("stored by reference");
        assert!(reference.check(&kept, true).is_ok());
    }
    // Small arguments stay in the message.
    let small = payload(9, 1000);
    let echoed: Value = client
        .call(echo, (Value::Binary(small.clone()),))
        .await
        .unwrap();
    assert_eq!(echoed, Value::Binary(small.clone()));
    assert_eq!(stored(&env, &reference_of(&small)).await, None);
}

#[tokio::test]
async fn by_default_arguments_stay_in_the_message() {
    let env = TestEnv::new("ref-inline").await;
    let _workers = env.spawn_workers(1);
    let client = env.client().await;
    let sent = payload(11, 600 << 10);
    let echoed: Value = client
        .call(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    assert_eq!(echoed, Value::Binary(sent.clone()));
    assert_eq!(stored(&env, &reference_of(&sent)).await, None);
}

#[tokio::test]
async fn arguments_that_are_gone_fail_the_task_naming_their_digest() {
    let mut env = TestEnv::new("ref-gone").await;
    env.settings.inline_limit = LIMIT;
    let client = env.client().await;
    let sent = payload(21, 1 << 20);
    let reference = reference_of(&sent);
    let future: Future<Value> = client.submit(echo, (Value::Binary(sent),)).await.unwrap();
    // No worker yet: the arguments go before the task can run.
    let key = format!("{}:arg:{}", env.settings.key_prefix, reference.digest);
    let deleted: u64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut redis(&env).await)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "stored before the message was published");
    let _workers = env.spawn_workers(1);
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::BadArguments);
    assert!(f.message.contains(&reference.digest.hex()), "{}", f.message);
    assert!(f.message.contains("gone"), "{}", f.message);
}

#[tokio::test]
async fn changed_arguments_are_refused_by_their_digest_when_signed() {
    let mut env = TestEnv::new("ref-signed").await;
    env.settings.inline_limit = LIMIT;
    env.settings.signing_keys = vec![KEY.to_owned()];
    let client = env.client().await;
    let sent = payload(31, 1 << 20);
    let reference = reference_of(&sent);
    let future: Future<Value> = client
        .submit(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    // Same length, one byte changed: only the digest tells.
    let mut changed = stored(&env, &reference).await.expect("stored");
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    overwrite(&env, &reference, &changed).await;
    let _workers = env.spawn_workers_with(1, &[("RASK_SIGNING_KEYS", KEY)]);
    let f = failure(future.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::BadArguments);
    assert!(f.message.contains("digest"), "{}", f.message);
    // Untouched arguments of the same worker still run.
    let other = payload(32, 1 << 20);
    let echoed: Value = client
        .call(echo, (Value::Binary(other.clone()),))
        .await
        .unwrap();
    assert_eq!(echoed, Value::Binary(other));
}

#[tokio::test]
async fn a_sha256_reference_of_an_older_producer_still_runs() {
    let env = TestEnv::new("ref-sha256").await;
    let client = env.client().await;
    let sent = payload(51, 300 << 10);
    let args = encode_value(&(Value::Binary(sent.clone()),)).unwrap();
    // What a producer from before BLAKE3 wrote: the arguments under their SHA-256, and a
    // reference without a `hash` field.
    let digest = HashFunction::Sha256.digest(&args);
    let reference = Reference {
        digest,
        len: args.len() as u64,
        location: Location::Store,
    };
    assert!(!rmp_serde::to_vec_named(&reference)
        .unwrap()
        .windows(4)
        .any(|w| w == b"hash"));
    let store = Store::connect(&env.settings).await.unwrap();
    store.put_argument(&digest, &args).await.unwrap();
    let key = TaskKey::unique("echo");
    let mut message = TaskMessage::new(key.clone(), "echo", Vec::new());
    message.args_ref = Some(reference);
    env.publish_body(&message.encode().unwrap()).await;
    let _workers = env.spawn_workers(1);
    let echoed: Value = client.future(key).result_within(PATIENCE).await.unwrap();
    assert_eq!(echoed, Value::Binary(sent));
}

#[tokio::test]
async fn a_reference_naming_an_unknown_hash_function_fails_the_task_as_a_bad_message() {
    let env = TestEnv::new("ref-forged-hash").await;
    let client = env.client().await;
    let args = encode_value(&(Value::Binary(payload(61, 1024)),)).unwrap();
    let key = TaskKey::unique("echo");
    let mut message = TaskMessage::new(key.clone(), "echo", Vec::new());
    message.args_ref = Some(Reference::to(&args, Location::Store));
    let mut body = message.encode().unwrap();
    // The same message naming a hash function no build knows.
    let at = body
        .windows(6)
        .position(|w| w == b"Blake3")
        .expect("a BLAKE3 reference says so");
    body[at + 5] = b'9';
    env.publish_body(&body).await;
    let _workers = env.spawn_workers(1);
    let f = failure(
        client
            .future::<Value>(key)
            .result_within(PATIENCE)
            .await
            .unwrap_err(),
    );
    assert_eq!(f.kind, FailureKind::BadMessage);
    let dead = env.dead_letters(1).await;
    assert_eq!(dead[0].data, body);
    let reason = rask_tests::dead_letter_reason(&dead[0]).expect("a reason");
    assert!(
        reason.starts_with("malformed task message: ") && reason.contains("Blake9"),
        "{reason}"
    );
}

#[tokio::test]
async fn purge_deletes_arguments_passed_by_reference() {
    let mut env = TestEnv::new("ref-purge").await;
    env.settings.inline_limit = LIMIT;
    let client = env.client().await;
    let sent = payload(41, 1 << 20);
    let reference = reference_of(&sent);
    let _future: Future<Value> = client.submit(echo, (Value::Binary(sent),)).await.unwrap();
    assert!(stored(&env, &reference).await.is_some());
    client.purge().await.unwrap();
    assert_eq!(stored(&env, &reference).await, None);
}
