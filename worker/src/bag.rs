//! The element-wise operations of lazy collections ([`bag_ops::ELEMENT_OPS`]): one task applies
//! a registered function to every element of a partition, here, so that a map over a million
//! records is a few hundred tasks, not a million messages.
//!
//! Each element is one call through the [`Registry`], as if it were a task of its own (its
//! arguments decoded by the function's types, a panic caught), but without a message, a store or
//! an acknowledgement. The first element that fails fails the whole task with that element's
//! [`FailureKind`] and a message naming its index in the partition; downstream tasks then fail
//! with `DependencyFailed` as for any failed input.

use std::panic::AssertUnwindSafe;

use rask_common::bag_ops;
use rask_common::message::MAX_ARGS_DEPTH;
use rask_common::{FailureKind, Invocation, Outcome, TaskContext, TaskFailure, TaskMessage};
use rmpv::Value;

use crate::execute::panic_text;
use crate::registry::{PrepareError, Registry};

/// One of the element-wise operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Map,
    Filter,
    FlatMap,
    KeyBy,
    Fold,
}

impl Op {
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            bag_ops::MAP => Op::Map,
            bag_ops::FILTER => Op::Filter,
            bag_ops::FLAT_MAP => Op::FlatMap,
            bag_ops::KEY_BY => Op::KeyBy,
            bag_ops::FOLD => Op::Fold,
            _ => return None,
        })
    }
}

/// A failure to report: its kind and message.
pub(crate) type Failure = (FailureKind, String);

/// Runs `message` if it calls an element-wise operation, and returns its outcome; `None` for
/// every other function (the caller runs those). A function that takes a [`TaskContext`] gets
/// the partition task's (built by `context`), the same for each element.
pub(crate) async fn execute(
    registry: &Registry,
    worker: &str,
    message: &TaskMessage,
    context: &(dyn Fn() -> TaskContext + Sync),
) -> Option<Outcome> {
    let op = Op::from_name(&message.function)?;
    let registry = registry.clone();
    let args = message.args.clone();
    let context = context();
    let run = move || {
        let context = || context.clone();
        std::panic::catch_unwind(AssertUnwindSafe(|| apply(&registry, op, &args, &context)))
            .unwrap_or_else(|payload| Err((FailureKind::Panicked, panic_text(payload))))
    };
    // As `execute` runs plain functions: in place off the runtime's other work where the runtime
    // allows it, else on the blocking pool.
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let result = if multi_thread {
        tokio::task::block_in_place(run)
    } else {
        tokio::task::spawn_blocking(run)
            .await
            .unwrap_or_else(|join| {
                Err((FailureKind::Panicked, format!("task was aborted: {join}")))
            })
    };
    Some(match result {
        Ok(bytes) => Outcome::Value(bytes),
        Err((kind, text)) => Outcome::Failure(TaskFailure::of(message, kind, text, worker)),
    })
}

/// A decoded call of an operation: the element function, the fold's initial value and the
/// elements, each as its encoded bytes (elements are never decoded: they are copied into the
/// calls' argument arrays, and results into the output).
struct Call<'a> {
    function: String,
    initial: Option<&'a [u8]>,
    items: Vec<&'a [u8]>,
}

/// The arguments of `op`: `[function, partition]`, or `[function, initial, partition]` to fold.
fn decode(op: Op, args: &[u8]) -> Result<Call<'_>, Failure> {
    let expected = match op {
        Op::Fold => "[function, initial, partition]",
        _ => "[function, partition]",
    };
    let bad = |error: &str| {
        (
            FailureKind::BadArguments,
            format!("arguments do not decode as {expected}: {error}"),
        )
    };
    let mut rest = args;
    let fields = array_len(&mut rest).ok_or_else(|| bad("not an array"))?;
    if fields != 2 + usize::from(op == Op::Fold) {
        return Err(bad(&format!("{fields} items")));
    }
    let function = match rmpv::decode::read_value_with_max_depth(&mut rest, MAX_ARGS_DEPTH) {
        Ok(Value::String(name)) => name.into_str(),
        _ => None,
    }
    .ok_or_else(|| bad("the function name is not text"))?;
    let initial = match op {
        Op::Fold => Some(next_value(&mut rest).ok_or_else(|| bad("no initial value"))?),
        _ => None,
    };
    let len = array_len(&mut rest).ok_or_else(|| bad("the partition is not a list"))?;
    let items = (0..len)
        .map(|_| next_value(&mut rest))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("the partition is cut short"))?;
    Ok(Call {
        function,
        initial,
        items,
    })
}

/// Applies the call's function to each element in order; the encoded result.
pub(crate) fn apply(
    registry: &Registry,
    op: Op,
    args: &[u8],
    context: &(dyn Fn() -> TaskContext + Sync),
) -> Result<Vec<u8>, Failure> {
    let Call {
        function,
        initial,
        items,
    } = decode(op, args)?;
    let len = items.len();
    let mut count = 0usize;
    let mut out = Vec::with_capacity(args.len());
    let mut acc = initial.map(<[u8]>::to_vec);
    let mut call_args = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let named = |(kind, text): Failure| {
            (
                kind,
                format!("element {index} (of {len}): {function} {kind}: {text}"),
            )
        };
        call_args.clear();
        match &acc {
            Some(acc) => {
                call_args.push(0x92); // [accumulator, element]
                call_args.extend_from_slice(acc);
            }
            None => call_args.push(0x91), // [element]
        }
        call_args.extend_from_slice(item);
        let result = call_one(registry, &function, &call_args, context).map_err(named)?;
        match op {
            Op::Map => {
                out.extend_from_slice(&result);
                count += 1;
            }
            Op::Filter => match result.as_slice() {
                [TRUE] => {
                    out.extend_from_slice(item);
                    count += 1;
                }
                [FALSE] => {}
                other => return Err(named((FailureKind::Failed, not_a("bool", other)))),
            },
            Op::FlatMap => {
                let mut rest = result.as_slice();
                let n = array_len(&mut rest)
                    .ok_or_else(|| named((FailureKind::Failed, not_a("list", &result))))?;
                out.extend_from_slice(rest);
                count += n;
            }
            Op::KeyBy => {
                out.push(0x92); // [key, element]
                out.extend_from_slice(&result);
                out.extend_from_slice(item);
                count += 1;
            }
            Op::Fold => acc = Some(result),
        }
    }
    if let Some(acc) = acc {
        return Ok(acc);
    }
    let mut bytes = Vec::with_capacity(out.len() + 5);
    write_array_len(&mut bytes, count)
        .map_err(|e| (FailureKind::Failed, format!("result does not encode: {e}")))?;
    bytes.extend_from_slice(&out);
    Ok(bytes)
}

/// MessagePack's `true` and `false`.
const TRUE: u8 = 0xc3;
const FALSE: u8 = 0xc2;

/// "returned {value}, not a {what}".
fn not_a(what: &str, bytes: &[u8]) -> String {
    match rmpv::decode::read_value(&mut &bytes[..]) {
        Ok(value) => format!("returned {value}, not a {what}"),
        Err(e) => format!("returned something else than a {what}: {e}"),
    }
}

/// Reads an array header from the front of `rest`: the number of items.
fn array_len(rest: &mut &[u8]) -> Option<usize> {
    let (len, header) = match **rest {
        [b, ..] if b & 0xf0 == 0x90 => (usize::from(b & 0x0f), 1),
        [0xdc, a, b, ..] => (usize::from(u16::from_be_bytes([a, b])), 3),
        [0xdd, a, b, c, d, ..] => (usize::try_from(u32::from_be_bytes([a, b, c, d])).ok()?, 5),
        _ => return None,
    };
    *rest = &rest[header..];
    Some(len)
}

/// Writes an array header for `len` items.
fn write_array_len(bytes: &mut Vec<u8>, len: usize) -> Result<(), String> {
    match len {
        0..=15 => bytes.push(0x90 | len as u8),
        16..=0xffff => {
            bytes.push(0xdc);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            let len = u32::try_from(len).map_err(|_| format!("{len} items are too many"))?;
            bytes.push(0xdd);
            bytes.extend_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

/// The bytes of the one value at the front of `rest`, which moves past it.
fn next_value<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start: &'a [u8] = rest;
    rmpv::decode::read_value_ref_with_max_depth(rest, MAX_ARGS_DEPTH).ok()?;
    Some(&start[..start.len() - rest.len()])
}

/// One call of `function` with encoded `args`, run to its encoded value on this (blocking)
/// thread.
fn call_one(
    registry: &Registry,
    function: &str,
    args: &[u8],
    context: &(dyn Fn() -> TaskContext + Sync),
) -> Result<Vec<u8>, Failure> {
    let invocation = registry
        .prepare(function, args, context)
        .map_err(|e| match e {
            PrepareError::Unknown(known) => (
                FailureKind::UnknownTask,
                format!(
                    "no function named {function:?} on this worker; it knows: {}",
                    known.join(", ")
                ),
            ),
            PrepareError::BadArguments { expected, error } => (
                FailureKind::BadArguments,
                format!("arguments do not decode as {expected}: {error}"),
            ),
        })?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match invocation {
        Invocation::Blocking(f) => f(),
        // This thread is outside the runtime's async work (`block_in_place` or the blocking
        // pool), where blocking on a future of the runtime is allowed.
        Invocation::Async(fut) => tokio::runtime::Handle::current().block_on(fut),
    }));
    match result {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err((FailureKind::Failed, error.message().to_owned())),
        Err(payload) => Err((FailureKind::Panicked, panic_text(payload))),
    }
}

#[cfg(test)]
mod tests {
    use rask_common::builtins::{add, inc};
    use rask_common::message::encode_value;
    use rask_common::TaskKey;

    use super::*;

    rask_common::task! {
        /// Test: refuses 3.
        fn not_three(x: i64) -> Result<i64, String> {
            if x == 3 { Err("three".into()) } else { Ok(x) }
        }
    }
    rask_common::task! {
        /// Test: whether `x` is even.
        fn even(x: i64) -> bool { x % 2 == 0 }
    }
    rask_common::task! {
        /// Test: `[x, x]`.
        async fn twice(x: i64) -> Vec<i64> { vec![x, x] }
    }
    rask_common::task! {
        /// Test: panics on 2.
        fn explode(x: i64) -> i64 { if x == 2 { panic!("boom") } x }
    }

    fn registry() -> Registry {
        Registry::new()
            .with::<inc>()
            .with::<add>()
            .with::<not_three>()
            .with::<even>()
            .with::<twice>()
            .with::<explode>()
    }

    async fn run(op: &str, args: Vec<u8>) -> Outcome {
        let message = TaskMessage::new(TaskKey::unique(op), op, args);
        execute(&registry(), "w", &message, &crate::secede::test_context)
            .await
            .expect("an element-wise operation")
    }

    fn value(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Value(bytes) => rmpv::decode::read_value(&mut bytes.as_slice()).unwrap(),
            Outcome::Failure(f) => panic!("failed: {f}"),
        }
    }

    fn failure(outcome: Outcome) -> TaskFailure {
        match outcome {
            Outcome::Failure(f) => f,
            Outcome::Value(_) => panic!("expected a failure"),
        }
    }

    fn ints(xs: &[i64]) -> Value {
        Value::Array(xs.iter().map(|x| Value::from(*x)).collect())
    }

    #[tokio::test]
    async fn operations_apply_the_function_to_each_element() {
        let args = |f: &str| encode_value(&(f, vec![1, 2, 3, 4])).unwrap();
        assert_eq!(
            value(run(bag_ops::MAP, args("inc")).await),
            ints(&[2, 3, 4, 5])
        );
        assert_eq!(
            value(run(bag_ops::FILTER, args("even")).await),
            ints(&[2, 4])
        );
        assert_eq!(
            value(run(bag_ops::FLAT_MAP, args("twice")).await),
            ints(&[1, 1, 2, 2, 3, 3, 4, 4])
        );
        let keyed = value(run(bag_ops::KEY_BY, args("inc")).await);
        assert_eq!(keyed.as_array().unwrap()[0], ints(&[2, 1]));
        let folded = encode_value(&("add", 10, vec![1, 2, 3])).unwrap();
        assert_eq!(value(run(bag_ops::FOLD, folded).await), Value::from(16));
    }

    /// Test: a worker state.
    struct Factor(i64);

    rask_common::task! {
        /// Test: `x` times the worker's factor, on the partition task's key.
        fn scaled(ctx: &TaskContext, factor: &rask_common::State<Factor>, x: i64) -> (String, i64) {
            (ctx.key().to_string(), x * factor.0)
        }
    }

    #[tokio::test]
    async fn elements_get_the_partition_task_s_context_and_the_worker_state() {
        use rask_common::context::{Secession, States, WorkerContext};
        let mut states = States::new();
        states.insert(Factor(3));
        let worker = std::sync::Arc::new(WorkerContext::new("w", Default::default(), states));
        let message = TaskMessage::new(
            TaskKey::unique(bag_ops::MAP),
            bag_ops::MAP,
            encode_value(&("scaled", vec![1, 2])).unwrap(),
        );
        let key = message.key.clone();
        let context = || TaskContext::new(key.clone(), 0, worker.clone(), <dyn Secession>::none());
        let registry = Registry::new().with::<scaled>();
        let outcome = execute(&registry, "w", &message, &context).await.unwrap();
        let pair = |x: i64| Value::Array(vec![Value::from(key.as_str()), Value::from(x)]);
        assert_eq!(value(outcome), Value::Array(vec![pair(3), pair(6)]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_element_fails_the_task_naming_its_index_and_kind() {
        let f = failure(
            run(
                bag_ops::MAP,
                encode_value(&("not_three", vec![1, 2, 3])).unwrap(),
            )
            .await,
        );
        assert_eq!(
            (f.kind, f.task.as_str()),
            (FailureKind::Failed, bag_ops::MAP)
        );
        assert!(
            f.message.starts_with("element 2 (of 3): not_three"),
            "{}",
            f.message
        );
        assert!(f.message.ends_with("three"), "{}", f.message);
        let f = failure(
            run(
                bag_ops::MAP,
                encode_value(&("explode", vec![1, 2])).unwrap(),
            )
            .await,
        );
        assert_eq!(f.kind, FailureKind::Panicked);
        assert!(
            f.message.contains("element 1") && f.message.contains("boom"),
            "{}",
            f.message
        );
        let f = failure(run(bag_ops::MAP, encode_value(&("inc", vec!["x"])).unwrap()).await);
        assert_eq!(f.kind, FailureKind::BadArguments);
        let f = failure(run(bag_ops::MAP, encode_value(&("nope", vec![1])).unwrap()).await);
        assert_eq!(f.kind, FailureKind::UnknownTask);
        let f = failure(run(bag_ops::MAP, encode_value(&(1, 2)).unwrap()).await);
        assert_eq!(f.kind, FailureKind::BadArguments);
    }

    #[tokio::test]
    async fn large_partitions_and_nested_elements_keep_their_bytes() {
        let items: Vec<(i64, String)> = (0..70_000).map(|i| (i, format!("n{i}"))).collect();
        let mapped = value(
            run(
                bag_ops::KEY_BY,
                encode_value(&("inc", vec![1; 20])).unwrap(),
            )
            .await,
        );
        assert_eq!(mapped.as_array().unwrap().len(), 20);
        let args = encode_value(&("even_pair", &items)).unwrap();
        let registry = Registry::new().with::<even_pair>();
        let message = TaskMessage::new(TaskKey::unique("f"), bag_ops::FILTER, args);
        let kept = match execute(&registry, "w", &message, &crate::secede::test_context)
            .await
            .unwrap()
        {
            Outcome::Value(bytes) => {
                rask_common::message::decode_value::<Vec<(i64, String)>>(&bytes).unwrap()
            }
            Outcome::Failure(f) => panic!("{f}"),
        };
        assert_eq!(kept.len(), 35_000);
        assert_eq!(kept[1], (2, "n2".to_owned()));
    }

    rask_common::task! {
        /// Test: whether the number of a pair is even.
        fn even_pair(pair: (i64, String)) -> bool { pair.0 % 2 == 0 }
    }

    #[tokio::test]
    async fn other_functions_are_left_to_the_caller() {
        let message = TaskMessage::new(TaskKey::unique("inc"), "inc", encode_value(&(1,)).unwrap());
        assert!(
            execute(&registry(), "w", &message, &crate::secede::test_context)
                .await
                .is_none()
        );
    }
}
