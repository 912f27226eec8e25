//! The blob store (`blob_url`, issue 21), each test run twice: on a directory (`file://`) and on
//! a real S3-compatible server (`s3://`, moto started by the harness: [`rask_tests::s3`]).
//!
//! A 200 MiB argument and a 200 MiB result round trip through it (neither could travel through
//! RabbitMQ or Redis: over `max_message_bytes` and `max_result_bytes`); `release` deletes the
//! blobs of the results it releases and `purge` the rest; a worker killed at a known point of an
//! upload (half written, [`stream_blob`]) leaves no object and no outcome naming one, and the
//! redelivered task completes it; task code reads an input by URL ([`digest_blob`]); a graph
//! task's input kept in the blob store (its producer's result was over `blob_threshold`)
//! reaches it as the value ([`digest_value`]). And `rask local up` with a `file://` blob
//! store passes a large argument through it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rask::builtins::echo;
use rask::{Blob, Future};
use rask_common::blobs::Blobs;
use rask_common::message::encode_value;
use rask_common::reference::{Digest, Location, Reference};
use rask_tests::blob_tasks::{digest_blob, digest_value, pattern, stream_blob};
use rask_tests::s3::MotoServer;
use rask_tests::{Counter, TestEnv, PATIENCE};
use rmpv::Value;

/// Where a test keeps its blobs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    File,
    S3,
}

/// A test environment whose client and workers keep values over 1 MiB in a blob store of
/// `kind` of their own.
struct Place {
    env: TestEnv,
    /// What workers need besides the environment's variables.
    vars: Vec<(String, String)>,
    /// The deployment's blob store, to look at.
    blobs: Blobs,
    /// Where this test's own objects go (`file:///dir` or `s3://bucket`), for blobs by URL.
    root: String,
    _moto: Option<MotoServer>,
}

impl Place {
    async fn new(name: &str, kind: Kind) -> Self {
        let mut env = TestEnv::new(name).await;
        let mut vars = Vec::new();
        let (root, moto) = match kind {
            Kind::File => (format!("file://{}", env.path("objects").display()), None),
            Kind::S3 => {
                let moto = MotoServer::start().await;
                let bucket = format!("rask-{}", uuid::Uuid::new_v4().simple());
                moto.create_bucket(&bucket).await;
                env.settings.s3_endpoint = moto.endpoint();
                vars.push(("RASK_S3_ENDPOINT".to_owned(), moto.endpoint()));
                for (k, v) in MotoServer::env_vars() {
                    vars.push((k.to_owned(), v.to_owned()));
                }
                (format!("s3://{bucket}"), Some(moto))
            }
        };
        env.settings.blob_url = format!("{root}/blobs");
        vars.push(("RASK_BLOB_URL".to_owned(), env.settings.blob_url.clone()));
        let blobs = Blobs::from_settings(&env.settings)
            .expect("the blob store opens")
            .expect("blob_url is set");
        Place {
            env,
            vars,
            blobs,
            root,
            _moto: moto,
        }
    }

    fn vars(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Stock workers with the blob store.
    fn workers(&self, n: usize) -> Vec<rask::local::Worker> {
        self.env.spawn_workers_with(n, &self.vars())
    }

    /// Test workers ([`rask_tests::tasks`]) with the blob store.
    fn test_workers(&self, n: usize) -> Vec<rask::local::Worker> {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_rask-test-worker"));
        self.env.spawn_program_with(program, n, &self.vars())
    }

    async fn holds(&self, digest: &Digest) -> bool {
        self.blobs
            .contains(digest)
            .await
            .expect("the store answers")
    }
}

/// The digest under which `echo(bytes)`'s result is kept.
fn digest_of_echo(bytes: &[u8]) -> Digest {
    let value = encode_value(&Value::Binary(bytes.to_vec())).unwrap();
    Reference::to(&value, Location::Blob).digest
}

async fn a_200_mib_argument_and_result_round_trip(kind: Kind) {
    let place = Place::new("blob-200", kind).await;
    let _workers = place.workers(1);
    let client = place.env.client().await;
    let sent = pattern(1, 200 << 20);
    let echoed: Value = client
        .call(echo, (Value::Binary(sent.clone()),))
        .await
        .unwrap();
    let Value::Binary(back) = echoed else {
        panic!("echo returned another kind of value")
    };
    assert!(back == sent, "the 200 MiB result differs from the argument");
    // Both are in the store: the arguments (a tuple) and the result (the value).
    let args = encode_value(&(Value::Binary(sent.clone()),)).unwrap();
    assert!(place.holds(&Digest::of(&args)).await, "the arguments");
    assert!(place.holds(&digest_of_echo(&sent)).await, "the result");
}

#[tokio::test]
async fn a_200_mib_argument_and_result_round_trip_through_a_directory() {
    a_200_mib_argument_and_result_round_trip(Kind::File).await;
}

#[tokio::test]
async fn a_200_mib_argument_and_result_round_trip_through_s3() {
    a_200_mib_argument_and_result_round_trip(Kind::S3).await;
}

async fn a_worker_killed_mid_upload_leaves_no_dangling_reference(kind: Kind) {
    let place = Place::new("blob-kill", kind).await;
    let client = place.env.client().await;
    let counter = Counter::new(&place.env, "uploads");
    let url = format!("{}/streamed/value.bin", place.root);
    // 24 MiB: the writer has sent a part of its upload (8 MiB each) when it is half done.
    let len: usize = 24 << 20;
    let future: Future<String> = client
        .submit(
            stream_blob,
            (
                url.clone(),
                7,
                len as u64,
                counter.url.clone(),
                counter.key.clone(),
            ),
        )
        .await
        .unwrap();
    let mut workers = place.test_workers(1);
    place
        .env
        .eventually("the upload is half written", || {
            let counter = &counter;
            async move { counter.runs().await == 1 }
        })
        .await;
    kill(Pid::from_raw(workers[0].pid() as i32), Signal::SIGKILL).unwrap();
    place
        .env
        .eventually("the worker is gone", || {
            let gone = !workers[0].is_running().unwrap();
            async move { gone }
        })
        .await;
    // Nothing names a partial object: no outcome, and no object at the URL.
    assert!(!future.done().await.unwrap(), "no outcome was stored");
    let blob = Blob::at(&url, &place.env.settings).unwrap();
    assert_eq!(blob.size().await.unwrap(), None, "no object, not even part");
    // Redelivered to another worker, the task completes the whole object.
    let _others = place.test_workers(1);
    assert_eq!(future.result_within(PATIENCE).await.unwrap(), url);
    assert_eq!(counter.runs().await, 2);
    assert!(
        blob.get().await.unwrap() == pattern(7, len),
        "the whole object"
    );
}

#[tokio::test]
async fn a_worker_killed_mid_upload_leaves_no_dangling_reference_in_a_directory() {
    a_worker_killed_mid_upload_leaves_no_dangling_reference(Kind::File).await;
}

#[tokio::test]
async fn a_worker_killed_mid_upload_leaves_no_dangling_reference_in_s3() {
    a_worker_killed_mid_upload_leaves_no_dangling_reference(Kind::S3).await;
}

async fn release_removes_the_blobs_of_released_results(kind: Kind) {
    let place = Place::new("blob-release", kind).await;
    let _workers = place.workers(1);
    let client = place.env.client().await;
    let sent: Vec<Vec<u8>> = (0..2).map(|i| pattern(10 + i, 3 << 20)).collect();
    let futures = client
        .map(echo, sent.iter().map(|p| (Value::Binary(p.clone()),)))
        .await
        .unwrap();
    let values = client.gather(&futures).timeout(PATIENCE).await.unwrap();
    for (value, p) in values.iter().zip(&sent) {
        assert!(*value == Value::Binary(p.clone()));
        assert!(place.holds(&digest_of_echo(p)).await);
    }
    assert_eq!(
        client.release(&[futures[0].key().clone()]).await.unwrap(),
        1
    );
    assert!(!place.holds(&digest_of_echo(&sent[0])).await, "released");
    assert!(place.holds(&digest_of_echo(&sent[1])).await, "kept");
    // What is left still reads back; purge takes the rest (arguments included).
    let value = futures[1].result().await.unwrap();
    assert!(value == Value::Binary(sent[1].clone()));
    client.purge().await.unwrap();
    assert!(!place.holds(&digest_of_echo(&sent[1])).await, "purged");
    assert_eq!(place.blobs.purge().await.unwrap(), 0, "nothing was left");
}

#[tokio::test]
async fn release_removes_the_blobs_of_released_results_in_a_directory() {
    release_removes_the_blobs_of_released_results(Kind::File).await;
}

#[tokio::test]
async fn release_removes_the_blobs_of_released_results_in_s3() {
    release_removes_the_blobs_of_released_results(Kind::S3).await;
}

async fn a_task_reads_its_input_by_url(kind: Kind) {
    let place = Place::new("blob-url", kind).await;
    let _workers = place.test_workers(1);
    let client = place.env.client().await;
    let input = pattern(21, (5 << 20) + 3);
    let url = format!("{}/inputs/batch-21.raw", place.root);
    Blob::at(&url, &place.env.settings)
        .unwrap()
        .put(input.clone())
        .await
        .unwrap();
    let (len, digest) = client.call(digest_blob, (url.clone(),)).await.unwrap();
    assert_eq!(
        (len, digest),
        (input.len() as u64, Digest::of(&input).hex())
    );
    // A URL naming nothing fails the task, naming the URL.
    let missing = format!("{}/inputs/none.raw", place.root);
    let error = client
        .call(digest_blob, (missing.clone(),))
        .await
        .unwrap_err();
    let failure = rask_tests::failure(error);
    assert!(failure.message.contains(&missing), "{failure:?}");
}

#[tokio::test]
async fn a_task_reads_its_input_by_url_from_a_directory() {
    a_task_reads_its_input_by_url(Kind::File).await;
}

#[tokio::test]
async fn a_task_reads_its_input_by_url_from_s3() {
    a_task_reads_its_input_by_url(Kind::S3).await;
}

async fn a_graph_input_kept_in_the_blob_store_reaches_its_dependent(kind: Kind) {
    let place = Place::new("blob-graph", kind).await;
    let _workers = place.test_workers(1);
    let client = place.env.client().await;
    let big = pattern(31, 3 << 20);
    let leaf = echo.delayed(Value::Binary(big.clone()));
    let root = digest_value.delayed(&leaf);
    let (len, digest) = client.compute(&root).await.unwrap();
    assert_eq!((len, digest), (big.len() as u64, Digest::of(&big).hex()));
    // The leaf's result was kept in the blob store (the dependent read it from there).
    assert!(place.holds(&digest_of_echo(&big)).await);
}

#[tokio::test]
async fn a_graph_input_kept_in_a_directory_reaches_its_dependent() {
    a_graph_input_kept_in_the_blob_store_reaches_its_dependent(Kind::File).await;
}

#[tokio::test]
async fn a_graph_input_kept_in_s3_reaches_its_dependent() {
    a_graph_input_kept_in_the_blob_store_reaches_its_dependent(Kind::S3).await;
}

#[tokio::test]
async fn a_large_argument_round_trips_through_rask_local_with_a_blob_directory() {
    let port = || rask::local::free_port().unwrap();
    let (amqp, dist, redis) = (port(), port(), port());
    let mut env = TestEnv::new("blob-local").await;
    let objects = env.path("objects");
    env.settings = rask::Settings {
        amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"),
        redis_url: format!("redis://127.0.0.1:{redis}/"),
        blob_url: format!("file://{}", objects.display()),
        ..rask::Settings::default()
    };
    let dir = env.path("cluster");
    let dir = dir.to_str().unwrap();
    let (amqp, dist, redis) = (amqp.to_string(), dist.to_string(), redis.to_string());
    let up = env
        .rask(
            &[
                "local",
                "up",
                "--workers",
                "1",
                "--dir",
                dir,
                "--amqp-port",
                &amqp,
                "--dist-port",
                &dist,
                "--redis-port",
                &redis,
            ],
            "",
        )
        .await;
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    // Its workers inherit the store; it says so for the clients.
    let printed = String::from_utf8_lossy(&up.stdout);
    let line = format!("export RASK_BLOB_URL=file://{}\n", objects.display());
    assert!(printed.contains(&line), "no `{line}` in:\n{printed}");
    let client = env.client().await;
    // Over max_message_bytes (64 MiB): it can only travel through the blob store.
    let sent = pattern(41, 80 << 20);
    // Stopped before anything is asserted, so that a failure leaves no cluster behind.
    let echoed =
        tokio::time::timeout(PATIENCE, client.call(echo, (Value::Binary(sent.clone()),))).await;
    client.close().await.unwrap();
    let down = env.rask(&["local", "down", "--dir", dir], "").await;
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let echoed = echoed
        .expect("the result arrives in time")
        .expect("the task succeeds");
    assert!(echoed == Value::Binary(sent.clone()), "the result differs");
    let args = encode_value(&(Value::Binary(sent.clone()),)).unwrap();
    for digest in [Digest::of(&args), digest_of_echo(&sent)] {
        assert!(
            objects.join(digest.hex()).exists(),
            "{digest} in the directory"
        );
    }
}

#[tokio::test]
async fn the_demo_reads_its_batches_from_the_blob_store() {
    let place = Place::new("blob-demo", Kind::File).await;
    let _workers = place.workers(1);
    let from = format!("{}/images", place.root);
    let demo = |from: String| {
        let env = &place.env;
        async move {
            let args = [
                "demo",
                "--pool",
                "default",
                "--batches",
                "4",
                "--images",
                "2",
                "--size",
                "16",
                "--timeout",
                "60s",
                "--from",
                &from,
            ];
            let out = env.rask(&args, "").await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stdout}\n{stderr}");
            stdout
        }
    };
    let first = demo(from.clone()).await;
    assert!(
        first.contains("batches kept under") && first.contains(": 4 written, 0 already there"),
        "{first}"
    );
    assert!(first.contains("analysed 8 images"), "{first}");
    // Written once: a second demo finds them and analyses the same images.
    let second = demo(from.clone()).await;
    assert!(second.contains(": 0 written, 4 already there"), "{second}");
    assert!(second.contains("analysed 8 images"), "{second}");
    let dir = from.strip_prefix("file://").unwrap();
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 4);
}

/// A result read back from the blob store is checked as arguments are: an object of another
/// length always, one of the same length with other bytes by its digest when messages are
/// signed (without signing the client hashes each value once, to name its arguments).
#[tokio::test]
async fn a_changed_result_blob_is_refused_by_its_length_and_when_signed_by_its_digest() {
    const KEY: &str = "blob-signing-key-0123456789abcdef";
    let mut place = Place::new("blob-check", Kind::File).await;
    place.env.settings.signing_keys = vec![KEY.to_owned()];
    let mut vars = place.vars();
    vars.push(("RASK_SIGNING_KEYS", KEY));
    let _workers = place.env.spawn_workers_with(1, &vars);
    let env = &place.env;
    let dir = env.path("objects").join("blobs");
    let signed = env.client().await;
    let sent = pattern(41, 2 << 20);
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
