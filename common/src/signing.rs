//! Message signing: HMAC-SHA256 over a message's body and the AMQP properties that matter, so
//! that workers run only what was published by someone holding a signing key.
//!
//! With `signing_keys` set, every publisher signs with the first key and puts the signature in
//! the [`SIGNATURE_HEADER`] header; workers verify it with every key in turn (key rotation: add
//! the new key *second* everywhere, then make it first, then drop the old one) before they
//! decode anything.
//!
//! Two kinds of message are signed ([`MessageKind`]), each in its own **domain**: the signed
//! input starts with bytes naming the kind, and each kind signs its own list of properties, so
//! that a signature made for one kind never verifies as the other (a task body copied from the
//! task queue and replayed to the broadcast exchange is refused). Every part is preceded by its
//! length as a big-endian `u64`, so that no two messages sign the same bytes; an absent property
//! signs as empty.
//!
//! - [`MessageKind::Task`], domain `rask task message v1\n`: the `message_id` property (the task
//!   key), the `type` property (the function name), and the body (the whole
//!   [`crate::TaskMessage`], arguments, dependencies and attempt count included). Not signed:
//!   the exchange and routing key (a delay queue changes them), the priority property (the
//!   body's own `priority` is signed), and the other headers, which dead-lettering adds to and
//!   `rask dead requeue` strips. The header is not `x-rask-*` on purpose: requeueing keeps it,
//!   so a requeued message still verifies.
//! - [`MessageKind::BroadcastRequest`], domain `rask broadcast request v1\n`: `message_id`,
//!   `type`, `correlation_id`, `reply_to` (where the answers go: a replay cannot redirect them),
//!   `expiration` and `timestamp` (how long the request is good for, from when: see
//!   [`BroadcastWindow`]), then the body.
//!
//! - [`MessageKind::Batch`], domain `rask task batch v1\n`: a batch message
//!   ([`crate::batch`]), signed as a whole like a task message (`message_id` is the batch key,
//!   `type` the function, the body holds every call's key and arguments). Its own domain, so
//!   that a batch never verifies as a single task nor a task as a batch.
//!
//! The header's value is the kind's scheme (`v1=` for tasks, `b1=` for broadcast requests, `c1=`
//! for batches)
//! followed by the 64 lowercase hex digits of the MAC: the prefix names what was signed, so that
//! a signature of the wrong kind is reported as such ([`Unverified::OtherKind`]) and another
//! scheme can be added without breaking these. Comparison is constant-time
//! ([`hmac::Mac::verify_slice`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use sha2::Sha256;

use crate::keys::push_hex;
use crate::settings::Settings;

/// The AMQP header holding a message's signature.
pub const SIGNATURE_HEADER: &str = "rask-signature";

/// Shortest signing key accepted (see [`Settings::signing_keys`]).
pub const MIN_KEY_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// What a signature is for. Each kind has its own domain, scheme and signed properties (see the
/// module docs): a signature never verifies as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A task message ([`crate::broker::publish_task`]).
    Task,
    /// A broadcast request (`rask run`, [`crate::ops::BroadcastRequest`]).
    BroadcastRequest,
    /// A batch message: many calls in one task message ([`crate::batch`]).
    Batch,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 3] = [
        MessageKind::Task,
        MessageKind::BroadcastRequest,
        MessageKind::Batch,
    ];

    /// The kind of a task message: [`MessageKind::Batch`] for a batch, else
    /// [`MessageKind::Task`].
    pub fn of_task(message: &crate::TaskMessage) -> Self {
        if message.is_batch() {
            MessageKind::Batch
        } else {
            MessageKind::Task
        }
    }

    /// The bytes every signed input of this kind starts with.
    fn domain(self) -> &'static [u8] {
        match self {
            MessageKind::Task => b"rask task message v1\n",
            MessageKind::BroadcastRequest => b"rask broadcast request v1\n",
            MessageKind::Batch => b"rask task batch v1\n",
        }
    }

    /// The prefix of this kind's header values.
    fn scheme(self) -> &'static str {
        match self {
            MessageKind::Task => "v1=",
            MessageKind::BroadcastRequest => "b1=",
            MessageKind::Batch => "c1=",
        }
    }

    /// The kind whose scheme starts `signature`, if any.
    fn of_signature(signature: &str) -> Option<MessageKind> {
        Self::ALL
            .into_iter()
            .find(|kind| signature.starts_with(kind.scheme()))
    }

    /// Feeds the signed input of a message of this kind (see the module docs) to `mac`.
    fn feed(self, mac: &mut HmacSha256, properties: &BasicProperties, body: &[u8]) {
        mac.update(self.domain());
        let mut part = |bytes: &[u8]| {
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        };
        part(short(properties.message_id().as_ref()).as_bytes());
        part(short(properties.kind().as_ref()).as_bytes());
        if self == MessageKind::BroadcastRequest {
            part(short(properties.correlation_id().as_ref()).as_bytes());
            part(short(properties.reply_to().as_ref()).as_bytes());
            part(short(properties.expiration().as_ref()).as_bytes());
            match properties.timestamp() {
                Some(seconds) => part(&seconds.to_be_bytes()),
                None => part(&[]),
            }
        }
        part(body);
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Task => "task message",
            MessageKind::BroadcastRequest => "broadcast request",
            MessageKind::Batch => "batch message",
        })
    }
}

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

/// Why a message does not verify (the reason a worker dead-letters or refuses it with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// The message has no signature header.
    Unsigned,
    /// The header is not a known scheme followed by 64 hex digits.
    Malformed,
    /// The signature is of another kind of message: `found` where `expected` was due (a
    /// replayed message, or one signed by a rask version that signed broadcast requests as
    /// task messages).
    OtherKind {
        /// The kind the message was delivered as.
        expected: MessageKind,
        /// The kind its signature is for.
        found: MessageKind,
    },
    /// No key makes the signature: forged, tampered with, or signed with a key this worker does
    /// not hold.
    Mismatch,
}

impl fmt::Display for Unverified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unverified::Unsigned => f.write_str(
                "message signature does not verify: the message is not signed (header rask-signature missing)",
            ),
            Unverified::Malformed => f.write_str(
                "message signature does not verify: the rask-signature header is malformed",
            ),
            Unverified::OtherKind { expected, found } => write!(
                f,
                "message signature does not verify: a {found} signature on a {expected} (a \
                 replayed message, or one from a rask version that signed broadcast requests as \
                 task messages)"
            ),
            Unverified::Mismatch => f.write_str(
                "message signature does not verify: forged, tampered with, or signed with an unknown key",
            ),
        }
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

    /// The header value signing a message of `kind` with `properties` and `body`, with the
    /// first key.
    pub fn signature(
        &self,
        kind: MessageKind,
        properties: &BasicProperties,
        body: &[u8],
    ) -> String {
        let mut mac = self.keys[0].mac.clone();
        kind.feed(&mut mac, properties, body);
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        let mut value = String::with_capacity(kind.scheme().len() + 64);
        value.push_str(kind.scheme());
        push_hex(&mut value, &tag);
        value
    }

    /// `properties` with the signature of a message of `kind` with them and `body` added to
    /// their headers. Set every signed property first (see the module docs).
    pub fn sign_properties(
        &self,
        kind: MessageKind,
        properties: BasicProperties,
        body: &[u8],
    ) -> BasicProperties {
        let signature = self.signature(kind, &properties, body);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(SIGNATURE_HEADER),
            AMQPValue::LongString(signature.into()),
        );
        properties.with_headers(headers)
    }

    /// Checks the signature a delivery carries in its headers against its properties and
    /// `body` as a message of `kind`, with every key.
    ///
    /// # Errors
    /// [`Unverified`] saying why it does not verify.
    pub fn verify_properties(
        &self,
        kind: MessageKind,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), Unverified> {
        let signature = properties
            .headers()
            .as_ref()
            .and_then(|h| header_text(h, SIGNATURE_HEADER))
            .ok_or(Unverified::Unsigned)?;
        let found = MessageKind::of_signature(&signature).ok_or(Unverified::Malformed)?;
        let tag = decode_hex(&signature[found.scheme().len()..]).ok_or(Unverified::Malformed)?;
        if found != kind {
            return Err(Unverified::OtherKind {
                expected: kind,
                found,
            });
        }
        let verified = self.keys.iter().any(|key| {
            let mut mac = key.mac.clone();
            kind.feed(&mut mac, properties, body);
            mac.verify_slice(&tag).is_ok()
        });
        if verified {
            Ok(())
        } else {
            Err(Unverified::Mismatch)
        }
    }
}

impl Signer {
    /// Checks the signature of a delivery from a task queue, which may be a task message or a
    /// batch message: verified as the kind its signature's scheme names, if that is one of the
    /// two. Returns that kind; the caller checks that the body decodes as that kind.
    ///
    /// # Errors
    /// [`Unverified`] saying why it does not verify (a broadcast signature is
    /// [`Unverified::OtherKind`]).
    pub fn verify_task_or_batch(
        &self,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<MessageKind, Unverified> {
        let kind = properties
            .headers()
            .as_ref()
            .and_then(|h| header_text(h, SIGNATURE_HEADER))
            .and_then(|signature| MessageKind::of_signature(&signature))
            .filter(|kind| *kind == MessageKind::Batch)
            .unwrap_or(MessageKind::Task);
        self.verify_properties(kind, properties, body)
            .map(|()| kind)
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

/// When a broadcast request may run: from its (signed) `timestamp` property, in whole seconds
/// since the Unix epoch, for its (signed) `expiration`, give or take [`BroadcastWindow::SKEW`]
/// between the publisher's clock and the worker's. A copy replayed later than that is refused,
/// whatever the broker's own expiry (which restarts on every publish) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastWindow {
    /// When the request was published, to the second.
    pub published: SystemTime,
    /// How long it is good for (the caller's timeout).
    pub lifetime: Duration,
}

/// Why a broadcast request is outside its window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfWindow {
    /// The `timestamp` or `expiration` property is missing or not a number.
    #[error("the request has no timestamp and expiration properties")]
    Unbounded,
    /// The request's window closed this long ago (a replay, or a clock that is behind).
    #[error("the request expired {0:?} ago (a replay, or the publisher's clock is behind)")]
    Expired(Duration),
    /// The request was published this far in the future (the publisher's clock is ahead).
    #[error("the request is dated {0:?} in the future (the publisher's clock is ahead)")]
    Future(Duration),
}

impl BroadcastWindow {
    /// How far apart the clocks of a publisher and a worker may be.
    pub const SKEW: Duration = Duration::from_secs(60);

    /// `properties` with the `timestamp` (now) and `expiration` (`lifetime`, in milliseconds)
    /// of a request published now for `lifetime`.
    pub fn stamp(properties: BasicProperties, lifetime: Duration) -> BasicProperties {
        let seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ms = lifetime.as_millis().max(1);
        properties
            .with_timestamp(seconds)
            .with_expiration(ms.to_string().as_str().into())
    }

    /// The window of a request with `properties`.
    ///
    /// # Errors
    /// [`OutOfWindow::Unbounded`] without a timestamp or a numeric expiration.
    pub fn of(properties: &BasicProperties) -> Result<Self, OutOfWindow> {
        let seconds = properties.timestamp().ok_or(OutOfWindow::Unbounded)?;
        let ms: u64 = properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok())
            .ok_or(OutOfWindow::Unbounded)?;
        Ok(BroadcastWindow {
            published: SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
            lifetime: Duration::from_millis(ms),
        })
    }

    /// Whether the window is open at `now`.
    ///
    /// # Errors
    /// [`OutOfWindow`] when it is not.
    pub fn check(&self, now: SystemTime) -> Result<(), OutOfWindow> {
        // The timestamp is truncated to the second: a request may look up to 1 s older.
        let closes = self.published + self.lifetime + Self::SKEW + Duration::from_secs(1);
        if let Ok(late) = now.duration_since(closes) {
            if !late.is_zero() {
                return Err(OutOfWindow::Expired(late));
            }
        }
        if let Ok(early) = self.published.duration_since(now + Self::SKEW) {
            if !early.is_zero() {
                return Err(OutOfWindow::Future(early));
            }
        }
        Ok(())
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

    /// Task message properties as `broker::task_properties` makes them.
    fn task(id: &str, function: &str) -> BasicProperties {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_type(function.into())
    }

    /// Broadcast request properties as `rask run` makes them.
    fn request(reply_to: &str) -> BasicProperties {
        let properties = BasicProperties::default()
            .with_message_id("c0ffee".into())
            .with_correlation_id("c0ffee".into())
            .with_type("ping".into())
            .with_reply_to(reply_to.into());
        BroadcastWindow::stamp(properties, Duration::from_secs(5))
    }

    fn signature(properties: &BasicProperties) -> Option<String> {
        header_text(properties.headers().as_ref()?, SIGNATURE_HEADER)
    }

    /// `properties` with the signature header set to `value`.
    fn with_signature(properties: &BasicProperties, value: &str) -> BasicProperties {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(SIGNATURE_HEADER),
            AMQPValue::LongString(value.into()),
        );
        properties.clone().with_headers(headers)
    }

    #[test]
    fn batches_sign_in_their_own_domain() {
        let signer = Signer::new(&[OLD]).unwrap();
        let properties = task("inc.batch-1", "inc");
        let as_batch = signer.sign_properties(MessageKind::Batch, properties.clone(), b"body");
        let as_task = signer.sign_properties(MessageKind::Task, properties, b"body");
        assert_eq!(
            signer.verify_task_or_batch(&as_batch, b"body"),
            Ok(MessageKind::Batch)
        );
        assert_eq!(
            signer.verify_task_or_batch(&as_task, b"body"),
            Ok(MessageKind::Task)
        );
        assert_eq!(
            signer.verify_properties(MessageKind::Task, &as_batch, b"body"),
            Err(Unverified::OtherKind {
                expected: MessageKind::Task,
                found: MessageKind::Batch,
            })
        );
        assert_eq!(
            signer.verify_task_or_batch(&as_batch, b"tampered"),
            Err(Unverified::Mismatch)
        );
        // The tags differ: the same body and properties sign differently per kind.
        let tag =
            |p: &BasicProperties| header_text(p.headers().as_ref().unwrap(), SIGNATURE_HEADER);
        assert_ne!(tag(&as_batch).unwrap()[3..], tag(&as_task).unwrap()[3..]);
    }

    #[test]
    fn no_keys_means_signing_is_off() {
        assert!(Signer::new::<&str>(&[]).is_none());
        assert!(Signer::from_settings(&Settings::default()).is_none());
    }

    #[test]
    fn task_signatures_verify_and_tampering_does_not() {
        let signer = Signer::new(&[OLD]).unwrap();
        let kind = MessageKind::Task;
        let signed = signer.sign_properties(kind, task("inc-1", "inc"), b"body");
        let value = signature(&signed).unwrap();
        assert!(value.starts_with("v1=") && value.len() == 67, "{value}");
        assert_eq!(signer.verify_properties(kind, &signed, b"body"), Ok(()));
        for (id, function, body) in [
            ("inc-2", "inc", &b"body"[..]),
            ("inc-1", "dec", b"body"),
            ("inc-1", "inc", b"bodY"),
            // Moving bytes between parts changes the lengths, hence the signed input.
            ("inc-1i", "nc", b"body"),
        ] {
            let moved = with_signature(&task(id, function), &value);
            assert_eq!(
                signer.verify_properties(kind, &moved, body),
                Err(Unverified::Mismatch),
                "{id} {function}"
            );
        }
        assert_eq!(
            signer.verify_properties(kind, &task("inc-1", "inc"), b"body"),
            Err(Unverified::Unsigned)
        );
        for bad in ["", "v1=", "v2=00", &value[3..], &format!("{value}0")] {
            assert_eq!(
                signer.verify_properties(kind, &with_signature(&signed, bad), b"body"),
                Err(Unverified::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn task_signatures_are_those_of_earlier_versions() {
        // HMAC-SHA256 under OLD of the domain and the length-prefixed parts, as rask wrote it
        // before broadcast requests had a domain of their own: task signatures did not change,
        // so a rolling upgrade keeps every queued task valid.
        let mut mac = HmacSha256::new_from_slice(OLD.as_bytes()).unwrap();
        mac.update(b"rask task message v1\n");
        for part in [&b"inc-1"[..], b"inc", b"body"] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        let mut expected = String::from("v1=");
        push_hex(&mut expected, &mac.finalize().into_bytes());
        let signer = Signer::new(&[OLD]).unwrap();
        let signed = signer.sign_properties(MessageKind::Task, task("inc-1", "inc"), b"body");
        assert_eq!(signature(&signed).unwrap(), expected);
    }

    #[test]
    fn a_signature_never_verifies_as_another_kind() {
        let signer = Signer::new(&[OLD]).unwrap();
        // The same properties and body, signed as each kind.
        let properties = request("amq.gen-caller");
        let body = b"a body";
        let as_task = signer.sign_properties(MessageKind::Task, properties.clone(), body);
        let as_request =
            signer.sign_properties(MessageKind::BroadcastRequest, properties.clone(), body);
        assert!(signature(&as_request).unwrap().starts_with("b1="));
        assert_eq!(
            signer.verify_properties(MessageKind::BroadcastRequest, &as_task, body),
            Err(Unverified::OtherKind {
                expected: MessageKind::BroadcastRequest,
                found: MessageKind::Task,
            })
        );
        assert_eq!(
            signer.verify_properties(MessageKind::Task, &as_request, body),
            Err(Unverified::OtherKind {
                expected: MessageKind::Task,
                found: MessageKind::BroadcastRequest,
            })
        );
        // Relabelling the scheme does not help: the domains differ.
        let relabelled = format!("b1={}", &signature(&as_task).unwrap()[3..]);
        assert_eq!(
            signer.verify_properties(
                MessageKind::BroadcastRequest,
                &with_signature(&as_task, &relabelled),
                body
            ),
            Err(Unverified::Mismatch)
        );
        let message = Unverified::OtherKind {
            expected: MessageKind::BroadcastRequest,
            found: MessageKind::Task,
        }
        .to_string();
        assert!(
            message.contains("a task message signature on a broadcast request"),
            "{message}"
        );
    }

    #[test]
    fn broadcast_requests_sign_where_answers_go_and_for_how_long() {
        let signer = Signer::new(&[OLD]).unwrap();
        let kind = MessageKind::BroadcastRequest;
        let signed = signer.sign_properties(kind, request("amq.gen-caller"), b"body");
        assert_eq!(signer.verify_properties(kind, &signed, b"body"), Ok(()));
        let tampered = [
            signed.clone().with_reply_to("amq.gen-attacker".into()),
            signed.clone().with_expiration("3600000".into()),
            signed
                .clone()
                .with_timestamp(signed.timestamp().unwrap() + 600),
            signed.clone().with_correlation_id("other".into()),
            signed.clone().with_type("info".into()),
        ];
        for properties in &tampered {
            assert_eq!(
                signer.verify_properties(kind, properties, b"body"),
                Err(Unverified::Mismatch),
                "{properties:?}"
            );
        }
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_accepts_any() {
        let old = Signer::new(&[OLD]).unwrap();
        let rotating = Signer::new(&[NEW, OLD]).unwrap();
        let new = Signer::new(&[NEW]).unwrap();
        for kind in MessageKind::ALL {
            let sign = |signer: &Signer| signer.sign_properties(kind, task("k", "f"), b"b");
            let (by_old, by_rotating) = (sign(&old), sign(&rotating));
            assert_eq!(signature(&by_rotating), signature(&sign(&new)));
            assert_eq!(rotating.verify_properties(kind, &by_old, b"b"), Ok(()));
            assert_eq!(
                new.verify_properties(kind, &by_old, b"b"),
                Err(Unverified::Mismatch)
            );
            assert_eq!(
                old.verify_properties(kind, &by_rotating, b"b"),
                Err(Unverified::Mismatch)
            );
        }
    }

    #[test]
    fn broadcast_windows_refuse_replays_and_bad_clocks() {
        let properties = request("q");
        let window = BroadcastWindow::of(&properties).unwrap();
        assert_eq!(window.lifetime, Duration::from_secs(5));
        let now = SystemTime::now();
        assert_eq!(window.check(now), Ok(()));
        // Within the lifetime and the allowed skew, either way.
        assert_eq!(window.check(now + Duration::from_secs(60)), Ok(()));
        assert_eq!(window.check(now - Duration::from_secs(59)), Ok(()));
        assert!(matches!(
            window.check(now + Duration::from_secs(120)),
            Err(OutOfWindow::Expired(_))
        ));
        assert!(matches!(
            window.check(now - Duration::from_secs(120)),
            Err(OutOfWindow::Future(_))
        ));
        let unbounded = BasicProperties::default().with_expiration("5000".into());
        assert_eq!(BroadcastWindow::of(&unbounded), Err(OutOfWindow::Unbounded));
        let unbounded = BasicProperties::default().with_timestamp(1);
        assert_eq!(BroadcastWindow::of(&unbounded), Err(OutOfWindow::Unbounded));
    }

    #[test]
    fn debug_shows_no_key() {
        let signer = Signer::new(&[OLD, NEW]).unwrap();
        let shown = format!("{signer:?}");
        assert_eq!(shown, "Signer { keys: 2 }");
    }
}
