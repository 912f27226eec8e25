//! Micro-benchmarks of the per-task work that is pure computation: encoding and decoding task
//! messages and outcomes (MessagePack), making task keys (unique and content-addressed), naming
//! Redis keys, and signing a message body. `cargo bench -p rask-common`; figures and what they
//! mean against a task's end-to-end cost are in docs/benchmarks.md.

// `criterion_group!` defines a public function without documentation.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rask_common::graph::content_key;
use rask_common::message::{decode_value, encode_value};
use rask_common::signing::{MessageKind, Signer};
use rask_common::{FailureKind, Keys, Outcome, TaskFailure, TaskKey, TaskMessage};

/// The size of the payload workload's messages.
const MIB: usize = 1 << 20;

/// An `inc` call as `map` publishes it.
fn inc_message() -> TaskMessage {
    let args = encode_value(&(41i64,)).expect("encodes");
    TaskMessage::new(TaskKey::unique("inc"), "inc", args)
}

/// An `echo` call carrying 1 MiB of bytes, as in the payload workload.
fn payload_message() -> TaskMessage {
    let bytes = serde_bytes::ByteBuf::from(vec![7u8; MIB]);
    let args = encode_value(&(bytes,)).expect("encodes");
    TaskMessage::new(TaskKey::unique("echo"), "echo", args)
}

fn messages(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    let inc = inc_message();
    let inc_body = inc.encode().expect("encodes");
    group.bench_function("encode inc", |b| b.iter(|| inc.encode().unwrap()));
    group.bench_function("decode inc", |b| {
        b.iter(|| TaskMessage::decode(&inc_body).unwrap())
    });
    group.bench_function("decode inc args", |b| {
        b.iter(|| decode_value::<(i64,)>(&inc.args).unwrap())
    });

    let payload = payload_message();
    let payload_body = payload.encode().expect("encodes");
    group.throughput(Throughput::Bytes(payload_body.len() as u64));
    group.bench_function("encode 1 MiB", |b| b.iter(|| payload.encode().unwrap()));
    group.bench_function("decode 1 MiB", |b| {
        b.iter(|| TaskMessage::decode(&payload_body).unwrap())
    });
    group.finish();
}

fn outcomes(c: &mut Criterion) {
    let mut group = c.benchmark_group("outcome");
    let value = Outcome::Value(encode_value(&42i64).expect("encodes"));
    let stored = value.encode().expect("encodes");
    group.bench_function("encode value", |b| b.iter(|| value.encode().unwrap()));
    group.bench_function("decode value", |b| {
        b.iter(|| Outcome::decode(&stored).unwrap())
    });

    let failure = Outcome::Failure(TaskFailure::new(
        FailureKind::Panicked,
        "index out of bounds: the len is 3 but the index is 7",
        "lookup",
        TaskKey::unique("lookup"),
        "worker-3f2a",
    ));
    let stored = failure.encode().expect("encodes");
    group.bench_function("encode failure", |b| b.iter(|| failure.encode().unwrap()));
    group.bench_function("decode failure", |b| {
        b.iter(|| Outcome::decode(&stored).unwrap())
    });
    group.finish();
}

fn keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    group.bench_function("unique", |b| b.iter(|| TaskKey::unique("inc")));
    let add_args = encode_value(&(40i64, 2i64)).expect("encodes");
    group.bench_function("content, small args", |b| {
        b.iter(|| content_key("add", &add_args))
    });
    let key = TaskKey::unique("inc");
    let single = Keys::new("rask");
    let clustered = Keys::clustered("rask");
    group.bench_function("result name", |b| b.iter(|| single.result(&key)));
    group.bench_function("result name, cluster", |b| {
        b.iter(|| clustered.result(&key))
    });
    let large = payload_message().args;
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("content, 1 MiB args", |b| {
        b.iter(|| content_key("echo", &large))
    });
    group.finish();
}

/// The properties of a task message with key `id`, as they are signed.
fn properties(id: &str) -> lapin::BasicProperties {
    lapin::BasicProperties::default()
        .with_message_id(id.into())
        .with_type("task".into())
}

fn signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("signing");
    let signer = Signer::new(&["a signing key of thirty-two bytes!"]).expect("one key");
    let body = inc_message().encode().expect("encodes");
    group.bench_function("sign inc", |b| {
        b.iter(|| signer.signature(MessageKind::Task, &properties("inc-3f2a"), &body))
    });
    let large = payload_message().encode().expect("encodes");
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("sign 1 MiB", |b| {
        b.iter(|| signer.signature(MessageKind::Task, &properties("echo-3f2a"), &large))
    });
    group.finish();
}

criterion_group!(benches, messages, outcomes, keys, signing);
criterion_main!(benches);
