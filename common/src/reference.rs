//! References: a large value kept once outside the task message and named by its content, so
//! that the message (which RabbitMQ stores on disk and copies to a worker) stays small.
//!
//! A task whose encoded arguments are longer than the `inline_limit` setting is published with
//! `args` empty and [`crate::TaskMessage::args_ref`] set: the arguments are stored first (before
//! the publish, so a worker never sees a reference to nothing), under a key made of their
//! SHA-256 digest ([`crate::Keys::argument`]), with the result TTL. The worker reads them before
//! running the task and checks them against the reference: their length always, their digest
//! when messages are signed (the signature covers the reference, so a writer of Redis cannot
//! swap the bytes it names). The format is in docs/protocol.md, "Values by reference".

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The SHA-256 digest of a value's bytes: its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits of the digest (as it appears in keys and object names).
    pub fn hex(&self) -> String {
        let mut text = String::with_capacity(64);
        crate::keys::push_hex(&mut text, &self.0);
        text
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            serde::de::Error::invalid_length(bytes.len(), &"a 32-byte SHA-256 digest")
        })?;
        Ok(Digest(array))
    }
}

/// Where the bytes a [`Reference`] names are kept.
///
/// Not `#[non_exhaustive]`: a reader must handle every location it can decode; a message naming
/// a location this build does not know does not decode (it is dead-lettered as malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Location {
    /// In the deployment's Redis, under [`crate::Keys::argument`] of the digest, for the result
    /// TTL.
    #[default]
    Store,
}

impl Location {
    fn is_store(&self) -> bool {
        *self == Location::Store
    }
}

/// A value kept outside the message: its digest, its length, where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// SHA-256 of the bytes.
    pub digest: Digest,
    /// Their length.
    pub len: u64,
    /// Where they are kept; not written for [`Location::Store`].
    #[serde(default, skip_serializing_if = "Location::is_store")]
    pub location: Location,
}

impl Reference {
    /// A reference to `bytes`, kept at `location`.
    pub fn to(bytes: &[u8], location: Location) -> Self {
        Reference {
            digest: Digest::of(bytes),
            len: bytes.len() as u64,
            location,
        }
    }

    /// Checks that `bytes` are what this reference names: their length, and their digest when
    /// `digest` is true.
    ///
    /// # Errors
    /// [`Error::ReferenceMismatch`] saying what differs.
    pub fn check(&self, bytes: &[u8], digest: bool) -> Result<()> {
        let mismatch = |what: String| Error::ReferenceMismatch {
            digest: self.digest,
            what,
        };
        if bytes.len() as u64 != self.len {
            return Err(mismatch(format!(
                "{} bytes where the reference says {}",
                bytes.len(),
                self.len
            )));
        }
        if digest {
            let found = Digest::of(bytes);
            if found != self.digest {
                return Err(mismatch(format!("the bytes found have digest {found}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256_in_hex() {
        assert_eq!(
            Digest::of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn references_round_trip_and_omit_the_default_location() {
        let r = Reference::to(b"payload", Location::Store);
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"location"));
        assert_eq!(rmp_serde::from_slice::<Reference>(&bytes).unwrap(), r);
    }

    #[test]
    fn a_digest_of_the_wrong_length_is_refused() {
        #[derive(Serialize)]
        struct Short {
            #[serde(with = "serde_bytes")]
            digest: Vec<u8>,
            len: u64,
        }
        let bytes = rmp_serde::to_vec_named(&Short {
            digest: vec![1; 31],
            len: 3,
        })
        .unwrap();
        assert!(rmp_serde::from_slice::<Reference>(&bytes).is_err());
    }

    #[test]
    fn check_compares_length_always_and_digest_when_asked() {
        let r = Reference::to(b"payload", Location::Store);
        assert!(r.check(b"payload", true).is_ok());
        assert!(r.check(b"payloa", false).is_err());
        // Same length, other bytes: only the digest tells.
        assert!(r.check(b"PAYLOAD", false).is_ok());
        let error = r.check(b"PAYLOAD", true).unwrap_err();
        assert!(error.to_string().contains("digest"), "{error}");
    }
}
