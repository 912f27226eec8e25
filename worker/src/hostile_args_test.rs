//! Hostile arguments for every stock function (issue 15, item 5): a structure-aware fuzzer run as
//! a unit test. Whoever can publish a task chooses its arguments; no arguments may make a stock
//! function panic, abort its worker (a failed allocation or a stack overflow aborts the whole
//! process) or allocate more than a small multiple of the message.
//!
//! Every function of [`Registry::with_builtins`] and every element-wise operation gets valid
//! arguments from [`seeds`], mutated at random: values swapped for edge cases (zero, `u32::MAX`,
//! `u64::MAX`, huge declared sizes, NaN, deep nesting), then often the encoded bytes too
//! (truncated, overwritten, or with a container header claiming four billion items inserted).
//! Each case runs on this thread the way `execute.rs` and `bag.rs` run a task (decode, call,
//! encode the result), while `allocation_counter` (the counting global allocator of this test
//! binary) measures the peak bytes this thread holds. The property:
//!
//! - no panic (a stock function must fail with a typed error instead);
//! - peak allocation at most `FACTOR` times the arguments' length plus `SLACK`.
//!
//! Besides the mutations, every function gets fixed cases: lists nested past the decoders'
//! limit, a header claiming four billion items, and lists of 30,000 nils at several depths (the
//! most values per byte: these measure `FACTOR`, about 120 at worst, for `bag_distinct_merge`).
//!
//! `SLACK` is serde's cautious preallocation: a sequence that declares `n` items gets room for at
//! most `min(n, 1 MiB / item size)` before any item is read, per nesting level of the
//! arguments' *type* (at most two levels are live at once in the stock functions). `FACTOR`
//! covers decoding into `rmpv::Value`s (a one-byte nil becomes a 32-byte value, vectors double
//! as they grow) and the functions' own copies (a sort's buffer, `concat`, the encoded result).
//! The run is deterministic (a fixed seed); `RASK_FUZZ_CASES` and `RASK_FUZZ_SEED` run it longer
//! or elsewhere.
//!
//! Three bodies are stand-ins with the stock name and argument types, so that the decoding paths
//! are the real ones: `spin_hash` spins at most 1,000 rounds (its work is bounded by its `u32`
//! and by time limits, not by memory) and `sleep_ms` and `straggle` do not sleep (they allocate
//! nothing; `builtins` tests that the longest sleep does not panic).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use rask_common::builtins::spin;
use rask_common::context::{Secession, WorkerContext};
use rask_common::rmpv::{self, Value};
use rask_common::{bag_ops, FailureKind, Invocation, Settings, TaskContext, TaskKey};
use rask_demo::image::{analyze_batch, generate_batch, merge};

use crate::bag;
use crate::registry::Registry;

/// Cases per function (each a mutation of one of its seeds).
const CASES: usize = 1_000;

/// Peak bytes allowed per byte of arguments.
const FACTOR: u64 = 160;

/// Peak bytes allowed on top: serde's preallocation limit (1 MiB) for two nested levels.
const SLACK: u64 = 2 << 20;

/// Items of the long lists tried on every function.
const LONG: usize = 30_000;

/// Nesting beyond MessagePack decoders' limit (rmp-serde's is 1,024 levels).
const DEEP: usize = 5_000;

/// The stack of the threads tasks run on: tokio's default for workers and the blocking pool.
const TASK_STACK: usize = 2 << 20;

rask_common::task! {
    /// Stand-in for the stock `spin_hash` (same name and arguments) that spins at most 1,000
    /// rounds.
    fn spin_hash(seed: u64, rounds: u32) -> u64 { spin(seed, rounds.min(1_000)) }
}

rask_common::task! {
    /// Stand-in for the stock `sleep_ms` (same name and arguments) that does not sleep.
    async fn sleep_ms(ms: u64) -> u64 { ms }
}

rask_common::task! {
    /// Stand-in for the stock `straggle` (same name and arguments) that does not sleep.
    async fn straggle(i: u64, ms: u64, slow_ms: u64, per_mille: u32) -> u64 {
        let _ = (ms, slow_ms, per_mille);
        i
    }
}

/// The stock functions, with the three stand-ins.
fn registry() -> Registry {
    Registry::with_builtins()
        .with::<spin_hash>()
        .with::<sleep_ms>()
        .with::<straggle>()
}

/// splitmix64: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Valid arguments of each stock function, as values to mutate.
fn seeds(name: &str) -> Vec<Value> {
    let v = |value: serde_json::Value| -> Value {
        rmpv::ext::to_value(value).expect("JSON converts to MessagePack")
    };
    let batch = generate_batch(1, 2, 4, 3);
    let stats = analyze_batch(&batch).expect("a valid batch");
    let empty = generate_batch(2, 0, 16, 16);
    let summary = merge(std::slice::from_ref(&stats));
    let args = |items: Vec<Value>| Value::Array(items);
    match name {
        "inc" | "leaf" => vec![v(serde_json::json!([41]))],
        "add" => vec![v(serde_json::json!([2, 3]))],
        "sum" => vec![v(serde_json::json!([[1, 2, 3.5]]))],
        "sum_ints" => vec![v(serde_json::json!([[1, 2, 3]]))],
        "echo" => vec![v(serde_json::json!([{"a": [1, "b"]}]))],
        "sleep_ms" => vec![v(serde_json::json!([5]))],
        "straggle" => vec![v(serde_json::json!([1, 0, 0, 0]))],
        "spin_hash" => vec![v(serde_json::json!([7, 3]))],
        "fail" => vec![v(serde_json::json!(["no"]))],
        "image_stats" => vec![args(vec![to(&batch)]), args(vec![to(&empty)])],
        // A batch by URL that is not there: the task reads nothing (no network, no big file).
        "image_stats_from" => vec![v(serde_json::json!([
            "file:///nonexistent/rask-fuzz/batch"
        ]))],
        "image_summary" => vec![args(vec![Value::Array(vec![to(&stats)])])],
        "merge_image_summaries" => vec![args(vec![Value::Array(vec![to(&summary)])])],
        "bag_items" | "bag_count" | "bag_distinct" => vec![v(serde_json::json!([[1, 2, 1]]))],
        "bag_concat" | "bag_distinct_merge" => vec![v(serde_json::json!([[[1], [2, 3]]]))],
        "bag_split" => vec![v(serde_json::json!([[1, 2, 3], 2, 1]))],
        "bag_count_merge" => vec![v(serde_json::json!([[1, 2]]))],
        "bag_mean_part" => vec![v(serde_json::json!([[1, 2.5]]))],
        "bag_mean_merge" | "bag_mean" => vec![v(serde_json::json!([[[3.0, 2], [1.5, 1]]]))],
        "bag_top" => vec![v(serde_json::json!([2, true, [5, 1, 9]]))],
        "bag_top_merge" => vec![v(serde_json::json!([2, false, [[1, 5], [0, 7]]]))],
        "bag_top_one" => vec![v(serde_json::json!([true, [[1], [2]]]))],
        "bag_top_by_merge" => vec![v(serde_json::json!([1, [[[1, "x"], [2, "y"]]]]))],
        "bag_frequencies" => vec![v(serde_json::json!([["a", "b", "a"]]))],
        "bag_frequencies_merge" => vec![v(serde_json::json!([[[["a", 1]], [["a", 2]]]]))],
        bag_ops::MAP | bag_ops::FILTER | bag_ops::KEY_BY => {
            vec![v(serde_json::json!(["inc", [1, 2, 3]]))]
        }
        bag_ops::FLAT_MAP => vec![v(serde_json::json!(["bag_items", [[1, 2], [3]]]))],
        bag_ops::FOLD => vec![v(serde_json::json!(["add", 0, [1, 2, 3]]))],
        other => panic!("no seed for the stock function {other}: add one to `seeds`"),
    }
}

/// `value` as a producer encodes it (structs as arrays), read back as a [`Value`].
fn to<T: serde::Serialize>(value: &T) -> Value {
    let bytes = rask_common::message::encode_value(value).expect("encodes");
    rmpv::decode::read_value(&mut bytes.as_slice()).expect("decodes")
}

/// A value meant to break things: edge numbers, long or deeply nested values, bad floats.
fn edge(rng: &mut Rng, names: &[String]) -> Value {
    let ints: [i128; 14] = [
        0,
        1,
        -1,
        7,
        255,
        65_536,
        1_000_000,
        i32::MAX as i128,
        u32::MAX as i128,
        1 << 32,
        i64::MAX as i128,
        i64::MIN as i128,
        u64::MAX as i128,
        -(1 << 40),
    ];
    match rng.below(12) {
        0..=4 => {
            let i = ints[rng.below(ints.len())];
            u64::try_from(i).map_or_else(|_| Value::from(i as i64), Value::from)
        }
        5 => Value::F64([f64::NAN, f64::INFINITY, -0.0, 1e300][rng.below(4)]),
        6 => Value::from(names[rng.below(names.len())].as_str()),
        7 => Value::Array(Vec::new()),
        8 => Value::Binary(vec![0; rng.below(64)]),
        9 => Value::Array((0..rng.below(300)).map(|_| Value::Nil).collect()),
        10 => (0..rng.below(200)).fold(Value::Nil, |inner, _| Value::Array(vec![inner])),
        _ => random(rng, 3),
    }
}

/// Any value, up to `depth` levels deep.
fn random(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Nil,
        1 => Value::Boolean(rng.one_in(2)),
        2 => Value::from(rng.next() as i64 >> rng.below(64)),
        3 => Value::F64(f64::from_bits(rng.next())),
        4 => Value::from("x".repeat(rng.below(20))),
        5 => Value::Binary((0..rng.below(20)).map(|_| rng.next() as u8).collect()),
        6 => Value::Array((0..rng.below(5)).map(|_| random(rng, depth - 1)).collect()),
        _ => Value::Map(
            (0..rng.below(3))
                .map(|_| (random(rng, depth - 1), random(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// The number of values in `value`, itself included.
fn size(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| size(k) + size(v)).sum(),
        _ => 0,
    }
}

/// The `index`th value of `value` in pre-order (0 is `value` itself).
fn nth(value: &mut Value, mut index: usize) -> &mut Value {
    if index == 0 {
        return value;
    }
    index -= 1;
    let children: Vec<&mut Value> = match value {
        Value::Array(items) => items.iter_mut().collect(),
        Value::Map(pairs) => pairs.iter_mut().flat_map(|(k, v)| [k, v]).collect(),
        _ => unreachable!("index within size"),
    };
    for child in children {
        let n = size(child);
        if index < n {
            return nth(child, index);
        }
        index -= n;
    }
    unreachable!("index within size")
}

/// One hostile case made from `seed`: a few values replaced, then maybe the bytes broken.
fn mutate(rng: &mut Rng, seed: &Value, names: &[String]) -> Vec<u8> {
    let mut value = seed.clone();
    for _ in 0..1 + rng.below(6) {
        let index = rng.below(size(&value));
        let target = nth(&mut value, index);
        *target = match (rng.below(3), &*target) {
            // Keep a list but change its length.
            (0 | 1, Value::Array(items)) if !items.is_empty() => {
                let mut items = items.clone();
                match rng.below(3) {
                    0 => items.truncate(rng.below(items.len())),
                    1 => items.extend(items.clone()),
                    _ => items.push(edge(rng, names)),
                }
                Value::Array(items)
            }
            // Keep a number but scale it: sizes and counts that are plausible one by one.
            (0 | 1, Value::Integer(n)) if n.as_u64().is_some() => {
                let n = n.as_u64().unwrap_or(0).max(1);
                Value::from(n.saturating_mul(1 << (4 + rng.below(20))))
            }
            _ => edge(rng, names),
        };
    }
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &value).expect("encodes");
    if rng.one_in(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(4) {
            0 => bytes.truncate(at),
            1 => {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = rng.next() as u8;
                }
            }
            // A container or blob header that claims about four billion items or bytes.
            _ => {
                let marker = [0xdc, 0xdd, 0xde, 0xdf, 0xc6, 0xdb][rng.below(6)];
                let header = [marker, 0xff, 0xff, 0xff, 0xf0];
                bytes.splice(at..at, header);
            }
        }
    }
    bytes
}

/// Runs `function` on `args` on this thread as a worker would; `Err` if it panicked.
fn run(
    registry: &Registry,
    context: &(dyn Fn() -> TaskContext + Sync),
    function: &str,
    args: &[u8],
) -> Result<(), String> {
    if let Some(op) = bag::Op::from_name(function) {
        return match bag::apply(registry, op, args, context) {
            Err((FailureKind::Panicked, text)) => Err(text),
            _ => Ok(()),
        };
    }
    let Ok(invocation) = registry.prepare(function, args, context) else {
        return Ok(()); // refused as bad arguments: fine
    };
    let outcome = match invocation {
        Invocation::Blocking(f) => std::panic::catch_unwind(AssertUnwindSafe(f)),
        Invocation::Async(fut) => futures::executor::block_on(AssertUnwindSafe(fut).catch_unwind()),
    };
    outcome.map(drop).map_err(crate::execute::panic_text)
}

/// Runs every case of every stock function; returns the violations found.
fn fuzz(seed: u64, cases: usize) -> Vec<String> {
    let registry = registry();
    // The worker state the stock functions take (image_stats's luma table), built once as a
    // worker builds it, outside the measured runs.
    let states = futures::executor::block_on(registry.build_states(|_| ())).expect("states");
    let worker = Arc::new(WorkerContext::new("w", Settings::default(), states));
    let context = || {
        TaskContext::new(
            TaskKey::new("test-1").expect("a valid key"),
            0,
            worker.clone(),
            <dyn Secession>::none(),
        )
    };
    let mut names = registry.names();
    names.extend(bag_ops::ELEMENT_OPS.map(str::to_owned));
    // Element-wise operations call `block_on` on the runtime for async element functions.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let mut rng = Rng(seed);
    let mut violations = Vec::new();
    // Lists of nils, one byte each: the most values per byte of arguments.
    let nils = |lengths: &[usize]| {
        let mut value = Value::Nil;
        for &n in lengths.iter().rev() {
            value = Value::Array(vec![value; n]);
        }
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).expect("encodes");
        bytes
    };
    let deep = |depth: usize| {
        let mut bytes = vec![0x91; depth];
        bytes.push(0xc0);
        bytes
    };
    for name in &names {
        let seeds = seeds(name);
        let fixed = [
            deep(DEEP),
            deep(1_000),
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],
            nils(&[LONG]),
            nils(&[1, LONG]),
            nils(&[1, 1, LONG]),
            nils(&[1, LONG / 4, 2]),
        ];
        let generated = (0..cases).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], &names));
        for args in fixed.into_iter().chain(generated) {
            let mut result = Ok(());
            let info =
                allocation_counter::measure(|| result = run(&registry, &context, name, &args));
            let allowed = FACTOR * args.len() as u64 + SLACK;
            let case = || format!("{name} with {:02x?}", &args[..args.len().min(64)]);
            if let Err(panic) = result {
                violations.push(format!("{} panicked: {panic}", case()));
            }
            if info.bytes_max > allowed {
                violations.push(format!(
                    "{} ({} bytes) held {} bytes at its peak, over {allowed}",
                    case(),
                    args.len(),
                    info.bytes_max
                ));
            }
        }
    }
    violations
}

#[test]
fn no_arguments_make_a_stock_function_panic_or_allocate_beyond_the_message() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let seed = env("RASK_FUZZ_SEED").unwrap_or(15);
    let cases = env("RASK_FUZZ_CASES").map_or(CASES, |n: u64| n as usize);
    // Quiet: the panics this may provoke are reported below, with their arguments.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let violations = std::thread::Builder::new()
        .stack_size(TASK_STACK)
        .spawn(move || fuzz(seed, cases))
        .expect("a thread")
        .join();
    std::panic::set_hook(hook);
    let violations = violations.expect("the fuzzer itself does not panic");
    assert!(
        violations.is_empty(),
        "{} violations (seed {seed}), the first ones:\n{}",
        violations.len(),
        violations[..violations.len().min(10)].join("\n")
    );
}

#[test]
fn the_generator_reaches_the_poison_batch() {
    // The case that aborted workers must be among what the fuzzer tries, or it proves little:
    // an `image_stats` batch with no images but a huge declared size.
    let registry = registry();
    let names = registry.names();
    let mut rng = Rng(15);
    let seeds = seeds("image_stats");
    let reached = (0..CASES).filter(|i| {
        let bytes = mutate(&mut rng, &seeds[i % seeds.len()], &names);
        let Ok(Value::Array(args)) = rmpv::decode::read_value(&mut bytes.as_slice()) else {
            return false;
        };
        let field = |batch: &Value, at: usize| match batch {
            Value::Array(fields) => fields.get(at).and_then(Value::as_u64),
            _ => None,
        };
        args.first().is_some_and(|batch| {
            let (w, h) = (field(batch, 1), field(batch, 2));
            let pixels = w.zip(h).map_or(0, |(w, h)| u128::from(w) * u128::from(h));
            field(batch, 3) == Some(0) && pixels > 1 << 20
        })
    });
    assert!(
        reached.count() >= 3,
        "few empty batches of huge images among {CASES} cases"
    );
}
