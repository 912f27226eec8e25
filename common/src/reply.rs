//! Direct replies: a task's outcome sent straight to the client waiting for it, so that a
//! [`call`](../../rask/struct.Client.html#method.call) learns its value from the notification
//! itself instead of reading it from Redis after one.
//!
//! A client that calls a task names itself in the message ([`crate::TaskMessage::reply`], a
//! [`ReplyTo`]). The worker that stores the task's outcome adds, to the pipeline that stores it
//! and right after its write-once `SET`, one call of the [`REPLY_LUA`] script: it publishes the
//! outcome *as stored* (the first run's, whichever run this one is) on the client's channel,
//! [`crate::keys::Keys::reply_channel`], when it is at most [`REPLY_LIMIT`] bytes. The payload
//! is two MessagePack values back to back: the task's key (a string), then the stored outcome's
//! bytes as they are in Redis ([`crate::Outcome::encode`]).
//!
//! A reply is an optimization, never the only way: the outcome is also announced on the done
//! channel as always (after the reply, in the same pipeline), so a client that misses the reply
//! (an older worker that ignores the field, a larger outcome, a resubscription) reads the
//! outcome as before.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::keys::{Keys, TaskKey};

/// Largest stored outcome sent in a reply, in bytes; larger ones are read from Redis.
pub const REPLY_LIMIT: usize = 64 * 1024;

/// Longest reply id.
const MAX_LEN: usize = 64;

/// Publishes the outcome stored at `KEYS[1]` on channel `ARGV[1]`, after the key's MessagePack
/// encoding `ARGV[2]`, if it is at most `ARGV[3]` bytes. Returns 1 if it published, else 0. A
/// publish Redis refuses (an ACL without the reply channels) is not an error (`pcall`): a reply
/// is never worth failing the pipeline that stores results for.
pub const REPLY_LUA: &str = r"
local stored = redis.call('GET', KEYS[1])
if stored and #stored <= tonumber(ARGV[3]) then
  local sent = redis.pcall('PUBLISH', ARGV[1], ARGV[2] .. stored)
  if type(sent) == 'number' then return 1 end
end
return 0
";

/// Who to send a task's outcome to: the id of a client's reply channel, 1 to 64 characters of
/// `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ReplyTo(String);

impl ReplyTo {
    /// A fresh id (32 random hex digits), for one client.
    #[must_use]
    pub fn unique() -> Self {
        let mut id = String::with_capacity(32);
        crate::keys::push_hex(&mut id, uuid::Uuid::new_v4().as_bytes());
        ReplyTo(id)
    }

    /// `id` if it is a valid reply id.
    #[must_use]
    pub fn parse(id: &str) -> Option<Self> {
        let valid = !id.is_empty()
            && id.len() <= MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| ReplyTo(id.to_owned()))
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyTo({})", self.0)
    }
}

/// A body's `reply` field, read leniently: anything that is not a valid reply id (another
/// shape, a bad character, too long) reads as `None`, never as an undecodable message.
///
/// # Errors
/// Only those of the underlying format (a truncated body), never for the field's content.
pub fn lenient<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ReplyTo>, D::Error> {
    let value = rmpv::Value::deserialize(deserializer)?;
    Ok(value.as_str().and_then(ReplyTo::parse))
}

/// The call of [`REPLY_LUA`] that sends the outcome stored for `key` to `to` (to run after the
/// command that stores it, on the same connection). `EVAL`, not `EVALSHA`: Redis caches the
/// script by its digest, and a pipeline never meets `NOSCRIPT` (which would fail the commands
/// after it for nothing).
#[must_use]
pub fn command(keys: &Keys, key: &TaskKey, to: &ReplyTo) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(REPLY_LUA)
        .arg(1)
        .arg(keys.result(key))
        .arg(keys.reply_channel(to))
        .arg(encode_key(key))
        .arg(REPLY_LIMIT);
    cmd
}

/// `key` as a MessagePack string.
fn encode_key(key: &TaskKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.as_str().len() + 2);
    rmp::encode::write_str(&mut out, key.as_str()).expect("writing to a Vec cannot fail");
    out
}

/// A reply's key and stored outcome bytes, or `None` if `payload` is not a reply.
#[must_use]
pub fn decode(payload: &[u8]) -> Option<(TaskKey, &[u8])> {
    let mut rest = payload;
    let len = rmp::decode::read_str_len(&mut rest).ok()?;
    let len = usize::try_from(len).ok()?;
    if rest.len() < len {
        return None;
    }
    let (key, outcome) = rest.split_at(len);
    let key = TaskKey::new(std::str::from_utf8(key).ok()?).ok()?;
    Some((key, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_ids_are_checked_and_fresh_ones_differ() {
        let a = ReplyTo::unique();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a, ReplyTo::unique());
        assert_eq!(ReplyTo::parse(a.as_str()), Some(a));
        for bad in ["", "a:b", "a b", "rask:done", &"x".repeat(65)] {
            assert_eq!(ReplyTo::parse(bad), None, "{bad:?}");
        }
        assert!(ReplyTo::parse(&"x".repeat(64)).is_some());
    }

    #[test]
    fn a_reply_payload_is_the_key_then_the_outcome() {
        let key = TaskKey::unique("inc");
        let outcome = crate::Outcome::Value(vec![0x2a]).encode().unwrap();
        let mut payload = encode_key(&key);
        payload.extend_from_slice(&outcome);
        let (read, bytes) = decode(&payload).unwrap();
        assert_eq!(read, key);
        assert_eq!(bytes, outcome.as_slice());
        // Not a reply: a done announcement (an array), a truncated key, a bad key.
        let announced = rmp_serde::to_vec(&vec![key.as_str()]).unwrap();
        assert!(decode(&announced).is_none());
        assert!(decode(&payload[..10]).is_none());
        let mut bad = Vec::new();
        rmp::encode::write_str(&mut bad, "no spaces allowed").unwrap();
        assert!(decode(&bad).is_none());
    }

    #[test]
    fn a_malformed_reply_field_reads_as_none() {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "lenient")]
            reply: Option<ReplyTo>,
        }
        let read = |value: rmpv::Value| {
            let map = rmpv::Value::Map(vec![("reply".into(), value)]);
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, &map).unwrap();
            rmp_serde::from_slice::<Body>(&bytes).unwrap().reply
        };
        assert_eq!(read("abc-1".into()), ReplyTo::parse("abc-1"));
        assert_eq!(read("rask:done".into()), None);
        assert_eq!(read(7.into()), None);
        assert_eq!(read(rmpv::Value::Nil), None);
    }
}
