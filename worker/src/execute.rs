//! Running one decoded task to an [`Outcome`]: never fails, never panics; every failure of the
//! task (unknown function, bad arguments, error, panic) becomes a stored [`TaskFailure`].

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use rask_common::{FailureKind, Invocation, Outcome, TaskFailure, TaskMessage};

use crate::registry::{PrepareError, Registry};

/// Runs `message` with the function `registry` has for it: plain functions in place off the
/// runtime's other work (`block_in_place`, or the blocking pool on a single-threaded runtime),
/// async ones on the runtime; a panic is caught and reported either way.
pub(crate) async fn execute(registry: &Registry, worker: &str, message: &TaskMessage) -> Outcome {
    let fail = |kind: FailureKind, text: String| {
        Outcome::Failure(TaskFailure {
            attempts: message.attempt + 1,
            ..TaskFailure::new(
                kind,
                text,
                message.function.clone(),
                message.key.clone(),
                worker,
            )
        })
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
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let joined = match invocation {
        // On a multi-threaded runtime, run the body on this thread and let the runtime move its
        // other work elsewhere: no hand-off to the blocking pool and back per task.
        Invocation::Blocking(f) if multi_thread => {
            match tokio::task::block_in_place(|| std::panic::catch_unwind(AssertUnwindSafe(f))) {
                Ok(result) => Ok(result),
                Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
            }
        }
        Invocation::Blocking(f) => tokio::task::spawn_blocking(f).await,
        Invocation::Async(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(result) => Ok(result),
            Err(payload) => return fail(FailureKind::Panicked, panic_text(payload)),
        },
    };
    match joined {
        Ok(Ok(bytes)) => Outcome::Value(bytes),
        Ok(Err(error)) => fail(FailureKind::Failed, error.message().to_owned()),
        Err(join) if join.is_panic() => fail(FailureKind::Panicked, panic_text(join.into_panic())),
        Err(join) => fail(FailureKind::Panicked, format!("task was aborted: {join}")),
    }
}

/// The message of a panic payload (`panic!` with a literal or a formatted string).
fn panic_text(payload: Box<dyn Any + Send>) -> String {
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
        /// Test: async panic.
        async fn explode_later(x: i64) -> i64 {
            if x > 0 { panic!("late boom") }
            x
        }
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
}
