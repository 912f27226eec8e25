//! Typed task definitions: the [`Task`] trait a handle implements, and the [`task!`](crate::task!)
//! macro that turns a plain function into such a handle.
//!
//! The same definition serves both sides: a producer uses the handle to submit with arguments and
//! a result type checked at compile time, a worker registers it to run the body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A function that workers can run, named and typed. Implemented by [`task!`](crate::task!).
pub trait Task: Send + Sync + 'static {
    /// The name the function is registered and called under.
    const NAME: &'static str;
    /// The arguments, as a tuple (`(i64,)` for one `i64`).
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// What the function returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Prepares a call of the body with `args`; the worker decides where it runs.
    fn invoke(args: Self::Args) -> Invocation<Self::Output>;
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
/// ```
/// rask_common::task! {
///     /// Adds one.
///     pub fn inc(x: i64) -> i64 { x + 1 }
/// }
/// rask_common::task! {
///     /// Parses a number, failing on bad input.
///     pub fn parse(text: String) -> Result<i64, std::num::ParseIntError> { text.trim().parse() }
/// }
/// use rask_common::Task;
/// assert_eq!(inc::NAME, "inc");
/// ```
#[macro_export]
macro_rules! task {
    ($(#[$meta:meta])* $vis:vis async fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> Result<$ok:ty, $err:ty> $body:block) => {
        $crate::task!(@handle [$(#[$meta])*] $vis $name [$($arg : $ty),*] $ok
            [$crate::task::Invocation::Async(::std::boxed::Box::pin(async move {
                let result: ::std::result::Result<$ok, $err> = async move $body.await;
                result.map_err($crate::task::TaskError::from_error)
            }))]);
    };
    ($(#[$meta:meta])* $vis:vis async fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $crate::task!(@handle [$(#[$meta])*] $vis $name [$($arg : $ty),*] $ret
            [$crate::task::Invocation::Async(::std::boxed::Box::pin(async move {
                let value: $ret = async move $body.await;
                Ok(value)
            }))]);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> Result<$ok:ty, $err:ty> $body:block) => {
        $crate::task!(@handle [$(#[$meta])*] $vis $name [$($arg : $ty),*] $ok
            [$crate::task::Invocation::Blocking(::std::boxed::Box::new(move || {
                #[allow(clippy::redundant_closure_call)]
                let result: ::std::result::Result<$ok, $err> = (move || $body)();
                result.map_err($crate::task::TaskError::from_error)
            }))]);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $crate::task!(@handle [$(#[$meta])*] $vis $name [$($arg : $ty),*] $ret
            [$crate::task::Invocation::Blocking(::std::boxed::Box::new(move || {
                #[allow(clippy::redundant_closure_call)]
                let value: $ret = (move || $body)();
                Ok(value)
            }))]);
    };
    (@handle [$(#[$meta:meta])*] $vis:vis $name:ident [$($arg:ident : $ty:ty),*] $out:ty [$invocation:expr]) => {
        $(#[$meta])*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        $vis struct $name;

        impl $crate::task::Task for $name {
            const NAME: &'static str = stringify!($name);
            type Args = ($($ty,)*);
            type Output = $out;
            #[allow(unused_parens)]
            fn invoke(args: Self::Args) -> $crate::task::Invocation<Self::Output> {
                let ($($arg,)*) = args;
                $invocation
            }
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
