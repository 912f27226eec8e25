//! Values by reference ([`rask_common::reference`]) on the worker's side. Arguments passed by
//! reference are read from where the producer stored them (Redis, or the blob store), checked
//! against the reference, and put in the message the task runs with: called once per task,
//! before its graph inputs are resolved; a message without a reference passes through
//! borrowed, at the cost of one `Option` test. Results over `blob_threshold` are written to the
//! blob store (when `blob_url` is set) before their outcome, which then stores a reference
//! ([`keep_result`]): a worker killed mid-upload has stored no outcome, so no reference names a
//! missing or partial blob, and the redelivered task runs again.
//!
//! The checks: the length always; the digest (under the reference's hash function) when
//! messages are signed (the signature covers the reference, and the digest ties the bytes to it,
//! so a writer of Redis cannot swap them). Without signing, whoever can write Redis can already
//! write any result, and the digest is not computed a second time (BLAKE3 costs about 0.17 ms
//! per MiB).

use std::borrow::Cow;

use rask_common::blobs::Blobs;
use rask_common::reference::{Location, Reference};
use rask_common::{FailureKind, Outcome, Store, TaskFailure, TaskMessage};

use crate::retry;

/// Why a task's arguments are not there to run it with.
pub(crate) enum Unresolved {
    /// The outcome to store instead of running it: the arguments are gone (expired, purged) or
    /// are not what the reference names.
    Failed(Outcome),
    /// Redis or the blob store refused to read them, for a reason retrying cannot fix.
    Refused(rask_common::Error),
}

/// Where values by reference are kept.
pub(crate) struct Kept<'a> {
    /// Redis.
    pub(crate) store: &'a Store,
    /// The blob store, if `blob_url` is set.
    pub(crate) blobs: Option<&'a Blobs>,
    /// Longest result kept out of the blob store (`blob_threshold`).
    pub(crate) blob_threshold: usize,
}

/// `message` with its arguments in place, read from where they are kept if it carries a
/// reference; or why not. `message` itself is left as it is (a retry republishes it with its
/// reference).
pub(crate) async fn resolve<'m>(
    kept: &Kept<'_>,
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
    let what = "reading arguments";
    let bytes = match (reference.location, kept.blobs) {
        (Location::Store, _) => {
            retry::until_ok(what, || kept.store.get_argument(&reference.digest))
                .await
                .map_err(Unresolved::Refused)?
        }
        (Location::Blob, Some(blobs)) => retry::until_ok(what, || blobs.get(&reference.digest))
            .await
            .map_err(Unresolved::Refused)?
            .map(Vec::from),
        (Location::Blob, None) => {
            return Err(fail(format!(
                "its arguments are in a blob store ({} bytes, {}), and this worker's blob_url \
                 is not set",
                reference.len, reference.digest
            )))
        }
    };
    let Some(bytes) = bytes else {
        return Err(fail(format!(
            "its arguments ({} bytes, stored by reference as {}) are gone: they expired \
             (result_ttl), were released or were purged before the task ran",
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

/// `outcome`, its value written to the blob store first when it is longer than
/// `blob_threshold` (and `blob_url` is set), and replaced by a reference to it
/// ([`Reference::to_value_bytes`]); any other outcome as it is.
///
/// # Errors
/// The blob store's error when it refuses the write for a reason retrying cannot fix
/// (transient errors are retried with backoff meanwhile, nothing acknowledged).
pub(crate) async fn keep_result(
    kept: &Kept<'_>,
    message: &TaskMessage,
    outcome: Outcome,
) -> Result<Outcome, rask_common::Error> {
    let Some(blobs) = kept.blobs else {
        return Ok(outcome);
    };
    let value = match outcome {
        Outcome::Value(value) if value.len() > kept.blob_threshold => value,
        other => return Ok(other),
    };
    let reference = Reference::to(&value, Location::Blob);
    let bytes = bytes::Bytes::from(value);
    retry::until_ok("writing a result to the blob store", || {
        blobs.put(&reference.digest, bytes.clone())
    })
    .await?;
    tracing::debug!(key = %message.key, digest = %reference.digest, len = reference.len, "result kept in the blob store");
    Ok(Outcome::Value(reference.to_value_bytes()?))
}
