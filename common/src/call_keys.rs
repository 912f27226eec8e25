//! The keys of a batch message's calls (docs/protocol.md §4, §21): one random prefix per
//! message, then the call's index, so that one record of the whole batch can be found from
//! the key of any of its calls ([`crate::batch_events`]) instead of a record per call.
//!
//! A call key has the shape of every fresh key, `{function}-{32 hex digits}`: the first 28
//! digits (14 bytes) are random, the same for every call of the message, and the last 4 are
//! the call's index in the message (`0000`, `0001`, …). The 28 digits are the batch's
//! **group**: `{function}-{28 hex digits}`, the call key without its index.

use crate::keys::TaskKey;
use crate::message::Call;

/// Hex digits of the index at the end of a call key.
const INDEX_DIGITS: usize = 4;

/// Most calls one batch can number in its keys (the index is 4 hex digits).
pub const MAX_INDEXED: usize = 1 << 16;

/// The random part shared by the keys of one batch's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId([u8; 14]);

impl BatchId {
    /// A fresh id (random, from a UUID v4: over 100 random bits).
    pub fn new() -> Self {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id = [0; 14];
        id.copy_from_slice(&bytes[..14]);
        BatchId(id)
    }

    /// The key of call `index` of the batch of `function`; `None` from [`MAX_INDEXED`] on.
    pub fn call_key(&self, function: &str, index: usize) -> Option<TaskKey> {
        let index = u16::try_from(index).ok()?;
        let mut bytes = [0; 16];
        bytes[..14].copy_from_slice(&self.0);
        bytes[14..].copy_from_slice(&index.to_be_bytes());
        Some(TaskKey::named(function, &bytes))
    }
}

impl Default for BatchId {
    fn default() -> Self {
        Self::new()
    }
}

/// The group of `calls` (the first key without its index) if every call's key is the group
/// followed by its index, as [`BatchId::call_key`] makes them; `None` otherwise (a batch of
/// an older client, whose calls then get records of their own).
pub fn group_of(calls: &[Call]) -> Option<&str> {
    let (group, first) = split(calls.first()?.key.as_str())?;
    if first != 0 || calls.len() > MAX_INDEXED {
        return None;
    }
    let mut digits = String::with_capacity(INDEX_DIGITS);
    for (i, call) in calls.iter().enumerate().skip(1) {
        let key = call.key.as_str();
        digits.clear();
        push_index(&mut digits, i);
        let matches = key.len() == group.len() + INDEX_DIGITS
            && key.starts_with(group)
            && key.ends_with(digits.as_str());
        if !matches {
            return None;
        }
    }
    Some(group)
}

/// The group and index a key would have as a batch's call key: `None` when it cannot be one
/// (too short, not ending in 4 lowercase hex digits after 28 more). A plain task's fresh key
/// has this shape too: its group has no record, so it finds none.
pub fn split_call_key(key: &TaskKey) -> Option<(&str, usize)> {
    split(key.as_str())
}

/// The key of call `index` of `group`.
pub fn call_key_of(group: &str, index: usize) -> Option<TaskKey> {
    let mut key = String::with_capacity(group.len() + INDEX_DIGITS);
    key.push_str(group);
    push_index(&mut key, index);
    TaskKey::new(key).ok()
}

fn split(key: &str) -> Option<(&str, usize)> {
    // `-` then 28 hex digits of the group, then 4 of the index.
    const HEX: usize = 28 + INDEX_DIGITS;
    let at = key.len().checked_sub(HEX + 1)?;
    let tail = key.get(at..)?;
    let is_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if !tail.starts_with('-') || !tail.as_bytes()[1..].iter().all(is_hex) {
        return None;
    }
    let (group, index) = key.split_at(key.len() - INDEX_DIGITS);
    Some((group, usize::from_str_radix(index, 16).ok()?))
}

fn push_index(out: &mut String, index: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..INDEX_DIGITS).rev() {
        out.push(char::from(HEX[(index >> (shift * 4)) & 0xf]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(keys: &[TaskKey]) -> Vec<Call> {
        keys.iter()
            .map(|key| Call {
                key: key.clone(),
                args: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn call_keys_share_a_group_and_end_in_their_index() {
        let id = BatchId::new();
        let keys: Vec<TaskKey> = (0..300).map(|i| id.call_key("inc", i).unwrap()).collect();
        let all = calls(&keys);
        let group = group_of(&all).expect("a group");
        assert!(
            group.starts_with("inc-") && group.len() == 4 + 28,
            "{group}"
        );
        for (i, key) in keys.iter().enumerate() {
            // The shape of every fresh key.
            assert_eq!(key.as_str().len(), 4 + 32);
            assert_eq!(split_call_key(key), Some((group, i)));
            assert_eq!(call_key_of(group, i).as_ref(), Some(key));
        }
        assert_eq!(keys[255].as_str().get(32..), Some("00ff"));
        let other = calls(&[BatchId::new().call_key("inc", 0).unwrap()]);
        assert_ne!(group_of(&all[..1]), group_of(&other));
        assert!(id.call_key("inc", MAX_INDEXED).is_none());
    }

    #[test]
    fn other_keys_have_no_group() {
        let id = BatchId::new();
        let mut keys: Vec<TaskKey> = (0..3).map(|i| id.call_key("inc", i).unwrap()).collect();
        keys.swap(1, 2);
        assert_eq!(group_of(&calls(&keys)), None, "out of order");
        let random: Vec<TaskKey> = (0..3).map(|_| TaskKey::unique("inc")).collect();
        assert_eq!(group_of(&calls(&random)), None);
        assert_eq!(group_of(&[]), None);
        for key in [
            "order-12",
            "inc-XYZ",
            "x",
            "inc-0123456789abcdef0123456789abcdeF",
        ] {
            assert_eq!(split_call_key(&TaskKey::new(key).unwrap()), None, "{key}");
        }
    }
}
