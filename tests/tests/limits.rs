//! Size limits, against real servers: a producer refuses a task message over
//! `max_message_bytes` before publishing anything of it; a worker checks a message's size
//! before computing the HMAC of its signature; a result over `max_result_bytes` is stored as a
//! `ResultTooLarge` failure instead.

use rask::builtins::{echo, inc};
use rask::{Client, Error, FailureKind, Settings};
use rask_common::Store;
use rask_tests::{dead_letter_reason, failure, TestEnv, PATIENCE};
use rask_worker::Registry;

/// A signing key of these tests.
const KEY: &str = "limits-signing-key-0123456789abcd";

/// `echo`'s argument of `n` bytes of text (its MessagePack is `n + 3` or `n + 5` bytes).
fn text(n: usize) -> (rmpv::Value,) {
    (rmpv::Value::from("z".repeat(n)),)
}

#[tokio::test]
async fn the_producer_refuses_a_message_over_max_message_bytes() {
    let mut env = TestEnv::new("too-large").await;
    env.settings.max_message_bytes = 4096;
    let client = env.client().await;
    let refused = client.submit(echo, text(10_000)).await.unwrap_err();
    let Error::TooLarge { bytes, max, .. } = refused else {
        panic!("expected TooLarge, got {refused:?}");
    };
    assert_eq!(max, 4096);
    assert!((10_000..10_200).contains(&bytes), "{bytes}");

    // Nothing of it was published: the queue holds only the task submitted after it.
    client.submit(inc, (1,)).await.unwrap();
    assert_eq!(env.queue_depth(&env.settings.queue).await.0, 1);
}

#[tokio::test]
async fn a_signed_message_over_max_message_bytes_is_refused_unverified() {
    let mut env = TestEnv::new("signed-too-large").await;
    env.settings.signing_keys = vec![KEY.into()];
    env.settings.max_message_bytes = 4096;
    let worker = env.run_worker(Registry::with_builtins());
    // A producer allowed larger messages signs one of about 10 kB, correctly.
    let producer = Client::connect(Settings {
        max_message_bytes: 1 << 20,
        ..env.settings.clone()
    })
    .await
    .unwrap();
    let big = producer.submit(echo, text(10_000)).await.unwrap();

    let dead = env.dead_letters(1).await;
    let reason = dead_letter_reason(&dead[0]).unwrap();
    let expected = format!(
        "message of {} bytes exceeds max_message_bytes = 4096",
        dead[0].data.len()
    );
    assert_eq!(reason, expected);
    // Its signature was not checked (that would hash the whole body), so its key is not
    // trusted: nothing is stored for it, as for any message that does not verify.
    let small = producer.submit(inc, (1,)).await.unwrap();
    assert_eq!(small.result_within(PATIENCE).await.unwrap(), 2);
    let store = Store::connect(&env.settings).await.unwrap();
    let stored = store.get_outcomes(&[big.key().clone()]).await.unwrap();
    assert_eq!(stored, vec![None], "no failure stored on an unverified key");
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_result_over_max_result_bytes_is_stored_as_a_typed_failure() {
    let env = TestEnv::new("result-too-large").await;
    let _worker = env.spawn_workers_with(1, &[("RASK_MAX_RESULT_BYTES", "4096")]);
    let client = env.client().await;
    let fits = client.submit(echo, text(4000)).await.unwrap();
    let over = client.submit(echo, text(5000)).await.unwrap();

    assert_eq!(
        fits.result_within(PATIENCE).await.unwrap(),
        rmpv::Value::from("z".repeat(4000))
    );
    let f = failure(over.result_within(PATIENCE).await.unwrap_err());
    assert_eq!(f.kind, FailureKind::ResultTooLarge, "{f}");
    let expected = format!(
        "task echo (key {}) returned a result of 5003 bytes, over max_result_bytes = 4096",
        over.key()
    );
    assert_eq!(f.message, expected);
}
