//! Message signing: HMAC-SHA256 over a task message's body and the AMQP properties that name it,
//! so that a worker runs only tasks published by someone holding a signing key.
//!
//! With `signing_keys` set, [`crate::broker::publish_task`] signs every task message with the
//! first key and puts the signature in the [`SIGNATURE_HEADER`] header; workers verify it with
//! every key in turn (key rotation: add the new key *second* everywhere, then make it first,
//! then drop the old one) before they decode anything, and dead-letter what does not verify.
//!
//! What is signed, in this order, each part preceded by its length as a big-endian `u64` so that
//! no two messages sign the same bytes: the `message_id` property (the task key), the `type`
//! property (the function name), and the body (the whole [`crate::TaskMessage`], arguments,
//! dependencies and attempt count included). Not signed: the exchange and routing key (a delay
//! queue changes them), the priority property (the body's own `priority` is signed), and the
//! other headers, which dead-lettering adds to and `rask dead requeue` strips. The header is not
//! `x-rask-*` on purpose: requeueing keeps it, so a requeued message still verifies.
//!
//! The header's value is `v1=` followed by the 64 lowercase hex digits of the MAC: the prefix
//! names the scheme, so that another can be added without breaking this one. Comparison is
//! constant-time ([`hmac::Mac::verify_slice`]).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use sha2::Sha256;

use crate::keys::push_hex;
use crate::settings::Settings;

/// The AMQP header holding a task message's signature.
pub const SIGNATURE_HEADER: &str = "rask-signature";

/// The prefix of the header's value: the signing scheme.
const SCHEME: &str = "v1=";

/// Bytes every signed input starts with, so that a MAC made for anything else never verifies.
const DOMAIN: &[u8] = b"rask task message v1\n";

/// Shortest signing key accepted (see [`Settings::signing_keys`]).
pub const MIN_KEY_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// One key, its HMAC state precomputed.
#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    mac: HmacSha256,
}

/// Signs with the first of its keys and verifies with any of them. Cheap to clone; its `Debug`
/// shows how many keys it has, never a key.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<[Key]>,
}

/// Why a message does not verify (the reason a worker dead-letters it with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// The message has no signature header.
    Unsigned,
    /// The header is not a `v1=` signature of 64 hex digits.
    Malformed,
    /// No key makes the signature: forged, tampered with, or signed with a key this worker does
    /// not hold.
    Mismatch,
}

impl fmt::Display for Unverified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unverified::Unsigned => {
                "message signature does not verify: the message is not signed (header rask-signature missing)"
            }
            Unverified::Malformed => {
                "message signature does not verify: the rask-signature header is malformed"
            }
            Unverified::Mismatch => {
                "message signature does not verify: forged, tampered with, or signed with an unknown key"
            }
        })
    }
}

impl Signer {
    /// A signer with `keys` (the first signs), or `None` when there are none: signing is off.
    /// Each key's bytes are its UTF-8 text as configured.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Option<Self> {
        let keys: Vec<Key> = keys
            .iter()
            .map(|k| {
                let secret = k.as_ref().as_bytes().to_vec();
                let mac = HmacSha256::new_from_slice(&secret).expect("HMAC takes keys of any size");
                Key { secret, mac }
            })
            .collect();
        (!keys.is_empty()).then(|| Signer { keys: keys.into() })
    }

    /// The signer of `settings` ([`Settings::signing_keys`]), or `None` when signing is off.
    pub fn from_settings(settings: &Settings) -> Option<Self> {
        Self::new(&settings.signing_keys)
    }

    /// The header value signing a message of `message_id`, `kind` and `body`, with the first key.
    pub fn sign(&self, message_id: &str, kind: &str, body: &[u8]) -> String {
        let tag = digest(&self.keys[0].mac, message_id, kind, body);
        let mut value = String::with_capacity(SCHEME.len() + 64);
        value.push_str(SCHEME);
        push_hex(&mut value, &tag);
        value
    }

    /// `properties` with the signature of `body` added to their headers (`message_id` and
    /// `type` are read from them, so set those first).
    pub fn sign_properties(&self, properties: BasicProperties, body: &[u8]) -> BasicProperties {
        let signature = self.sign(
            short(properties.message_id().as_ref()),
            short(properties.kind().as_ref()),
            body,
        );
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(SIGNATURE_HEADER),
            AMQPValue::LongString(signature.into()),
        );
        properties.with_headers(headers)
    }

    /// Checks the signature a delivery carries in its headers against its `message_id`, `type`
    /// and `body`, with every key.
    ///
    /// # Errors
    /// [`Unverified`] saying why it does not verify.
    pub fn verify_properties(
        &self,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), Unverified> {
        let signature = properties
            .headers()
            .as_ref()
            .and_then(|h| header_text(h, SIGNATURE_HEADER));
        self.verify(
            signature.as_deref(),
            short(properties.message_id().as_ref()),
            short(properties.kind().as_ref()),
            body,
        )
    }

    /// Checks `signature` (the header's value, if any) against `message_id`, `kind` and `body`.
    ///
    /// # Errors
    /// [`Unverified`] saying why it does not verify.
    pub fn verify(
        &self,
        signature: Option<&str>,
        message_id: &str,
        kind: &str,
        body: &[u8],
    ) -> Result<(), Unverified> {
        let signature = signature.ok_or(Unverified::Unsigned)?;
        let tag = signature
            .strip_prefix(SCHEME)
            .and_then(decode_hex)
            .ok_or(Unverified::Malformed)?;
        let verified = self.keys.iter().any(|key| {
            let mut mac = key.mac.clone();
            feed(&mut mac, message_id, kind, body);
            mac.verify_slice(&tag).is_ok()
        });
        if verified {
            Ok(())
        } else {
            Err(Unverified::Mismatch)
        }
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl PartialEq for Signer {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(other.keys.iter())
                .all(|(a, b)| a.secret == b.secret)
    }
}

impl Eq for Signer {}

/// The MAC of a message under the key of `mac`.
fn digest(mac: &HmacSha256, message_id: &str, kind: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = mac.clone();
    feed(&mut mac, message_id, kind, body);
    mac.finalize().into_bytes().into()
}

/// Feeds the signed input (see the module docs) to `mac`.
fn feed(mac: &mut HmacSha256, message_id: &str, kind: &str, body: &[u8]) {
    mac.update(DOMAIN);
    for part in [message_id.as_bytes(), kind.as_bytes(), body] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

/// 64 hex digits as 32 bytes.
fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut tag = [0u8; 32];
    for (byte, pair) in tag.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(tag)
}

/// A short string property's text, or `""` when absent.
fn short(value: Option<&ShortString>) -> &str {
    value.map_or("", ShortString::as_str)
}

/// The text of header `name`, if it is a string.
fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-key-0123456789abcdef";
    const NEW: &str = "new-key-0123456789abcdef";

    #[test]
    fn no_keys_means_signing_is_off() {
        assert!(Signer::new::<&str>(&[]).is_none());
        assert!(Signer::from_settings(&Settings::default()).is_none());
    }

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let signer = Signer::new(&[OLD]).unwrap();
        let signature = signer.sign("inc-1", "inc", b"body");
        assert!(
            signature.starts_with("v1=") && signature.len() == 67,
            "{signature}"
        );
        assert_eq!(
            signer.verify(Some(&signature), "inc-1", "inc", b"body"),
            Ok(())
        );
        for (id, kind, body) in [
            ("inc-2", "inc", &b"body"[..]),
            ("inc-1", "dec", b"body"),
            ("inc-1", "inc", b"bodY"),
            // Moving bytes between parts changes the lengths, hence the signed input.
            ("inc-1i", "nc", b"body"),
        ] {
            assert_eq!(
                signer.verify(Some(&signature), id, kind, body),
                Err(Unverified::Mismatch),
                "{id} {kind}"
            );
        }
        assert_eq!(
            signer.verify(None, "inc-1", "inc", b"body"),
            Err(Unverified::Unsigned)
        );
        for bad in [
            "",
            "v1=",
            "v2=00",
            &signature[3..],
            &format!("{signature}0"),
        ] {
            assert_eq!(
                signer.verify(Some(bad), "inc-1", "inc", b"body"),
                Err(Unverified::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_any() {
        let old = Signer::new(&[OLD]).unwrap();
        let rotating = Signer::new(&[NEW, OLD]).unwrap();
        let new = Signer::new(&[NEW]).unwrap();
        let by_old = old.sign("k", "f", b"b");
        let by_rotating = rotating.sign("k", "f", b"b");
        assert_eq!(by_rotating, new.sign("k", "f", b"b"));
        assert_eq!(rotating.verify(Some(&by_old), "k", "f", b"b"), Ok(()));
        assert_eq!(
            new.verify(Some(&by_old), "k", "f", b"b"),
            Err(Unverified::Mismatch)
        );
        assert_eq!(
            old.verify(Some(&by_rotating), "k", "f", b"b"),
            Err(Unverified::Mismatch)
        );
    }

    #[test]
    fn properties_carry_the_signature() {
        let signer = Signer::new(&[OLD]).unwrap();
        let properties = BasicProperties::default()
            .with_message_id("inc-1".into())
            .with_type("inc".into());
        let signed = signer.sign_properties(properties.clone(), b"body");
        assert_eq!(signer.verify_properties(&signed, b"body"), Ok(()));
        assert_eq!(
            signer.verify_properties(&properties, b"body"),
            Err(Unverified::Unsigned)
        );
        let renamed = signed.clone().with_message_id("inc-2".into());
        assert_eq!(
            signer.verify_properties(&renamed, b"body"),
            Err(Unverified::Mismatch)
        );
    }

    #[test]
    fn debug_shows_no_key() {
        let signer = Signer::new(&[OLD, NEW]).unwrap();
        let shown = format!("{signer:?}");
        assert_eq!(shown, "Signer { keys: 2 }");
    }
}
