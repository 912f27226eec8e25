//! The inputs of a graph task: the stored results of its dependencies, read in one batched read
//! (`MGET`) and put where the message's placeholders are, or the `DependencyFailed` failure
//! that replaces running it when one of them failed.

use std::borrow::Cow;
use std::collections::HashMap;

use rask_common::graph::substitute;
use rask_common::{FailureKind, Outcome, Store, TaskFailure, TaskMessage};

use crate::retry;

/// Why a graph task's inputs are not ready to run it with.
pub(crate) enum Unresolved {
    /// The outcome to store instead of running it (an input failed or is missing).
    Failed(Outcome),
    /// Redis refused to read them, for a reason retrying cannot fix.
    Refused(rask_common::Error),
}

/// `message` with its inputs in place of the placeholders, ready to execute; or why not.
/// Plain tasks pass through borrowed; `message` itself is left as it is (a retry republishes it
/// with its placeholders).
pub(crate) async fn resolve<'m>(
    store: &Store,
    worker: &str,
    message: &'m TaskMessage,
) -> Result<Cow<'m, TaskMessage>, Unresolved> {
    if message.deps.is_empty() {
        return Ok(Cow::Borrowed(message));
    }
    let stored = retry::until_ok("reading inputs", || store.get_outcomes(&message.deps))
        .await
        .map_err(Unresolved::Refused)?;
    let fail = |text: String| {
        Unresolved::Failed(Outcome::Failure(TaskFailure::of(
            message,
            FailureKind::DependencyFailed,
            text,
            worker,
        )))
    };
    let mut values: HashMap<&str, rmpv::Value> = HashMap::with_capacity(stored.len());
    for (key, bytes) in message.deps.iter().zip(stored) {
        let Some(bytes) = bytes else {
            return Err(fail(format!(
                "input {key} has no stored result (it expired or was released before this task ran)"
            )));
        };
        let value = match Outcome::decode(&bytes) {
            Ok(Outcome::Value(value)) => value,
            Ok(Outcome::Failure(f)) if f.kind == FailureKind::DependencyFailed => {
                return Err(fail(f.message))
            }
            Ok(Outcome::Failure(f)) => {
                return Err(fail(format!(
                    "root task {} (key {}) {}: {}",
                    f.task, f.key, f.kind, f.message
                )))
            }
            Err(e) => return Err(fail(format!("input {key} is not a stored outcome: {e}"))),
        };
        match rmpv::decode::read_value(&mut value.as_slice()) {
            Ok(value) => values.insert(key.as_str(), value),
            Err(e) => return Err(fail(format!("input {key} is not MessagePack: {e}"))),
        };
    }
    let mut args = match rmpv::decode::read_value(&mut message.args.as_slice()) {
        Ok(args) => args,
        // Left to the registry, which reports it as BadArguments.
        Err(_) => return Ok(Cow::Borrowed(message)),
    };
    substitute(&mut args, &|key| values.get(key).cloned());
    let mut bytes = Vec::with_capacity(message.args.len());
    if let Err(e) = rmpv::encode::write_value(&mut bytes, &args) {
        return Err(fail(format!("arguments do not re-encode: {e}")));
    }
    Ok(Cow::Owned(TaskMessage {
        args: bytes,
        ..message.clone()
    }))
}
