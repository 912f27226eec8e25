//! Values by reference on the producer's side ([`rask_common::reference`]): which arguments leave
//! the message (longer than `blob_threshold` with a blob store: to it; else longer than
//! `inline_limit`: to Redis), storing them before their message is published, and reading
//! results that are references back from the blob store.
//!
//! A result read back from the blob store is checked against its reference as a worker checks
//! arguments (`worker/src/references.rs`): its length always, its digest only when messages
//! are signed (`signing_keys`). Objects are written whole under their digest (renamed into
//! place, or one `PUT`), so a partial object is never found under a name; without signing,
//! whoever can write the blob store or Redis can already change any result, and a second
//! digest per value (BLAKE3, about 0.17 ms per MiB, after the one that named the argument)
//! would only cost CPU.

use bytes::Bytes;
use rask_common::blobs::Blobs;
use rask_common::reference::{Location, Reference};
use rask_common::{Settings, Store, TaskKey, TaskMessage};

use crate::error::{Error, Result};

/// Where a producer keeps values that do not travel inline. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Keeper {
    store: Store,
    blobs: Option<Blobs>,
    inline_limit: usize,
    blob_threshold: usize,
    /// Whether results read from the blob store are checked against their digest, not only
    /// their length (with `signing_keys`, see the module docs).
    check_digests: bool,
}

impl Keeper {
    /// The keeper of `settings`: Redis, and the blob store of `blob_url` if it is set.
    ///
    /// # Errors
    /// [`Error::Common`] for a `blob_url` this build cannot use.
    pub(crate) fn new(store: Store, settings: &Settings) -> Result<Self> {
        Ok(Keeper {
            store,
            blobs: Blobs::from_settings(settings)?,
            inline_limit: settings.inline_limit,
            blob_threshold: settings.blob_threshold,
            check_digests: !settings.signing_keys.is_empty(),
        })
    }

    /// The blob store, if `blob_url` is set.
    pub(crate) fn blobs(&self) -> Option<&Blobs> {
        self.blobs.as_ref()
    }

    /// Takes the arguments out of `message` when they are too long to travel in it, setting its
    /// `args_ref`; returns them, to be [kept](Keeper::keep) before each publish.
    pub(crate) fn take_args(&self, message: &mut TaskMessage) -> Option<Bytes> {
        if message.args_ref.is_some() {
            return None;
        }
        let len = message.args.len();
        let location = if self.blobs.is_some() && len > self.blob_threshold {
            Location::Blob
        } else if self.inline_limit > 0 && len > self.inline_limit {
            Location::Store
        } else {
            return None;
        };
        let args = Bytes::from(std::mem::take(&mut message.args));
        message.args_ref = Some(Reference::to(&args, location));
        Some(args)
    }

    /// Stores `bytes`, which `reference` names, where it says.
    ///
    /// # Errors
    /// [`Error::Common`] if Redis or the blob store fails.
    pub(crate) async fn keep(&self, reference: &Reference, bytes: Bytes) -> Result<()> {
        match (reference.location, &self.blobs) {
            (Location::Store, _) => self.store.put_argument(&reference.digest, &bytes).await?,
            (Location::Blob, Some(blobs)) => blobs.put(&reference.digest, bytes).await?,
            (Location::Blob, None) => unreachable!("blob references are made with a blob store"),
        }
        Ok(())
    }

    /// The value a stored result `bytes` stands for: `bytes` themselves, or, for a result kept
    /// in the blob store ([`Reference::from_value_bytes`]), the bytes read from there and
    /// checked against the reference (their length; their digest too with `signing_keys`).
    ///
    /// # Errors
    /// [`Error::ResultGone`] when the blob is gone; [`Error::Common`] if the blob store fails,
    /// is not set, or holds other bytes.
    pub(crate) async fn resolve_result(&self, key: &TaskKey, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let Some(reference) = Reference::from_value_bytes(&bytes) else {
            return Ok(bytes);
        };
        let Some(blobs) = &self.blobs else {
            return Err(Error::Common(rask_common::Error::Settings(format!(
                "the result of {key} is kept in a blob store ({} bytes, {}), and this client's \
                 blob_url is not set",
                reference.len, reference.digest
            ))));
        };
        let Some(value) = blobs.get(&reference.digest).await? else {
            return Err(Error::ResultGone {
                key: key.clone(),
                digest: reference.digest.hex(),
            });
        };
        reference.check(&value, self.check_digests)?;
        Ok(Vec::from(value))
    }
}

/// The digests of the blob-store results among the stored outcomes of `keys` (read in one
/// batched read).
///
/// # Errors
/// [`Error::Common`] if Redis fails.
pub(crate) async fn blob_results(
    store: &Store,
    keys: &[TaskKey],
) -> Result<Vec<rask_common::reference::Digest>> {
    let stored = store.get_outcomes(keys).await?;
    Ok(stored
        .iter()
        .flatten()
        .filter_map(|bytes| match rask_common::Outcome::decode(bytes) {
            Ok(rask_common::Outcome::Value(value)) => Reference::from_value_bytes(&value),
            _ => None,
        })
        .filter(|r| r.location == Location::Blob)
        .map(|r| r.digest)
        .collect())
}
