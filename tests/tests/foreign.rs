//! Foreign functions (`rask_worker::foreign`, what Python tasks are built on) against real
//! servers: a foreign function's result feeds a Rust task and the other way round in one graph,
//! with no client in between; an error it raises is stored with its type and message; a
//! retryable one is retried; a call past its time limit times out and its future is dropped (so
//! that a binding stops the call); the worker advertises the function.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rask::builtins::inc;
use rask::{FailureKind, RetryPolicy, TaskOptions};
use rask_common::message::{decode_value, encode_value};
use rask_tests::{failure, TestEnv, PATIENCE};

use rask_worker::{ForeignCall, ForeignError, Registry};

rask::task! {
    /// The client's handle of the foreign function `foreign_double`: the workers of these
    /// tests run the foreign one, never this body.
    fn foreign_double(x: i64) -> i64 { unreachable!("run by the foreign function, not {x}") }
}
rask::task! {
    /// The client's handle of the foreign function `foreign_raise`.
    fn foreign_raise(x: i64) -> i64 { unreachable!("run by the foreign function, not {x}") }
}
rask::task! {
    /// The client's handle of the foreign function `foreign_flaky`.
    fn foreign_flaky(x: i64) -> i64 { unreachable!("run by the foreign function, not {x}") }
}
rask::task! {
    /// The client's handle of the foreign function `foreign_forever`.
    fn foreign_forever(x: i64) -> i64 { unreachable!("run by the foreign function, not {x}") }
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The built-in functions and the foreign ones of these tests; `dropped` is set when a call
/// of `foreign_forever` is dropped.
fn registry(dropped: Arc<AtomicBool>) -> Registry {
    let arg = |call: &ForeignCall| -> Result<i64, ForeignError> {
        decode_value::<(i64,)>(&call.args)
            .map(|(x,)| x)
            .map_err(|e| ForeignError::new("TypeError", e.to_string()))
    };
    Registry::with_builtins()
        .with_foreign("foreign_double", move |call: ForeignCall| {
            let x = arg(&call);
            Box::pin(async move { Ok(encode_value(&(x? * 2)).unwrap()) }) as _
        })
        .with_foreign("foreign_raise", move |call: ForeignCall| {
            let x = arg(&call);
            Box::pin(async move {
                Err(ForeignError {
                    traceback: Some("Traceback (most recent call last):\n  line 1".into()),
                    ..ForeignError::new("ValueError", format!("refusing {}", x?))
                })
            }) as _
        })
        .with_foreign("foreign_flaky", move |call: ForeignCall| {
            let (x, attempt) = (arg(&call), call.context.attempt());
            Box::pin(async move {
                let x = x?;
                if attempt == 0 {
                    return Err(ForeignError {
                        retryable: true,
                        ..ForeignError::new("ConnectionError", format!("first try of {x}"))
                    });
                }
                Ok(encode_value(&(x + i64::from(attempt) * 1000)).unwrap())
            }) as _
        })
        .with_foreign("foreign_forever", move |_call: ForeignCall| {
            let flag = DropFlag(dropped.clone());
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
                Ok(Vec::new())
            }) as _
        })
}

#[tokio::test]
async fn foreign_and_rust_tasks_feed_each_other_in_one_graph() {
    let env = TestEnv::new("foreign-graph").await;
    let worker = env.run_worker(registry(Arc::default()));
    let client = env.client().await;
    // Rust -> foreign -> Rust -> foreign, per leaf; every value unique to its leaf.
    let roots: Vec<_> = (0..20i64)
        .map(|i| {
            let a = inc.delayed(100 * i);
            let b = foreign_double.delayed(a);
            let c = inc.delayed(b);
            foreign_double.delayed(c)
        })
        .collect();
    let values = client
        .compute_many(&roots)
        .await
        .expect("the graph computes");
    let expected: Vec<i64> = (0..20).map(|i| ((100 * i + 1) * 2 + 1) * 2).collect();
    assert_eq!(values, expected);
    // The worker advertises the foreign functions as its own.
    let monitor = rask::Monitor::connect(env.settings.clone()).await.unwrap();
    env.eventually("the worker registers foreign_double", || async {
        let workers = monitor.workers().await.unwrap_or_default();
        workers
            .iter()
            .any(|w| w.functions.iter().any(|f| f == "foreign_double"))
    })
    .await;
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn foreign_errors_keep_their_type_and_retryable_ones_are_retried() {
    let env = TestEnv::new("foreign-errors").await;
    let worker = env.run_worker(registry(Arc::default()));
    let client = env.client().await;
    let raised = client.submit(foreign_raise, (7,)).await.unwrap();
    let f = failure(raised.result().await.expect_err("it raises"));
    assert_eq!(f.kind, FailureKind::Failed);
    assert!(
        f.message
            .starts_with("ValueError: refusing 7\n\nTraceback (most recent call last):"),
        "{}",
        f.message
    );
    let backoff = Duration::from_millis(20);
    let options = TaskOptions::new().retry(RetryPolicy::new(2).backoff(backoff, backoff));
    let flaky = client
        .submit_with(foreign_flaky, (5,), &options)
        .await
        .unwrap();
    assert_eq!(flaky.result().await.expect("the retry succeeds"), 1005);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_foreign_call_past_its_time_limit_times_out_and_is_dropped() {
    let env = TestEnv::new("foreign-limit").await;
    let dropped = Arc::new(AtomicBool::new(false));
    let worker = env.run_worker(registry(dropped.clone()));
    let client = env.client().await;
    let options = TaskOptions::new().time_limit(Duration::from_millis(200));
    let forever = client
        .submit_with(foreign_forever, (1,), &options)
        .await
        .unwrap();
    let f = failure(
        forever
            .result_within(PATIENCE)
            .await
            .expect_err("it times out"),
    );
    assert_eq!(f.kind, FailureKind::TimedOut);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the call's future is dropped at the limit"
    );
    worker.stop().await.unwrap();
}
