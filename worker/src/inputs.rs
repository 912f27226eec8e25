//! The inputs of a graph task: the stored results of its dependencies, put where the message's
//! placeholders are, or the `DependencyFailed` failure that replaces running it when one of them
//! failed.
//!
//! Reading: the graph tasks a worker holds read their inputs together, in one batched read
//! ([`InputReader`]: the reads asked for while one is in flight go out as the next one, a
//! pipeline of `MGET`s, which a Redis Cluster splits by slot), not one round trip per task.
//!
//! Missing inputs (expired or released) are recomputed from their messages where these are
//! kept ([`crate::lineage`]); only an input gone with its message fails the task.
//!
//! Splicing: each input's value is spliced into the arguments as its stored MessagePack bytes
//! ([`rask_common::splice`]): the value is borrowed from the stored outcome and copied once,
//! into the arguments; no value tree is built, nothing is decoded and encoded again.
//!
//! Inputs kept in the blob store (results over `blob_threshold`, stored as a reference:
//! [`rask_common::reference::RESULT_REF_EXT`]) are read from it and spliced as the value they
//! stand for ([`read_blobs`]); inputs without one cost a look at their first bytes.

use std::borrow::Cow;
use std::collections::HashMap;

use rask_common::reference::{Digest, Location, Reference};
use rask_common::{
    splice, FailureKind, Outcome, Store, StoredOutcome, TaskFailure, TaskKey, TaskMessage,
};
use tokio::sync::{mpsc, oneshot};

use crate::lineage::{self, Recovery};
use crate::retry;
use crate::worker::Shared;

/// Most tasks whose inputs go in one batched read.
const READS_PER_BATCH: usize = 512;

/// Stored outcomes of some keys, in order (`None` where nothing is stored).
type Stored = Vec<Option<Vec<u8>>>;

/// Why a graph task's inputs are not ready to run it with.
pub(crate) enum Unresolved {
    /// The outcome to store instead of running it (an input failed, or is gone for good).
    Failed(Outcome),
    /// Redis refused to read them, for a reason retrying cannot fix.
    Refused(rask_common::Error),
    /// Inputs were gone and are being recomputed: the task waits for them as a record again;
    /// acknowledge its delivery without an outcome ([`crate::lineage`]).
    Waiting,
    /// Inputs were gone and publishing them again failed for a cause that may pass: requeue
    /// the delivery.
    Requeue,
}

/// What the stored inputs of a task make of it.
enum Spliced<'m> {
    /// Ready to execute (boxed: a message is large beside the other variants).
    Ready(Box<Cow<'m, TaskMessage>>),
    /// These inputs have no stored result.
    Missing(Vec<TaskKey>),
    /// An input failed: store this instead.
    Failed(Outcome),
    /// These inputs are kept in the blob store: read them, then splice again.
    InBlobs(Vec<(TaskKey, Reference)>),
}

/// Values of inputs read from the blob store, by digest.
type FromBlobs = HashMap<Digest, Vec<u8>>;

/// Reads of the inputs before a task whose missing inputs keep turning out stored when
/// relinked (a race with their own release, each time) is given up as missing.
const READS: usize = 3;

/// One task's read: its input keys, and where the stored outcomes go (`None`: the batched
/// read failed; the task reads alone, to get its own error).
struct Read {
    keys: Vec<TaskKey>,
    reply: oneshot::Sender<Option<Stored>>,
}

/// Reads the inputs of the graph tasks a worker holds in batches (see the module docs). Cheap
/// to share; its reading task ends when the reader is dropped.
pub(crate) struct InputReader {
    store: Store,
    reads: mpsc::UnboundedSender<Read>,
}

impl InputReader {
    /// A reader on `store`, its reading task spawned.
    pub(crate) fn new(store: Store) -> Self {
        let (reads, mut asked) = mpsc::unbounded_channel::<Read>();
        let reading = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(READS_PER_BATCH);
            while asked.recv_many(&mut batch, READS_PER_BATCH).await > 0 {
                // Handlers spawned with this one (deliveries that came together) ask next:
                // let them, so that their reads go in this batch rather than the next.
                tokio::task::yield_now().await;
                while batch.len() < READS_PER_BATCH {
                    match asked.try_recv() {
                        Ok(read) => batch.push(read),
                        Err(_) => break,
                    }
                }
                let keys: Vec<TaskKey> =
                    batch.iter().flat_map(|r| r.keys.iter().cloned()).collect();
                let read = retry::until_ok("reading inputs", || reading.get_outcomes(&keys)).await;
                match read {
                    Ok(stored) => {
                        let mut stored = stored.into_iter();
                        for read in batch.drain(..) {
                            let own = stored.by_ref().take(read.keys.len()).collect();
                            let _ = read.reply.send(Some(own));
                        }
                    }
                    Err(_) => {
                        for read in batch.drain(..) {
                            let _ = read.reply.send(None);
                        }
                    }
                }
            }
        });
        InputReader { store, reads }
    }

    /// The stored outcomes of `keys`, in order, read with the other tasks' inputs.
    ///
    /// # Errors
    /// The store's error, if it refuses the read for a reason retrying cannot fix.
    pub(crate) async fn read(&self, keys: &[TaskKey]) -> rask_common::Result<Stored> {
        let (reply, answer) = oneshot::channel();
        let asked = self.reads.send(Read {
            keys: keys.to_vec(),
            reply,
        });
        if asked.is_ok() {
            if let Ok(Some(stored)) = answer.await {
                return Ok(stored);
            }
        }
        // The batch failed (or the reader is gone): alone, this read gets its own answer.
        retry::until_ok("reading inputs", || self.store.get_outcomes(keys)).await
    }
}

/// `message` with its inputs in place of the placeholders, ready to execute; or why not. Inputs
/// found missing are recomputed from their messages where these are kept ([`crate::lineage`]).
/// Plain tasks pass through borrowed; `message` itself is left as it is (a retry republishes it
/// with its placeholders).
pub(crate) async fn resolve<'m>(
    shared: &Shared,
    message: &'m TaskMessage,
) -> Result<Cow<'m, TaskMessage>, Unresolved> {
    if message.deps.is_empty() {
        return Ok(Cow::Borrowed(message));
    }
    let mut missing = Vec::new();
    let mut from_blobs = FromBlobs::new();
    for _ in 0..READS {
        let stored = shared
            .inputs
            .read(&message.deps)
            .await
            .map_err(Unresolved::Refused)?;
        // Each pass that finds inputs in the blob store reads them (by digest: a second pass
        // finds them read), then splices again.
        let spliced = loop {
            match splice_inputs(&shared.id, message, &stored, &from_blobs) {
                Spliced::InBlobs(references) => {
                    read_blobs(shared, message, &references, &mut from_blobs).await?
                }
                spliced => break spliced,
            }
        };
        missing = match spliced {
            Spliced::Ready(ready) => return Ok(*ready),
            Spliced::Failed(outcome) => return Err(Unresolved::Failed(outcome)),
            Spliced::Missing(missing) => missing,
            Spliced::InBlobs(_) => unreachable!("the loop above reads them"),
        };
        let recovered = lineage::recover(shared, message, &missing)
            .await
            .map_err(Unresolved::Refused)?;
        match recovered {
            Recovery::Stored => continue,
            Recovery::Waiting => return Err(Unresolved::Waiting),
            Recovery::Requeue => return Err(Unresolved::Requeue),
            Recovery::Failed(outcome) => return Err(Unresolved::Failed(outcome)),
        }
    }
    let text = format!(
        "inputs {} have no stored result (they expired or were released before this task ran)",
        missing
            .iter()
            .map(TaskKey::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let failure = TaskFailure::of(message, FailureKind::DependencyFailed, text, &shared.id);
    Err(Unresolved::Failed(Outcome::Failure(failure)))
}

/// Reads the values of the inputs `references` names from the blob store into `from_blobs`,
/// checked against their references (the length; the digest too when messages are signed, as
/// for arguments by reference).
///
/// # Errors
/// [`Unresolved::Failed`] (`DependencyFailed`) when a value is gone or differs, or this worker
/// has no blob store; [`Unresolved::Refused`] when the store refuses for a reason retrying
/// cannot fix.
async fn read_blobs(
    shared: &Shared,
    message: &TaskMessage,
    references: &[(TaskKey, Reference)],
    from_blobs: &mut FromBlobs,
) -> Result<(), Unresolved> {
    let fail = |text: String| {
        let failure = TaskFailure::of(message, FailureKind::DependencyFailed, text, &shared.id);
        Unresolved::Failed(Outcome::Failure(failure))
    };
    let Some(blobs) = &shared.blobs else {
        let (key, _) = &references[0];
        return Err(fail(format!(
            "input {key} is kept in a blob store, and this worker's blob_url is not set"
        )));
    };
    let signed = shared.signer.is_some();
    let reads = references.iter().map(|(key, reference)| async move {
        let read = retry::until_ok("reading an input from the blob store", || {
            blobs.get(&reference.digest)
        })
        .await;
        (key, reference, read)
    });
    for (key, reference, read) in futures::future::join_all(reads).await {
        let Some(bytes) = read.map_err(Unresolved::Refused)? else {
            return Err(fail(format!(
                "input {key} ({} bytes, blob {}) is gone from the blob store (released, purged \
                 or expired)",
                reference.len, reference.digest
            )));
        };
        if let Err(e) = reference.check(&bytes, signed) {
            return Err(fail(format!("input {key} in the blob store: {e}")));
        }
        from_blobs.insert(reference.digest, Vec::from(bytes));
    }
    Ok(())
}

/// `message` with the `stored` outcomes of its inputs (in the order of its `deps`) spliced in,
/// those kept in the blob store taken from `from_blobs`.
fn splice_inputs<'m>(
    worker: &str,
    message: &'m TaskMessage,
    stored: &[Option<Vec<u8>>],
    from_blobs: &FromBlobs,
) -> Spliced<'m> {
    let fail = |text: String| {
        Spliced::Failed(Outcome::Failure(TaskFailure::of(
            message,
            FailureKind::DependencyFailed,
            text,
            worker,
        )))
    };
    let mut values: HashMap<&str, &[u8]> = HashMap::with_capacity(stored.len());
    let mut missing = Vec::new();
    let mut in_blobs = Vec::new();
    for (key, bytes) in message.deps.iter().zip(stored) {
        let Some(bytes) = bytes else {
            missing.push(key.clone());
            continue;
        };
        let value = match StoredOutcome::decode(bytes) {
            Ok(StoredOutcome::Value(value)) => value,
            Ok(StoredOutcome::Failure(f)) if f.kind == FailureKind::DependencyFailed => {
                return fail(f.message)
            }
            Ok(StoredOutcome::Failure(f)) => {
                return fail(format!(
                    "root task {} (key {}) {}: {}",
                    f.task, f.key, f.kind, f.message
                ))
            }
            Err(e) => return fail(format!("input {key} is not a stored outcome: {e}")),
        };
        // A value kept in the blob store: spliced as the value read from there.
        let value = match Reference::from_value_bytes(value) {
            Some(reference) if reference.location == Location::Blob => {
                match from_blobs.get(&reference.digest) {
                    Some(read) => read.as_slice(),
                    None => {
                        in_blobs.push((key.clone(), reference));
                        continue;
                    }
                }
            }
            _ => value,
        };
        match splice::value_len(value) {
            Ok(len) if len == value.len() => {}
            Ok(_) => return fail(format!("input {key} is not one MessagePack value")),
            Err(e) => return fail(format!("input {key} is not MessagePack: {e}")),
        }
        values.insert(key.as_str(), value);
    }
    if !missing.is_empty() {
        return Spliced::Missing(missing);
    }
    if !in_blobs.is_empty() {
        return Spliced::InBlobs(in_blobs);
    }
    match splice::splice(&message.args, |key| values.get(key).copied()) {
        // The placeholders' message is kept for a retry; the rest is small (key, names).
        Ok(Some(args)) => Spliced::Ready(Box::new(Cow::Owned(TaskMessage {
            args,
            ..message.clone()
        }))),
        // Nothing to splice; or malformed arguments, left to the registry, which reports them
        // as BadArguments.
        Ok(None) | Err(_) => Spliced::Ready(Box::new(Cow::Borrowed(message))),
    }
}
