//! The blob store (`blob_url`, issue 21) with a directory (`file://`): a 200 MiB argument and a
//! 200 MiB result round trip through it (neither could travel through RabbitMQ or Redis: over
//! `max_message_bytes` and `max_result_bytes`); a worker killed while it writes a result leaves
//! no outcome naming a missing blob, and the task completes on another worker; `release`
//! deletes the blobs of the results it releases; arguments go there too.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rask::builtins::echo;
use rask::Future;
use rask_common::message::encode_value;
use rask_common::reference::{Digest, Location, Reference};
use rask_tests::{TestEnv, PATIENCE};
use rmpv::Value;

/// `len` bytes unique to `seed` (eight at a time, so that 200 MiB is quick in a debug build).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// An environment whose client and workers keep values over 1 MiB in a fresh directory.
fn with_blobs(mut env: TestEnv, name: &str) -> (TestEnv, PathBuf, String) {
    let dir = env.path(name);
    let url = format!("file://{}", dir.display());
    env.settings.blob_url = url.clone();
    (env, dir, url)
}

/// The names of the files in `dir` (none if it does not exist yet).
fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The digest under which `echo(bytes)`'s result (or arguments) are kept.
fn digest_of_echo(bytes: &[u8]) -> Digest {
    let value = encode_value(&Value::Binary(bytes.to_vec())).unwrap();
    Reference::to(&value, Location::Blob).digest
}

#[tokio::test]
async fn a_200_mib_argument_and_result_round_trip_through_a_directory() {
    let (env, dir, url) = with_blobs(TestEnv::new("blob-200").await, "blobs");
    let _workers = env.spawn_workers_with(1, &[("RASK_BLOB_URL", url.as_str())]);
    let client = env.client().await;
    let sent = payload(1, 200 << 20);
    let echoed: Value = client
        .call(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    let Value::Binary(back) = echoed else {
        panic!("echo returned another kind of value")
    };
    assert!(back == sent, "the 200 MiB result differs from the argument");
    // Both are in the directory: the arguments (a tuple) and the result (the value).
    let args = encode_value(&(Value::Binary(sent.clone()),)).unwrap();
    let kept = files(&dir);
    assert!(kept.contains(&Digest::of(&args).hex()), "{kept:?}");
    assert!(kept.contains(&digest_of_echo(&sent).hex()), "{kept:?}");
}

#[tokio::test]
async fn a_worker_killed_mid_upload_leaves_no_dangling_reference() {
    let (env, dir, url) = with_blobs(TestEnv::new("blob-kill").await, "blobs");
    let client = env.client().await;
    let sent = payload(2, 200 << 20);
    let future: Future<Value> = client
        .submit(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    let result = digest_of_echo(&sent).hex();
    let mut workers = env.spawn_workers_with(1, &[("RASK_BLOB_URL", url.as_str())]);
    // A result is written aside (`{digest}#{n}`) and renamed when complete: kill the worker
    // while the file of the result is being written.
    let staging = format!("{result}#");
    env.eventually("the worker writes the result", || {
        let dir = dir.clone();
        let staging = staging.clone();
        async move { files(&dir).iter().any(|f| f.starts_with(&staging)) }
    })
    .await;
    kill(Pid::from_raw(workers[0].pid() as i32), Signal::SIGKILL).unwrap();
    env.eventually("the worker is gone", || {
        let gone = !workers[0].is_running().unwrap();
        async move { gone }
    })
    .await;
    assert!(!future.done().await.unwrap(), "no outcome was stored");
    assert!(!files(&dir).contains(&result), "no complete blob either");
    // Redelivered to another worker, the task completes with the whole result.
    let _others = env.spawn_workers_with(1, &[("RASK_BLOB_URL", url.as_str())]);
    let Value::Binary(back) = future.result_within(PATIENCE).await.unwrap() else {
        panic!("echo returned another kind of value")
    };
    assert!(back == sent, "the result differs from the argument");
    assert!(files(&dir).contains(&result));
}

#[tokio::test]
async fn release_removes_the_blobs_of_released_results() {
    let (env, dir, url) = with_blobs(TestEnv::new("blob-release").await, "blobs");
    let _workers = env.spawn_workers_with(1, &[("RASK_BLOB_URL", url.as_str())]);
    let client = env.client().await;
    let sent: Vec<Vec<u8>> = (0..2).map(|i| payload(10 + i, 3 << 20)).collect();
    let futures = client
        .map(echo, sent.iter().map(|p| (Value::Binary(p.clone()),)))
        .await
        .unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    for (value, p) in values.iter().zip(&sent) {
        assert!(*value == Value::Binary(p.clone()));
        assert!(files(&dir).contains(&digest_of_echo(p).hex()));
    }
    assert_eq!(
        client.release(&[futures[0].key().clone()]).await.unwrap(),
        1
    );
    let kept = files(&dir);
    assert!(!kept.contains(&digest_of_echo(&sent[0]).hex()), "{kept:?}");
    assert!(kept.contains(&digest_of_echo(&sent[1]).hex()), "{kept:?}");
    // What is left still reads back; purge takes the rest.
    let value = futures[1].result().await.unwrap();
    assert!(value == Value::Binary(sent[1].clone()));
    client.purge().await.unwrap();
    assert_eq!(files(&dir), Vec::<String>::new());
}

/// A result read back from the blob store is checked as arguments are: an object of another
/// length always, one of the same length with other bytes by its digest when messages are
/// signed (without signing the client hashes each value once, to name its arguments).
#[tokio::test]
async fn a_changed_result_blob_is_refused_by_its_length_and_when_signed_by_its_digest() {
    const KEY: &str = "blob-signing-key-0123456789abcdef";
    let (mut env, dir, url) = with_blobs(TestEnv::new("blob-check").await, "blobs");
    env.settings.signing_keys = vec![KEY.to_owned()];
    let _workers = env.spawn_workers_with(
        1,
        &[("RASK_BLOB_URL", url.as_str()), ("RASK_SIGNING_KEYS", KEY)],
    );
    let signed = env.client().await;
    let sent = payload(41, 2 << 20);
    let future: Future<Value> = signed
        .submit(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    let value = future.result_within(PATIENCE).await.unwrap();
    assert!(value == Value::Binary(sent.clone()), "the result differs");
    let object = dir.join(digest_of_echo(&sent).hex());
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();
    let error = future.result_within(PATIENCE).await.unwrap_err();
    assert!(error.to_string().contains("digest"), "{error}");

    let mut unsigned = env.settings.clone();
    unsigned.signing_keys.clear();
    let plain = rask::Client::connect(unsigned).await.unwrap();
    let again: Future<Value> = plain.future(future.key().clone());
    std::fs::write(&object, &bytes[..last]).unwrap();
    let error = again.result_within(PATIENCE).await.unwrap_err();
    assert!(
        error.to_string().contains("bytes where the reference says"),
        "{error}"
    );
}
