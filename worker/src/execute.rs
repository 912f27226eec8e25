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
//!
//! Force cancel (`client.cancel(..).force()`): each run gets its own [`Cancel`] token, which the
//! worker cancels when the task is revoked. An async body is then dropped; a plain function
//! (which will see the token through its context) has `cancel_grace` to return, after which it
//! is abandoned as at a time limit. Either way the run ends with a `Cancelled` failure (the
//! client stored one first, so write-once keeps that) and a late result is dropped. A plain
//! function quick enough to run inline (microseconds so far, `pace.rs`) cannot be abandoned.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use rask_common::{
    FailureKind, Invocation, Outcome, Settings, TaskContext, TaskFailure, TaskMessage,
};

use crate::overrun::{Cancel, Overruns};
use crate::registry::{PrepareError, Registry};
use crate::resources::Held;

/// The message of a task stopped by a force cancel (its stored outcome is the client's).
const CANCELLED: &str = "cancelled by a client while it ran (force)";

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

/// Runs `message` with the function `registry` has for it, for at most `limit`, until
/// `cancel`'s token is cancelled: plain functions inline when they have been quick so far (see
/// `pace.rs`), else on the blocking pool (so that the worker can stop waiting for them), async
/// ones on the runtime; a panic is caught and reported either way. A plain function past its
/// limit, or past `cancel_grace` after its cancellation, leaves its thread to `overruns`. A
/// cancelled run ends with a `Cancelled` failure (an async body dropped at its current
/// `.await`). Sets `retryable` when the outcome is a failure the function marked
/// [`rask_common::TaskError::retryable`] (whether it is retried is the caller's decision). `context`
/// builds the run's [`TaskContext`], called only for a function that takes one. The resource
/// slots `held` (if any) go into the body, readable there, and are given back when it ends
/// (`resources/current.rs`).
#[allow(clippy::too_many_arguments)] // each is one concern of a run; bundling hides which
pub(crate) async fn execute(
    registry: &Registry,
    overruns: &Arc<Overruns>,
    worker: &str,
    message: &TaskMessage,
    context: &(dyn Fn() -> TaskContext + Sync),
    limit: Option<Duration>,
    cancel: &Cancel,
    held: Option<Held>,
    retryable: &mut bool,
) -> Outcome {
    let fail = |kind: FailureKind, text: String| {
        Outcome::Failure(TaskFailure::of(message, kind, text, worker))
    };
    let cancelled = |detail: &str| fail(FailureKind::Cancelled, format!("{CANCELLED}{detail}"));
    tokio::select! {
        biased;
        () = cancel.token.cancelled() => return cancelled(""),
        bag = crate::bag::execute(registry, worker, message, context) => {
            if let Some(outcome) = bag {
                return outcome; // an element-wise operation of a lazy collection
            }
        }
    }
    let invocation = match registry.prepare(&message.function, &message.args, context) {
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
    let pace = registry.pace();
    let joined = match (invocation, limit) {
        // On a multi-threaded runtime, a body of microseconds so far runs inline (`pace.rs`):
        // no hand-off to another thread and back per task.
        (Invocation::Blocking(f), None) if multi_thread && pace.is_quick(&message.function) => {
            match pace.run_in_place(&message.function, f) {
                Ok(result) => Ok(result),
                Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
            }
        }
        // On the blocking pool, so that a force cancel can stop waiting for it; at the limit or
        // past the cancellation's grace the thread runs on, counted by `overruns`.
        (Invocation::Blocking(f), limit) => {
            let timed = move || {
                let started = Instant::now();
                let result = f();
                (result, started.elapsed())
            };
            match overruns.run_stoppable(timed, limit, Some(cancel)).await {
                Ok(Ok((result, took))) => {
                    // Runs under a limit never run inline, so their pace does not matter.
                    if limit.is_none() {
                        pace.record(&message.function, took);
                    }
                    Ok(result)
                }
                Ok(Err(join)) => Err(join),
                Err(_overran) if cancel.token.is_cancelled() => {
                    return cancelled(&format!(
                        "; a plain function cannot be stopped, so it was abandoned after \
                         cancel_grace = {:?} and runs on in the background",
                        cancel.grace
                    ))
                }
                Err(_overran) => return timed_out(limit.unwrap_or_default(), UNSTOPPABLE),
            }
        }
        (Invocation::Async(fut), limit) => {
            let caught = AssertUnwindSafe(fut).catch_unwind();
            let limited = async {
                match limit {
                    None => Ok(caught.await),
                    // At the limit the body's future is dropped: cancelled at its `.await`.
                    Some(limit) => tokio::time::timeout(limit, caught).await.map_err(|_| limit),
                }
            };
            let caught = tokio::select! {
                biased;
                // The body's future is dropped: cancelled at its current `.await`.
                () = cancel.token.cancelled() => return cancelled(""),
                limited = limited => match limited {
                    Ok(caught) => caught,
                    Err(limit) => return timed_out(limit, ""),
                },
            };
            match caught {
                Ok(result) => Ok(result),
                Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
            }
        }
    };
    if cancel.token.is_cancelled() {
        return cancelled("; it returned after its cancellation and its result is dropped");
    }
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

    rask_common::task! {
        /// Test: flags that it started, then blocks its thread until told to go on through
        /// `STUBBORN_GATE`, ignoring any cancellation.
        fn stubborn(x: i64) -> i64 {
            STUBBORN_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
            let gate = STUBBORN_GATE.lock().unwrap().take().expect("a gate is set");
            gate.recv().expect("the test lets it go on");
            x
        }
    }

    rask_common::task! {
        /// Test: never finishes on its own; records that it was dropped in `ENDLESS_DROPPED`.
        async fn endless(x: i64) -> i64 {
            let _guard = EndlessDropped;
            std::future::pending::<()>().await;
            x
        }
    }

    static ENDLESS_DROPPED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// Sets `ENDLESS_DROPPED` when dropped.
    struct EndlessDropped;
    impl Drop for EndlessDropped {
        fn drop(&mut self) {
            ENDLESS_DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    static STUBBORN_GATE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> =
        std::sync::Mutex::new(None);
    static STUBBORN_STARTED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
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

    /// A context for runs of functions that take one (none of these tests' do).
    fn context() -> TaskContext {
        panic!("these functions take no context")
    }

    /// A run's cancellation, not cancelled, with a grace of 5 s.
    fn running() -> Cancel {
        Cancel {
            token: tokio_util::sync::CancellationToken::new(),
            grace: Duration::from_secs(5),
        }
    }

    /// `execute` without a limit, ignoring retryability.
    async fn execute(registry: &Registry, worker: &str, message: &TaskMessage) -> Outcome {
        super::execute(
            registry,
            &overruns(),
            worker,
            message,
            &context,
            None,
            &running(),
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
            &context,
            limit,
            &running(),
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
        let outcome = super::execute(
            &registry,
            &overruns,
            "w",
            &message,
            &context,
            limit,
            &running(),
            None,
            &mut false,
        )
        .await;
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
                let cancel = running();
                let outcome = super::execute(
                    registry,
                    overruns,
                    "w",
                    &message,
                    &context,
                    limit,
                    &cancel,
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
    async fn a_cancelled_async_body_is_dropped() {
        let registry = Registry::new().with::<endless>();
        let message = msg("endless", encode_value(&(2,)).unwrap());
        let cancel = running();
        let overruns = overruns();
        let mut retryable = false;
        let run = super::execute(
            &registry,
            &overruns,
            "w",
            &message,
            &context,
            None,
            &cancel,
            None,
            &mut retryable,
        );
        tokio::pin!(run);
        // Started (polled once, waiting forever), then cancelled.
        assert!(futures::poll!(&mut run).is_pending());
        cancel.token.cancel();
        let f = failure(run.await);
        assert_eq!(f.kind, FailureKind::Cancelled);
        assert!(ENDLESS_DROPPED.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_body_ignoring_its_cancellation_is_abandoned_after_the_grace() {
        let registry = Registry::new().with::<stubborn>();
        let (go_on, gate) = std::sync::mpsc::channel();
        *STUBBORN_GATE.lock().unwrap() = Some(gate);
        let message = msg("stubborn", encode_value(&(3,)).unwrap());
        let cancel = Cancel {
            grace: Duration::from_millis(50),
            ..running()
        };
        let overruns = overruns();
        let mut retryable = false;
        let run = super::execute(
            &registry,
            &overruns,
            "w",
            &message,
            &context,
            None,
            &cancel,
            None,
            &mut retryable,
        );
        // Cancelled once the body runs (polled for, as the body's thread sets the flag).
        let cancel_once_started = async {
            while !STUBBORN_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            cancel.token.cancel();
        };
        let (outcome, ()) = tokio::join!(run, cancel_once_started);
        let f = failure(outcome);
        assert_eq!(f.kind, FailureKind::Cancelled);
        assert!(f.message.contains("cancel_grace = 50ms"), "{}", f.message);
        // The body still blocks on its gate: its thread is counted until it returns.
        assert_eq!(overruns.running(), 1);
        go_on.send(()).expect("the body still waits");
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
                &context,
                None,
                &running(),
                None,
                &mut flagged,
            )
            .await;
            let f = failure(outcome);
            assert_eq!((f.kind, flagged), (FailureKind::Failed, retryable));
        }
    }
}
