//! Functions implemented outside Rust (Python, or any other language binding), served by the
//! same worker runtime as Rust tasks: registered by name with
//! [`Registry::with_foreign`](crate::Registry::with_foreign), they receive the task's arguments
//! as raw MessagePack and return the result as raw MessagePack, or a [`ForeignError`] (the error
//! the function raised: its type and message).
//!
//! Everything else is the runtime's, exactly as for a Rust task: graph inputs substituted before
//! the call, the result stored before the acknowledgement, retries of retryable errors, time
//! limits and force cancels, signatures checked at admission, the function in the worker's
//! advertised list, its metrics, and the drain on shutdown.
//!
//! A call is an async future run on the worker's runtime. At a time limit or a force cancel the
//! runtime drops it: the implementation must then stop the call (a binding running the function
//! in a child process kills that process), since its result is no longer wanted.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use rask_common::context::BoxFuture;
use rask_common::{Invocation, TaskContext, TaskError};

use crate::registry::{Callable, ErasedInvocation};

/// One call of a foreign function.
pub struct ForeignCall {
    /// The task's arguments, MessagePack as the producer encoded them (graph inputs already
    /// substituted): usually an array of the positional arguments.
    pub args: Vec<u8>,
    /// The run: the task's key, its attempt, the worker, its cancellation token.
    pub context: TaskContext,
}

/// An error a foreign function raised: stored on the task's future as a `Failed` failure whose
/// message reads `TYPE: MESSAGE` (then the traceback, if any), or retried when it is
/// [`ForeignError::retryable`] and the task's retry policy allows another attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignError {
    /// The error's type in its language (`ValueError`, `mymodule.QuotaExceeded`).
    pub error_type: String,
    /// The error's message.
    pub message: String,
    /// Where it was raised, for people (a Python traceback), if known.
    pub traceback: Option<String>,
    /// Whether another attempt may succeed (see [`TaskError::retryable`]).
    pub retryable: bool,
}

impl ForeignError {
    /// A (not retryable) error of type `error_type` with `message`, without a traceback.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        ForeignError {
            error_type: error_type.into(),
            message: message.into(),
            traceback: None,
            retryable: false,
        }
    }

    /// The error the runtime stores or retries.
    pub fn into_task_error(self) -> TaskError {
        let text = self.to_string();
        if self.retryable {
            TaskError::retryable(text)
        } else {
            TaskError::new(text)
        }
    }
}

impl fmt::Display for ForeignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        match &self.traceback {
            Some(traceback) if !traceback.is_empty() => write!(f, "\n\n{}", traceback.trim_end()),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for ForeignError {}

/// A function implemented outside Rust. Implementations are shared by every run (hence `&self`
/// and `Send + Sync`) and decide where the call runs (a thread, a child process, a remote
/// interpreter).
pub trait ForeignFunction: Send + Sync + 'static {
    /// Calls the function with `call`'s arguments: resolves to the result as MessagePack, or the
    /// error the function raised. Dropping the future means the result is no longer wanted (a
    /// time limit, a force cancel, a shutdown past its grace): the implementation should stop
    /// the call then.
    fn call(&self, call: ForeignCall) -> BoxFuture<'static, Result<Vec<u8>, ForeignError>>;
}

impl<F> ForeignFunction for F
where
    F: Fn(ForeignCall) -> BoxFuture<'static, Result<Vec<u8>, ForeignError>> + Send + Sync + 'static,
{
    fn call(&self, call: ForeignCall) -> BoxFuture<'static, Result<Vec<u8>, ForeignError>> {
        self(call)
    }
}

/// A registered foreign function, as the registry calls it.
pub(crate) struct Foreign(pub(crate) Arc<dyn ForeignFunction>);

impl Callable for Foreign {
    fn prepare(
        &self,
        args: &[u8],
        context: &(dyn Fn() -> TaskContext + Sync),
    ) -> Result<ErasedInvocation, String> {
        let call = self.0.call(ForeignCall {
            args: args.to_vec(),
            context: context(),
        });
        Ok(Invocation::Async(Box::pin(async move {
            call.await.map_err(ForeignError::into_task_error)
        })))
    }

    fn signature(&self) -> &'static str {
        "MessagePack (a foreign function decodes its own arguments)"
    }

    fn states(&self) -> Vec<(TypeId, &'static str)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_type_message_then_traceback() {
        let mut error = ForeignError::new("ValueError", "bad input 7");
        assert_eq!(error.to_string(), "ValueError: bad input 7");
        error.traceback = Some("Traceback (most recent call last):\n  ...\n".into());
        assert_eq!(
            error.to_string(),
            "ValueError: bad input 7\n\nTraceback (most recent call last):\n  ..."
        );
        assert!(!error.clone().into_task_error().is_retryable());
        error.retryable = true;
        assert!(error.into_task_error().is_retryable());
    }
}
