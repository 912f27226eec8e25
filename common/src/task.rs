//! Typed task definitions: the [`Task`] trait a handle implements, and the [`task!`](crate::task!)
//! macro that turns a plain function into such a handle.
//!
//! The same definition serves both sides: a producer uses the handle to submit with arguments and
//! a result type checked at compile time, a worker registers it to run the body.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::TaskContext;

/// A function that workers can run, named and typed. Implemented by [`task!`](crate::task!).
pub trait Task: Send + Sync + 'static {
    /// The name the function is registered and called under.
    const NAME: &'static str;
    /// The arguments, as a tuple (`(i64,)` for one `i64`): the parameters the body takes by
    /// value, which travel in the message.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Prepares a call of the body with `args`; the worker decides where it runs. A body that
    /// takes a [`TaskContext`] or worker state cannot run without them: its call fails.
    fn invoke(args: Self::Args) -> Invocation<Self::Output>;

    /// Prepares a call of the body with `args` and, for a body that takes them, the run's
    /// [`TaskContext`] (which `context` builds; the worker calls it only for such a body, so
    /// that plain bodies cost nothing extra). Defaults to [`Task::invoke`].
    fn invoke_in(args: Self::Args, context: &dyn Fn() -> TaskContext) -> Invocation<Self::Output> {
        let _ = context;
        Self::invoke(args)
    }

    /// The worker states the body takes (type and name), which a worker checks its registry
    /// provides before it consumes. Defaults to none.
    fn states() -> Vec<(TypeId, &'static str)> {
        Vec::new()
    }
}

/// A prepared call of a task body.
pub enum Invocation<T> {
    /// A plain function: may use the CPU for long, so workers run it off their async work.
    Blocking(Box<dyn FnOnce() -> Result<T, TaskError> + Send>),
    /// An `async fn`: runs on the worker's async runtime.
    Async(Pin<Box<dyn Future<Output = Result<T, TaskError>> + Send>>),
}

/// The error a task body returns; stored on the task's future as a `Failed` failure, unless it
/// is [`TaskError::retryable`] and the task's retry policy allows another attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    message: String,
    retryable: bool,
}

impl TaskError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error worth retrying (a timeout talking to another service, say): when the task was
    /// submitted with a [`crate::retry::RetryPolicy`] that allows another attempt, the worker
    /// schedules one instead of storing the failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        TaskError {
            message: message.into(),
            retryable: true,
        }
    }

    /// Whether the error is [`TaskError::retryable`].
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The error a task body's error `E` becomes (how [`task!`](crate::task!) converts it): a
    /// [`TaskError`] stays as it is (keeping [`TaskError::is_retryable`]), anything else becomes
    /// its `Display` text.
    pub fn from_error<E: fmt::Display + 'static>(error: E) -> Self {
        match (&error as &dyn std::any::Any).downcast_ref::<TaskError>() {
            Some(task_error) => task_error.clone(),
            None => TaskError::from_display(&error),
        }
    }

    /// A (not retryable) error carrying the `Display` text of `error`.
    pub fn from_display(error: &dyn fmt::Display) -> Self {
        TaskError::new(error.to_string())
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Defines a task: a unit struct named like the function that implements [`Task`].
///
/// The body is a plain function (run so that it does not hold up the worker's async work: its
/// thread's other work moves elsewhere first, unless the function has proven to take only
/// microseconds) or an `async fn` (run on its runtime). It returns its value, or `Result<T, E>`
/// with any `E: Display` for errors.
///
/// Parameters taken by value are the task's arguments: they travel in the message, and the
/// typed handle (`f.delayed(x)`, `Client::submit(f, (x,))`) takes exactly those. Parameters
/// taken by reference are supplied by the worker that runs the task
/// ([`FromContext`](crate::context::FromContext)), in any position: `ctx: &TaskContext` (the
/// run's [`TaskContext`](crate::context::TaskContext)) and `name: &State<T>` (the worker's
/// state of type `T`, see `Registry::with_state`). A task without such parameters costs
/// nothing extra.
///
/// ```
/// use rask_common::context::{State, TaskContext};
///
/// rask_common::task! {
///     /// Adds one.
///     pub fn inc(x: i64) -> i64 { x + 1 }
/// }
/// rask_common::task! {
///     /// Parses a number, failing on bad input.
///     pub fn parse(text: String) -> Result<i64, std::num::ParseIntError> { text.trim().parse() }
/// }
/// /// A worker's state: built once per worker process.
/// pub struct Offset(i64);
/// rask_common::task! {
///     /// Adds the worker's offset; knows its run.
///     pub async fn shifted(ctx: &TaskContext, offset: &State<Offset>, x: i64) -> String {
///         format!("{} on {}: {}", ctx.key(), ctx.worker_id(), x + offset.0)
///     }
/// }
/// use rask_common::Task;
/// assert_eq!(inc::NAME, "inc");
/// let _: rask_common::Delayed<String> = shifted.delayed(1); // the argument only
/// ```
#[macro_export]
macro_rules! task {
    ($(#[$meta:meta])* $vis:vis async fn $name:ident($($params:tt)*) -> Result<$ok:ty, $err:ty> $body:block) => {
        $crate::task!(@split [$(#[$meta])*] [$vis] $name [async_result $ok, $err] $ok, $body [] [] $($params)*);
    };
    ($(#[$meta:meta])* $vis:vis async fn $name:ident($($params:tt)*) -> $ret:ty $body:block) => {
        $crate::task!(@split [$(#[$meta])*] [$vis] $name [async_value $ret] $ret, $body [] [] $($params)*);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($params:tt)*) -> Result<$ok:ty, $err:ty> $body:block) => {
        $crate::task!(@split [$(#[$meta])*] [$vis] $name [blocking_result $ok, $err] $ok, $body [] [] $($params)*);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($params:tt)*) -> $ret:ty $body:block) => {
        $crate::task!(@split [$(#[$meta])*] [$vis] $name [blocking_value $ret] $ret, $body [] [] $($params)*);
    };
    // Sorts the parameters: by reference, supplied by the worker; by value, the arguments.
    (@split $meta:tt $vis:tt $name:ident $kind:tt $out:ty, $body:block [$($sup:tt)*] [$($arg:tt)*] $p:ident : & $ty:ty $(, $($rest:tt)*)?) => {
        $crate::task!(@split $meta $vis $name $kind $out, $body [$($sup)* ($p : $ty)] [$($arg)*] $($($rest)*)?);
    };
    (@split $meta:tt $vis:tt $name:ident $kind:tt $out:ty, $body:block [$($sup:tt)*] [$($arg:tt)*] $p:ident : $ty:ty $(, $($rest:tt)*)?) => {
        $crate::task!(@split $meta $vis $name $kind $out, $body [$($sup)*] [$($arg)* ($p : $ty)] $($($rest)*)?);
    };
    (@split $meta:tt $vis:tt $name:ident $kind:tt $out:ty, $body:block [$($sup:tt)*] [$($arg:tt)*]) => {
        $crate::task!(@handle $meta $vis $name $kind $out, $body [$($sup)*] [$($arg)*]);
    };
    // The body as an invocation, its supplied parameters (holders) borrowed first.
    (@body [async_result $ok:ty, $err:ty] $body:block [$(($sup:ident : $sty:ty))*]) => {
        $crate::task::Invocation::Async(::std::boxed::Box::pin(async move {
            $(let $sup: &$sty = <$sty as $crate::context::FromContext>::borrow(&$sup);)*
            let result: ::std::result::Result<$ok, $err> = async move $body.await;
            result.map_err($crate::task::TaskError::from_error)
        }))
    };
    (@body [async_value $ret:ty] $body:block [$(($sup:ident : $sty:ty))*]) => {
        $crate::task::Invocation::Async(::std::boxed::Box::pin(async move {
            $(let $sup: &$sty = <$sty as $crate::context::FromContext>::borrow(&$sup);)*
            let value: $ret = async move $body.await;
            Ok(value)
        }))
    };
    (@body [blocking_result $ok:ty, $err:ty] $body:block [$(($sup:ident : $sty:ty))*]) => {
        $crate::task::Invocation::Blocking(::std::boxed::Box::new(move || {
            $(let $sup: &$sty = <$sty as $crate::context::FromContext>::borrow(&$sup);)*
            #[allow(clippy::redundant_closure_call)]
            let result: ::std::result::Result<$ok, $err> = (move || $body)();
            result.map_err($crate::task::TaskError::from_error)
        }))
    };
    (@body [blocking_value $ret:ty] $body:block [$(($sup:ident : $sty:ty))*]) => {
        $crate::task::Invocation::Blocking(::std::boxed::Box::new(move || {
            $(let $sup: &$sty = <$sty as $crate::context::FromContext>::borrow(&$sup);)*
            #[allow(clippy::redundant_closure_call)]
            let value: $ret = (move || $body)();
            Ok(value)
        }))
    };
    // A plain task: only arguments.
    (@handle [$(#[$meta:meta])*] [$vis:vis] $name:ident $kind:tt $out:ty, $body:block [] [$(($arg:ident : $ty:ty))*]) => {
        $crate::task!(@struct [$(#[$meta])*] [$vis] $name $out [$(($arg : $ty))*] {
            #[allow(unused_parens)]
            fn invoke(args: Self::Args) -> $crate::task::Invocation<Self::Output> {
                let ($($arg,)*) = args;
                $crate::task!(@body $kind $body [])
            }
        });
    };
    // A task that takes a context or state besides its arguments.
    (@handle [$(#[$meta:meta])*] [$vis:vis] $name:ident $kind:tt $out:ty, $body:block [$(($sup:ident : $sty:ty))+] [$(($arg:ident : $ty:ty))*]) => {
        $crate::task!(@struct [$(#[$meta])*] [$vis] $name $out [$(($arg : $ty))*] {
            fn invoke(args: Self::Args) -> $crate::task::Invocation<Self::Output> {
                let _ = args;
                $crate::task::Invocation::Blocking(::std::boxed::Box::new(|| {
                    Err($crate::task::TaskError::new(concat!(
                        "task ", stringify!($name), " takes a TaskContext or worker state: \
                         only a worker runs it (Task::invoke_in)"
                    )))
                }))
            }

            #[allow(unused_parens)]
            fn invoke_in(
                args: Self::Args,
                context: &dyn Fn() -> $crate::context::TaskContext,
            ) -> $crate::task::Invocation<Self::Output> {
                let ($($arg,)*) = args;
                let context = context();
                $(
                    let $sup = match <$sty as $crate::context::FromContext>::supply(&context) {
                        Ok(holder) => holder,
                        Err(error) => {
                            return $crate::task::Invocation::Blocking(
                                ::std::boxed::Box::new(move || Err(error)),
                            )
                        }
                    };
                )+
                drop(context);
                $crate::task!(@body $kind $body [$(($sup : $sty))+])
            }

            fn states() -> ::std::vec::Vec<(::std::any::TypeId, &'static str)> {
                [$(<$sty as $crate::context::FromContext>::needs()),+]
                    .into_iter()
                    .flatten()
                    .collect()
            }
        });
    };
    // The handle: a unit struct implementing `Task` with the methods given, and `delayed`.
    (@struct [$(#[$meta:meta])*] [$vis:vis] $name:ident $out:ty [$(($arg:ident : $ty:ty))*] { $($methods:tt)* }) => {
        $(#[$meta])*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        $vis struct $name;

        impl $crate::task::Task for $name {
            const NAME: &'static str = stringify!($name);
            type Args = ($($ty,)*);
            type Output = $out;
            $($methods)*
        }

        impl $name {
            /// A lazy call of this task: sends nothing; submit it with the client's `persist`
            /// or `compute`. Each argument is a value, another task's `Delayed` result, or the
            /// key of a submitted task's result.
            #[allow(dead_code, clippy::too_many_arguments)]
            $vis fn delayed(
                self,
                $($arg: impl ::std::convert::Into<$crate::graph::Arg<$ty>>),*
            ) -> $crate::graph::Delayed<$out> {
                $crate::graph::Delayed::new(
                    <Self as $crate::task::Task>::NAME,
                    ::std::vec![$($crate::graph::Arg::<$ty>::erase(::std::convert::Into::into($arg))),*],
                )
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::task! {
        /// Test: sync, infallible.
        fn double(x: i64) -> i64 { x * 2 }
    }
    crate::task! {
        /// Test: sync, fallible, with an early return.
        fn checked(x: i64, limit: i64) -> Result<i64, String> {
            if x > limit {
                return Err(format!("{x} > {limit}"));
            }
            Ok(x)
        }
    }
    crate::task! {
        /// Test: a retryable error keeps its flag through the macro.
        fn flaky(x: i64) -> Result<i64, TaskError> {
            if x > 0 {
                return Err(TaskError::retryable("try again"));
            }
            Ok(x)
        }
    }
    crate::task! {
        /// Test: async.
        async fn later(x: u8) -> u8 { x }
    }

    /// Test: a worker state.
    struct Offset(i64);

    crate::task! {
        /// Test: takes its context and a state around its arguments.
        fn shifted(ctx: &crate::context::TaskContext, x: i64, offset: &crate::context::State<Offset>, y: i64) -> String {
            format!("{}#{}: {}", ctx.key(), ctx.attempt(), x + y + offset.0)
        }
    }
    crate::task! {
        /// Test: async, fallible, with a state only.
        async fn offset_by(offset: &crate::context::State<Offset>, x: i64) -> Result<i64, String> {
            if x < 0 {
                return Err(format!("{x} < 0"));
            }
            Ok(x + offset.0)
        }
    }

    fn context(states: crate::context::States) -> crate::context::TaskContext {
        use crate::context::{Secession, TaskContext, WorkerContext};
        let worker = WorkerContext::new("w", crate::Settings::default(), states);
        let key = crate::TaskKey::new("shifted-1").unwrap();
        TaskContext::new(key, 3, std::sync::Arc::new(worker), <dyn Secession>::none())
    }

    #[tokio::test]
    async fn bodies_take_their_context_and_state_by_reference() {
        let mut states = crate::context::States::new();
        states.insert(Offset(100));
        let ctx = context(states);
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ctx.clone()
        };
        assert_eq!(
            run_blocking(shifted::invoke_in((1, 2), &make)),
            Ok("shifted-1#3: 103".to_owned())
        );
        let Invocation::Async(fut) = offset_by::invoke_in((5,), &make) else {
            panic!("offset_by is async");
        };
        assert_eq!(fut.await, Ok(105));
        let Invocation::Async(fut) = offset_by::invoke_in((-1,), &make) else {
            panic!("offset_by is async");
        };
        assert_eq!(fut.await, Err(TaskError::new("-1 < 0")));
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Plain tasks never build a context.
        assert_eq!(run_blocking(double::invoke_in((2,), &make)), Ok(4));
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Without a worker, or without the state, the call fails and names what is missing.
        let err = run_blocking(shifted::invoke((1, 2))).unwrap_err();
        assert!(
            err.message().contains("shifted takes a TaskContext"),
            "{err}"
        );
        let bare = context(crate::context::States::new());
        let err = run_blocking(shifted::invoke_in((1, 2), &|| bare.clone())).unwrap_err();
        assert!(err.message().contains("Offset"), "{err}");
        // The handle takes the arguments only; the states are listed for the worker's check.
        assert!(shifted.delayed(1, 2).key().as_str().starts_with("shifted-"));
        let states = shifted::states();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].0, std::any::TypeId::of::<Offset>());
        assert!(double::states().is_empty());
    }

    fn run_blocking<T>(inv: Invocation<T>) -> Result<T, TaskError> {
        match inv {
            Invocation::Blocking(f) => f(),
            Invocation::Async(_) => panic!("expected a blocking invocation"),
        }
    }

    #[test]
    fn handles_carry_names_and_run_bodies() {
        assert_eq!(double::NAME, "double");
        assert_eq!(run_blocking(double::invoke((21,))), Ok(42));
        assert_eq!(run_blocking(checked::invoke((1, 2))), Ok(1));
        assert_eq!(
            run_blocking(checked::invoke((3, 2))),
            Err(TaskError::new("3 > 2"))
        );
        assert!(matches!(later::invoke((1,)), Invocation::Async(_)));
        let err = run_blocking(flaky::invoke((1,))).unwrap_err();
        assert!(err.is_retryable() && err.message() == "try again");
        assert!(!run_blocking(checked::invoke((3, 2)))
            .unwrap_err()
            .is_retryable());
        let lazy = checked.delayed(double.delayed(2), 10);
        assert!(lazy.key().as_str().starts_with("checked-"));
        assert_eq!(lazy.node().deps().len(), 1);
        assert!(later.delayed(1u8).key().as_str().starts_with("later-"));
    }
}
