//! Arguments passed by reference ([`rask_common::reference`]): read from where the producer
//! stored them, checked against the reference, and put in the message the task runs with. Called
//! once per task, before its graph inputs are resolved; a message without a reference passes
//! through borrowed, at the cost of one `Option` test.
//!
//! The checks: the length always; the SHA-256 digest when messages are signed (the signature
//! covers the reference, and the digest ties the bytes to it, so a writer of Redis cannot swap
//! them). Without signing, whoever can write Redis can already write any result, and the digest
//! is not computed a second time (it costs about 0.6 ms per MiB).

use std::borrow::Cow;

use rask_common::reference::Location;
use rask_common::{FailureKind, Outcome, Store, TaskFailure, TaskMessage};

use crate::retry;

/// Why a task's arguments are not there to run it with.
pub(crate) enum Unresolved {
    /// The outcome to store instead of running it: the arguments are gone (expired, purged) or
    /// are not what the reference names.
    Failed(Outcome),
    /// Redis refused to read them, for a reason retrying cannot fix.
    Refused(rask_common::Error),
}

/// `message` with its arguments in place, read from the store if it carries a reference; or
/// why not. `message` itself is left as it is (a retry republishes it with its reference).
pub(crate) async fn resolve<'m>(
    store: &Store,
    worker: &str,
    message: &'m TaskMessage,
    signed: bool,
) -> Result<Cow<'m, TaskMessage>, Unresolved> {
    let Some(reference) = &message.args_ref else {
        return Ok(Cow::Borrowed(message));
    };
    let fail = |text: String| {
        Unresolved::Failed(Outcome::Failure(TaskFailure::of(
            message,
            FailureKind::BadArguments,
            text,
            worker,
        )))
    };
    let bytes = match reference.location {
        Location::Store => retry::until_ok("reading arguments", || {
            store.get_argument(&reference.digest)
        })
        .await
        .map_err(Unresolved::Refused)?,
    };
    let Some(bytes) = bytes else {
        return Err(fail(format!(
            "its arguments ({} bytes, stored by reference as {}) are gone: they expired \
             (result_ttl) or were purged before the task ran",
            reference.len, reference.digest
        )));
    };
    if let Err(e) = reference.check(&bytes, signed) {
        return Err(fail(format!("its arguments passed by reference: {e}")));
    }
    Ok(Cow::Owned(TaskMessage {
        args: bytes,
        ..message.clone()
    }))
}
