//! The inputs of a graph task: the stored results of its dependencies, put where the message's
//! placeholders are, or the `DependencyFailed` failure that replaces running it when one of them
//! failed.
//!
//! Reading: the graph tasks a worker holds read their inputs together, in one batched read
//! ([`InputReader`]: the reads asked for while one is in flight go out as the next one, a
//! pipeline of `MGET`s, which a Redis Cluster splits by slot), not one round trip per task.
//!
//! Splicing: each input's value is spliced into the arguments as its stored MessagePack bytes
//! ([`rask_common::splice`]): the value is borrowed from the stored outcome and copied once,
//! into the arguments; no value tree is built, nothing is decoded and encoded again.

use std::borrow::Cow;
use std::collections::HashMap;

use rask_common::{
    splice, FailureKind, Outcome, Store, StoredOutcome, TaskFailure, TaskKey, TaskMessage,
};
use tokio::sync::{mpsc, oneshot};

use crate::retry;

/// Most tasks whose inputs go in one batched read.
const READS_PER_BATCH: usize = 512;

/// Stored outcomes of some keys, in order (`None` where nothing is stored).
type Stored = Vec<Option<Vec<u8>>>;

/// Why a graph task's inputs are not ready to run it with.
pub(crate) enum Unresolved {
    /// The outcome to store instead of running it (an input failed or is missing).
    Failed(Outcome),
    /// Redis refused to read them, for a reason retrying cannot fix.
    Refused(rask_common::Error),
}

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

/// `message` with its inputs in place of the placeholders, ready to execute; or why not.
/// Plain tasks pass through borrowed; `message` itself is left as it is (a retry republishes it
/// with its placeholders).
pub(crate) async fn resolve<'m>(
    reader: &InputReader,
    worker: &str,
    message: &'m TaskMessage,
) -> Result<Cow<'m, TaskMessage>, Unresolved> {
    if message.deps.is_empty() {
        return Ok(Cow::Borrowed(message));
    }
    let stored = reader
        .read(&message.deps)
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
    let mut values: HashMap<&str, &[u8]> = HashMap::with_capacity(stored.len());
    for (key, bytes) in message.deps.iter().zip(&stored) {
        let Some(bytes) = bytes else {
            return Err(fail(format!(
                "input {key} has no stored result (it expired or was released before this task ran)"
            )));
        };
        let value = match StoredOutcome::decode(bytes) {
            Ok(StoredOutcome::Value(value)) => value,
            Ok(StoredOutcome::Failure(f)) if f.kind == FailureKind::DependencyFailed => {
                return Err(fail(f.message))
            }
            Ok(StoredOutcome::Failure(f)) => {
                return Err(fail(format!(
                    "root task {} (key {}) {}: {}",
                    f.task, f.key, f.kind, f.message
                )))
            }
            Err(e) => return Err(fail(format!("input {key} is not a stored outcome: {e}"))),
        };
        match splice::value_len(value) {
            Ok(len) if len == value.len() => {}
            Ok(_) => return Err(fail(format!("input {key} is not one MessagePack value"))),
            Err(e) => return Err(fail(format!("input {key} is not MessagePack: {e}"))),
        }
        values.insert(key.as_str(), value);
    }
    match splice::splice(&message.args, |key| values.get(key).copied()) {
        // The placeholders' message is kept for a retry; the rest is small (key, names).
        Ok(Some(args)) => Ok(Cow::Owned(TaskMessage {
            args,
            ..message.clone()
        })),
        // Nothing to splice; or malformed arguments, left to the registry, which reports them
        // as BadArguments.
        Ok(None) | Err(_) => Ok(Cow::Borrowed(message)),
    }
}
