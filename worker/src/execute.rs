//! Running one decoded task to an [`Outcome`]: never fails, never panics; every failure of the
//! task (unknown function, bad arguments, error, panic, time limit) becomes a stored
//! [`TaskFailure`].
//!
//! Time limits: a task runs under its message's `time_limit_ms`, else the worker's
//! `task_time_limit` ([`time_limit`]). At the limit an async body is dropped, so it stops at its
//! next `.await`. A plain (blocking) function cannot be stopped from outside its thread: under a
//! limit it runs on the blocking pool, and at the limit the worker stops waiting for it and fails
//! the task; the thread runs on to completion in the background and its result is dropped,
//! counted and bounded by `overrun.rs`. Either way the task's concurrency slot is free again at
//! the limit; its resource slots, though, stay held until its thread returns (`resources/`).
//! The element-wise operations of lazy collections (`bag.rs`) are not under time
//! limits.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use std::sync::Arc;

use futures::FutureExt;

use rask_common::{FailureKind, Invocation, Outcome, Settings, TaskFailure, TaskMessage};

use crate::overrun::Overruns;
use crate::registry::{PrepareError, Registry};
use crate::resources::Held;

/// What a plain function's time-limit failure adds to the message.
const UNSTOPPABLE: &str = "; a plain function cannot be stopped, so it runs on in the background \
                           and its result is dropped";

/// The time limit `message` runs under: its own (`time_limit_ms`, when not 0), else the
/// `task_time_limit` of `settings`, else none.
pub(crate) fn time_limit(message: &TaskMessage, settings: &Settings) -> Option<Duration> {
    message
        .time_limit_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .or_else(|| settings.default_time_limit())
}

/// Runs `message` with the function `registry` has for it, for at most `limit`: plain functions
/// in place off the runtime's other work (`block_in_place`, or the blocking pool on a
/// single-threaded runtime or under a limit; inline when they have been quick so far, see
/// `pace.rs`), async ones on the runtime; a panic is caught and reported either way. A plain
/// function past its limit leaves its thread to `overruns`. Sets `retryable` when the outcome
/// is a failure the function marked [`rask_common::TaskError::retryable`] (whether it is
/// retried is the caller's decision). The resource slots `held` (if any) go into the body,
/// readable there, and are given back when it ends (`resources/current.rs`).
pub(crate) async fn execute(
    registry: &Registry,
    overruns: &Arc<Overruns>,
    worker: &str,
    message: &TaskMessage,
    limit: Option<Duration>,
    held: Option<Held>,
    retryable: &mut bool,
) -> Outcome {
    if let Some(outcome) = crate::bag::execute(registry, worker, message).await {
        return outcome; // an element-wise operation of a lazy collection
    }
    let fail = |kind: FailureKind, text: String| {
        Outcome::Failure(TaskFailure::of(message, kind, text, worker))
    };
    let invocation = match registry.prepare(&message.function, &message.args) {
        Ok(invocation) => invocation,
        Err(PrepareError::Unknown(known)) => {
            return fail(
                FailureKind::UnknownTask,
                format!(
                    "no function named {:?} on this worker; it knows: {}",
                    message.function,
                    known.join(", ")
                ),
            )
        }
        Err(PrepareError::BadArguments { expected, error }) => {
            return fail(
                FailureKind::BadArguments,
                format!("arguments do not decode as {expected}: {error}"),
            )
        }
    };
    let invocation = match held {
        Some(held) => crate::resources::holding(invocation, held),
        None => invocation,
    };
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let timed_out = |limit: Duration, detail: &str| {
        fail(
            FailureKind::TimedOut,
            format!("ran longer than its time limit of {limit:?}{detail}"),
        )
    };
    let joined = match (invocation, limit) {
        // On a multi-threaded runtime, run the body on this thread, inline or letting the
        // runtime move its other work elsewhere (`pace.rs`): no hand-off to the blocking pool
        // and back per task.
        (Invocation::Blocking(f), None) if multi_thread => {
            match registry.pace().run_in_place(&message.function, f) {
                Ok(result) => Ok(result),
                Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
            }
        }
        (Invocation::Blocking(f), None) => tokio::task::spawn_blocking(f).await,
        // At the limit the thread runs on, counted by `overruns`.
        (Invocation::Blocking(f), Some(limit)) => match overruns.run_blocking(f, limit).await {
            Ok(joined) => joined,
            Err(_overran) => return timed_out(limit, UNSTOPPABLE),
        },
        (Invocation::Async(fut), limit) => {
            let caught = AssertUnwindSafe(fut).catch_unwind();
            let caught = match limit {
                None => caught.await,
                // At the limit the body's future is dropped: cancelled at its current `.await`.
                Some(limit) => match tokio::time::timeout(limit, caught).await {
                    Ok(caught) => caught,
                    Err(_) => return timed_out(limit, ""),
                },
            };
            match caught {
                Ok(result) => Ok(result),
                Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
            }
        }
    };
    match joined {
        Ok(Ok(bytes)) => Outcome::Value(bytes),
        Ok(Err(error)) => {
            *retryable = error.is_retryable();
            fail(FailureKind::Failed, error.message().to_owned())
        }
        Err(join) if join.is_panic() => fail(FailureKind::Panicked, panic_text(join.into_panic())),
        Err(join) => fail(FailureKind::Panicked, format!("task was aborted: {join}")),
    }
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
pub(crate) fn panic_text(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "panicked with a non-text payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use rask_common::message::encode_value;
    use rask_common::TaskKey;

    use super::*;

    rask_common::task! {
        /// Test: panics.
        fn explode(text: String) -> i64 { panic!("boom: {text}") }
    }
    rask_common::task! {
        /// Test: adds one, or panics on a negative number.
        fn inc_or_panic(x: i64) -> i64 {
            if x < 0 {
                panic!("negative: {x}")
            }
            x + 1
        }
    }
    rask_common::task! {
        /// Test: async panic.
        async fn explode_later(x: i64) -> i64 {
            if x > 0 { panic!("late boom") }
            x
        }
    }

    rask_common::task! {
        /// Test: blocks its thread until told to go on through `GATE`, then returns `x`.
        fn held(x: i64) -> i64 {
            let gate = GATE.lock().unwrap().take().expect("a gate is set");
            gate.recv().expect("the test lets it go on");
            x
        }
    }
    rask_common::task! {
        /// Test: never finishes on its own; records that it was dropped.
        async fn forever(x: i64) -> i64 {
            let _guard = DropFlag;
            std::future::pending::<()>().await;
            x
        }
    }
    rask_common::task! {
        /// Test: fails, retryably when `retryable`.
        fn flaky(retryable: bool) -> Result<i64, TaskError> {
            Err(if retryable { TaskError::retryable("later") } else { TaskError::new("never") })
        }
    }

    static GATE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
        std::sync::Mutex::new(None);
    static DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Sets `DROPPED` when dropped.
    struct DropFlag;
    impl Drop for DropFlag {
        fn drop(&mut self) {
            DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    use rask_common::TaskError;

    /// Overruns as a worker with the default bound for two tasks at once has them.
    fn overruns() -> Arc<Overruns> {
        Arc::new(Overruns::new(2, Default::default()))
    }

    /// `execute` without a limit, ignoring retryability.
    async fn execute(registry: &Registry, worker: &str, message: &TaskMessage) -> Outcome {
        super::execute(
            registry,
            &overruns(),
            worker,
            message,
            None,
            None,
            &mut false,
        )
        .await
    }

    fn msg(function: &str, args: Vec<u8>) -> TaskMessage {
        TaskMessage::new(TaskKey::unique(function), function, args)
    }

    fn failure(outcome: Outcome) -> TaskFailure {
        match outcome {
            Outcome::Failure(f) => f,
            Outcome::Value(_) => panic!("expected a failure"),
        }
    }

    #[tokio::test]
    async fn panics_become_failures_with_the_message() {
        let registry = Registry::new().with::<explode>().with::<explode_later>();
        let f = failure(
            execute(
                &registry,
                "w",
                &msg("explode", encode_value(&("x",)).unwrap()),
            )
            .await,
        );
        assert_eq!(f.kind, FailureKind::Panicked);
        assert_eq!(f.message, "boom: x");
        let f = failure(
            execute(
                &registry,
                "w",
                &msg("explode_later", encode_value(&(1,)).unwrap()),
            )
            .await,
        );
        assert_eq!(
            (f.kind, f.message.as_str()),
            (FailureKind::Panicked, "late boom")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panics_on_a_multi_threaded_runtime_become_failures_too() {
        let registry = Registry::with_builtins().with::<explode>();
        let f = failure(
            execute(
                &registry,
                "w",
                &msg("explode", encode_value(&("y",)).unwrap()),
            )
            .await,
        );
        assert_eq!(
            (f.kind, f.message.as_str()),
            (FailureKind::Panicked, "boom: y")
        );
        let ok = execute(&registry, "w", &msg("inc", encode_value(&(1,)).unwrap())).await;
        assert_eq!(ok, Outcome::Value(encode_value(&2i64).unwrap()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_quick_plain_function_runs_inline_and_its_panic_is_still_a_failure() {
        let registry = Registry::new().with::<inc_or_panic>();
        let call = |x: i64| msg("inc_or_panic", encode_value(&(x,)).unwrap());
        // Runs of microseconds make it quick (a few, should the machine preempt one).
        let mut runs = 0;
        while !registry.pace().is_quick("inc_or_panic") {
            assert!(runs < 100, "still not quick after {runs} runs");
            let ok = execute(&registry, "w", &call(1)).await;
            assert_eq!(ok, Outcome::Value(encode_value(&2i64).unwrap()));
            runs += 1;
        }
        let f = failure(execute(&registry, "w", &call(-1)).await);
        assert_eq!(
            (f.kind, f.message.as_str()),
            (FailureKind::Panicked, "negative: -1")
        );
        let ok = execute(&registry, "w", &call(41)).await;
        assert_eq!(ok, Outcome::Value(encode_value(&42i64).unwrap()));
    }

    #[tokio::test]
    async fn unknown_and_bad_arguments_are_named() {
        let registry = Registry::with_builtins();
        let f = failure(execute(&registry, "w1", &msg("nope", encode_value(&(1,)).unwrap())).await);
        assert_eq!(f.kind, FailureKind::UnknownTask);
        assert!(
            f.message.contains("\"nope\"") && f.message.contains("inc"),
            "{}",
            f.message
        );
        assert_eq!(f.worker, "w1");
        let f = failure(execute(&registry, "w1", &msg("add", encode_value(&(1,)).unwrap())).await);
        assert_eq!(f.kind, FailureKind::BadArguments);
        assert!(f.message.contains("(i64, i64)"), "{}", f.message);
    }

    #[test]
    fn the_message_limit_wins_over_the_worker_setting() {
        let mut settings = Settings::default();
        let mut m = msg("inc", vec![]);
        assert_eq!(time_limit(&m, &settings), None);
        settings.task_time_limit = Duration::from_secs(2);
        assert_eq!(time_limit(&m, &settings), Some(Duration::from_secs(2)));
        m.time_limit_ms = Some(1500);
        assert_eq!(time_limit(&m, &settings), Some(Duration::from_millis(1500)));
        m.time_limit_ms = Some(0);
        assert_eq!(time_limit(&m, &settings), Some(Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn an_async_body_past_its_limit_is_dropped_and_times_out() {
        let registry = Registry::new().with::<forever>();
        let limit = Some(Duration::from_millis(50));
        let message = msg("forever", encode_value(&(1,)).unwrap());
        let outcome = super::execute(
            &registry,
            &overruns(),
            "w",
            &message,
            limit,
            None,
            &mut false,
        )
        .await;
        let f = failure(outcome);
        assert_eq!(f.kind, FailureKind::TimedOut);
        assert!(f.message.contains("50ms"), "{}", f.message);
        assert!(DROPPED.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_body_past_its_limit_times_out_while_it_still_runs() {
        let registry = Registry::new().with::<held>();
        let (go_on, gate) = std::sync::mpsc::channel();
        *GATE.lock().unwrap() = Some(gate);
        let limit = Some(Duration::from_millis(50));
        let message = msg("held", encode_value(&(1,)).unwrap());
        let overruns = overruns();
        let outcome =
            super::execute(&registry, &overruns, "w", &message, limit, None, &mut false).await;
        // The body is still blocked on the gate: the outcome came at the limit, not after it,
        // and its thread is counted as overrun until it returns.
        let f = failure(outcome);
        assert_eq!(f.kind, FailureKind::TimedOut);
        assert!(f.message.contains("50ms"), "{}", f.message);
        assert_eq!(overruns.running(), 1);
        go_on.send(()).expect("the body still waits");
    }

    rask_common::task! {
        /// Test: blocks its thread until told to go on through `SLOT_GATE`, then returns `x`.
        fn held_with_slot(x: i64) -> i64 {
            let gate = SLOT_GATE.lock().unwrap().take().expect("a gate is set");
            gate.recv().expect("the test lets it go on");
            x
        }
    }

    static SLOT_GATE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
        std::sync::Mutex::new(None);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resource_slots_are_held_until_the_body_ends() {
        use crate::resources::Capacity;
        let gpus = Arc::new(Capacity::new("gpu=1".parse().unwrap()));
        let take = || {
            gpus.try_take(&"gpu=1".parse().unwrap())
                .expect("the GPU is free")
        };
        let registry = Registry::new().with::<forever>().with::<held_with_slot>();
        let limit = Some(Duration::from_millis(50));
        let overruns = overruns();
        let run = |function: &str, slots: Option<crate::resources::Held>| {
            let message = msg(function, encode_value(&(1,)).unwrap());
            let (registry, overruns) = (&registry, &overruns);
            async move {
                let mut retryable = false;
                let outcome = super::execute(
                    registry,
                    overruns,
                    "w",
                    &message,
                    limit,
                    slots,
                    &mut retryable,
                );
                failure(outcome.await)
            }
        };
        // An async body is dropped at its limit: the slot is free again then.
        assert_eq!(
            run("forever", Some(take())).await.kind,
            FailureKind::TimedOut
        );
        assert!(gpus.in_use().is_empty());
        // A plain function past its limit still runs on its thread, and still holds its slot
        // until it returns.
        let (go_on, gate) = std::sync::mpsc::channel();
        *SLOT_GATE.lock().unwrap() = Some(gate);
        let f = run("held_with_slot", Some(take())).await;
        assert_eq!(f.kind, FailureKind::TimedOut);
        assert_eq!(gpus.in_use().to_string(), "gpu=1");
        go_on.send(()).expect("the body still waits");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gpus.in_use().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot was never given back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn only_retryable_errors_are_flagged() {
        let registry = Registry::new().with::<flaky>();
        for retryable in [true, false] {
            let mut flagged = !retryable;
            let message = msg("flaky", encode_value(&(retryable,)).unwrap());
            let outcome = super::execute(
                &registry,
                &overruns(),
                "w",
                &message,
                None,
                None,
                &mut flagged,
            )
            .await;
            let f = failure(outcome);
            assert_eq!((f.kind, flagged), (FailureKind::Failed, retryable));
        }
    }
}
