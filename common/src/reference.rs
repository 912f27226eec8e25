//! References: a large value kept once outside the task message and named by its content, so
//! that the message (which RabbitMQ stores on disk and copies to a worker) stays small.
//!
//! A task whose encoded arguments are longer than the `inline_limit` setting is published with
//! `args` empty and [`crate::TaskMessage::args_ref`] set: the arguments are stored first (before
//! the publish, so a worker never sees a reference to nothing), under a key made of their
//! digest ([`crate::Keys::argument`]), with the result TTL. The worker reads them before
//! running the task and checks them against the reference: their length always, their digest
//! when messages are signed (the signature covers the reference, so a writer of Redis cannot
//! swap the bytes it names). The format is in docs/protocol.md, "Values by reference".
//!
//! Digests are BLAKE3 ([`HashFunction::Blake3`], about 0.17 ms per MiB here against SHA-256's
//! 0.6 with the CPU's SHA extensions); references made before BLAKE3 name SHA-256 digests, and
//! are read and checked as they say.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The hash function of a [`Digest`].
///
/// Not `#[non_exhaustive]`: a reader must check every function it can decode; a reference naming
/// a function this build does not know does not decode (its message is dead-lettered as
/// malformed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HashFunction {
    /// SHA-256: what references named before BLAKE3, and what a reference without a `hash`
    /// field names.
    #[default]
    Sha256,
    /// BLAKE3 (256 bits): what [`Digest::of`] computes.
    Blake3,
}

impl HashFunction {
    fn is_sha256(&self) -> bool {
        *self == HashFunction::Sha256
    }

    /// The digest of `bytes` under this function.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let bytes = match self {
            HashFunction::Sha256 => Sha256::digest(bytes).into(),
            HashFunction::Blake3 => *blake3::hash(bytes).as_bytes(),
        };
        Digest { hash: self, bytes }
    }
}

/// The digest of a value's bytes: its address. Named by its 64 hex digits alone (keys, object
/// names), whatever its function: two 256-bit digests of different functions do not meet.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    hash: HashFunction,
    bytes: [u8; 32],
}

impl Digest {
    /// The digest of `bytes`, as new references name them (BLAKE3).
    pub fn of(bytes: &[u8]) -> Self {
        HashFunction::Blake3.digest(bytes)
    }

    /// Its hash function.
    pub fn hash(&self) -> HashFunction {
        self.hash
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The 64 lowercase hex digits of the digest (as it appears in keys and object names).
    pub fn hex(&self) -> String {
        let mut text = String::with_capacity(64);
        crate::keys::push_hex(&mut text, &self.bytes);
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
        write!(f, "Digest({:?}, {})", self.hash, self.hex())
    }
}

/// The 32 bytes of a digest on the wire (a bin of 32; its function is the reference's `hash`).
#[derive(Clone, Copy)]
struct WireDigest([u8; 32]);

impl Serialize for WireDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(deserializer)?;
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"a 32-byte digest"))?;
        Ok(WireDigest(array))
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
    /// In the deployment's blob store (`blob_url`, [`crate::blobs`]), as the object named by
    /// the digest's hex.
    Blob,
}

impl Location {
    fn is_store(&self) -> bool {
        *self == Location::Store
    }
}

/// A value kept outside the message: its digest, its length, where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "WireReference", into = "WireReference")]
pub struct Reference {
    /// The digest of the bytes (with its function).
    pub digest: Digest,
    /// Their length.
    pub len: u64,
    /// Where they are kept.
    pub location: Location,
}

/// A [`Reference`] on the wire: a named map `{digest, len}`, then `location` unless it is
/// [`Location::Store`] and `hash` unless it is [`HashFunction::Sha256`] (so a reference of either
/// default is the bytes it always was).
#[derive(Serialize, Deserialize)]
struct WireReference {
    digest: WireDigest,
    len: u64,
    #[serde(default, skip_serializing_if = "Location::is_store")]
    location: Location,
    #[serde(default, skip_serializing_if = "HashFunction::is_sha256")]
    hash: HashFunction,
}

impl From<WireReference> for Reference {
    fn from(wire: WireReference) -> Self {
        Reference {
            digest: Digest {
                hash: wire.hash,
                bytes: wire.digest.0,
            },
            len: wire.len,
            location: wire.location,
        }
    }
}

impl From<Reference> for WireReference {
    fn from(reference: Reference) -> Self {
        WireReference {
            digest: WireDigest(reference.digest.bytes),
            len: reference.len,
            location: reference.location,
            hash: reference.digest.hash,
        }
    }
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
            let found = self.digest.hash.digest(bytes);
            if found != self.digest {
                return Err(mismatch(format!("the bytes found have digest {found}")));
            }
        }
        Ok(())
    }
}

/// The MessagePack ext type of a stored result that is a reference: an `Outcome::Value` whose
/// bytes are this ext, with the named-map encoding of a [`Reference`] as its data, stands for
/// the value kept where the reference says (a result over `blob_threshold`). `0x42` (`B`);
/// graph placeholders use `0x52` ([`crate::graph::DEPENDENCY_EXT`]).
pub const RESULT_REF_EXT: i8 = 0x42;

impl Reference {
    /// The stored value standing for the value this reference names (see [`RESULT_REF_EXT`]).
    ///
    /// # Errors
    /// [`Error::Encode`] (cannot happen: a reference is a few dozen bytes).
    pub fn to_value_bytes(&self) -> Result<Vec<u8>> {
        let data = rmp_serde::to_vec_named(self)?;
        // ext 8 or ext 16 (a reference is about 60 bytes).
        let mut out = Vec::with_capacity(data.len() + 4);
        match u8::try_from(data.len()) {
            Ok(len) => out.extend_from_slice(&[0xc7, len]),
            Err(_) => {
                out.push(0xc8);
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            }
        }
        out.push(RESULT_REF_EXT as u8);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The reference a stored value stands for, if it is one ([`RESULT_REF_EXT`]); `None` for
    /// any other value. Cheap: looks at the first bytes only unless they are the ext.
    pub fn from_value_bytes(bytes: &[u8]) -> Option<Reference> {
        // A reference's data is far shorter than 64 KiB: ext 8 (c7) or ext 16 (c8) only.
        let (len, start) = match bytes {
            [0xc7, len, ty, ..] if *ty as i8 == RESULT_REF_EXT => (usize::from(*len), 3),
            [0xc8, hi, lo, ty, ..] if *ty as i8 == RESULT_REF_EXT => {
                (usize::from(u16::from_be_bytes([*hi, *lo])), 4)
            }
            _ => return None,
        };
        if bytes.len() != start + len {
            return None;
        }
        rmp_serde::from_slice(&bytes[start..]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_blake3_and_sha256_is_still_known_in_hex() {
        assert_eq!(Digest::of(b"abc").hash(), HashFunction::Blake3);
        assert_eq!(
            Digest::of(b"abc").hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(
            HashFunction::Sha256.digest(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_reference_without_a_hash_field_names_sha256_and_is_checked_with_it() {
        // As references were written before BLAKE3: `{digest, len}`.
        #[derive(Serialize)]
        struct Old<'a> {
            #[serde(with = "serde_bytes")]
            digest: &'a [u8],
            len: u64,
        }
        let sha = HashFunction::Sha256.digest(b"payload");
        let old = rmp_serde::to_vec_named(&Old {
            digest: sha.as_bytes(),
            len: 7,
        })
        .unwrap();
        let r: Reference = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(r.digest, sha);
        assert!(r.check(b"payload", true).is_ok());
        assert!(r.check(b"PAYLOAD", true).is_err());
        // Written back, it is the same bytes; a BLAKE3 reference says so.
        assert_eq!(rmp_serde::to_vec_named(&r).unwrap(), old);
        let new = rmp_serde::to_vec_named(&Reference::to(b"payload", Location::Store)).unwrap();
        assert!(new.windows(6).any(|w| w == b"Blake3"));
        let back: Reference = rmp_serde::from_slice(&new).unwrap();
        assert_eq!(back.digest.hash(), HashFunction::Blake3);
        assert!(back.check(b"payload", true).is_ok());
    }

    #[test]
    fn references_round_trip_and_omit_the_default_location() {
        let r = Reference::to(b"payload", Location::Store);
        let bytes = rmp_serde::to_vec_named(&r).unwrap();
        assert!(!bytes.windows(8).any(|w| w == b"location"));
        assert_eq!(rmp_serde::from_slice::<Reference>(&bytes).unwrap(), r);
    }

    #[test]
    fn a_reference_naming_an_unknown_hash_function_does_not_decode() {
        #[derive(Serialize)]
        struct Forged<'a> {
            #[serde(with = "serde_bytes")]
            digest: &'a [u8],
            len: u64,
            hash: &'a str,
        }
        for hash in ["Md5", "", "blake3"] {
            let bytes = rmp_serde::to_vec_named(&Forged {
                digest: &[7; 32],
                len: 3,
                hash,
            })
            .unwrap();
            assert!(
                rmp_serde::from_slice::<Reference>(&bytes).is_err(),
                "{hash:?}"
            );
        }
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
    fn a_result_reference_round_trips_and_other_values_are_not_one() {
        let r = Reference::to(b"a large result", Location::Blob);
        let stored = r.to_value_bytes().unwrap();
        assert_eq!(Reference::from_value_bytes(&stored), Some(r));
        assert_eq!(
            Reference::from_value_bytes(&stored[..stored.len() - 1]),
            None
        );
        let plain = rmp_serde::to_vec(&serde_bytes::Bytes::new(&stored)).unwrap();
        assert_eq!(Reference::from_value_bytes(&plain), None);
        assert_eq!(Reference::from_value_bytes(b""), None);
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
