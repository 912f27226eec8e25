//! Packing a map's calls into batch messages ([`rask_common::batch`]): consecutive calls of one
//! function, at most `size` per message and at most [`MAX_BYTES`] of arguments (a larger call
//! goes alone); a group of one is a plain task message. Each call gets its own key, of the
//! shape an unbatched call's has, in one group per message ([`rask_common::call_keys`]: a
//! random prefix per message, then the call's index), so that the message's task events are
//! one record for all its calls; the batch message gets a key of its own.

use rask_common::batch::{batch_key, MAX_BYTES};
use rask_common::call_keys::BatchId;
use rask_common::message::Call;
use rask_common::{TaskKey, TaskMessage};

use crate::error::Result;

/// The messages for `args` (encoded calls of `function`), `size` calls per message at most,
/// in order; pushes each call's key to `keys` as it is taken. An error from `args` is yielded
/// as is (the calls taken with it in the same message are not published).
pub(crate) fn pack<'a>(
    function: &'a str,
    args: impl Iterator<Item = Result<Vec<u8>>> + 'a,
    size: usize,
    keys: &'a mut Vec<TaskKey>,
) -> impl Iterator<Item = Result<TaskMessage>> + 'a {
    let mut args = args.peekable();
    let size = size.max(1);
    std::iter::from_fn(move || {
        let mut calls: Vec<Call> = Vec::new();
        let mut bytes = 0;
        let id = BatchId::new();
        while calls.len() < size {
            if let Some(Ok(next)) = args.peek() {
                if !calls.is_empty() && bytes + next.len() > MAX_BYTES {
                    break;
                }
            }
            match args.next() {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(encoded)) => {
                    // Past the indexes a group can number, a random key (no group then).
                    let key = id
                        .call_key(function, calls.len())
                        .unwrap_or_else(|| TaskKey::unique(function));
                    keys.push(key.clone());
                    bytes += encoded.len();
                    calls.push(Call { key, args: encoded });
                }
            }
        }
        match calls.len() {
            0 => None,
            1 => {
                let Call { key, args } = calls.pop().expect("one call");
                Some(Ok(TaskMessage::new(key, function, args)))
            }
            _ => Some(Ok(TaskMessage::batch(batch_key(function), function, calls))),
        }
    })
}

#[cfg(test)]
mod tests {
    use rask_common::message::encode_value;

    use super::*;

    fn packed(n: i64, size: usize) -> (Vec<TaskMessage>, Vec<TaskKey>) {
        let mut keys = Vec::new();
        let args = (0..n).map(|i| Ok(encode_value(&(i,)).unwrap()));
        let messages = pack("inc", args, size, &mut keys)
            .collect::<Result<Vec<_>>>()
            .unwrap();
        (messages, keys)
    }

    #[test]
    fn calls_are_packed_in_order_with_their_own_keys() {
        let (messages, keys) = packed(7, 3);
        let sizes: Vec<usize> = messages.iter().map(|m| m.calls.len()).collect();
        assert_eq!(sizes, [3, 3, 0], "the last one alone is a plain message");
        let in_messages: Vec<&TaskKey> = messages
            .iter()
            .flat_map(|m| {
                if m.is_batch() {
                    m.calls.iter().map(|c| &c.key).collect::<Vec<_>>()
                } else {
                    vec![&m.key]
                }
            })
            .collect();
        assert_eq!(in_messages, keys.iter().collect::<Vec<_>>());
        assert_eq!(messages[1].calls[0].args, encode_value(&(3,)).unwrap());
        assert!(messages[0].key.as_str().starts_with("inc.batch-"));
        // Each message's calls are one group (one record of task events), groups differ.
        let groups: Vec<&str> = messages[..2]
            .iter()
            .map(|m| rask_common::call_keys::group_of(&m.calls).expect("a group"))
            .collect();
        assert_ne!(groups[0], groups[1]);
    }

    #[test]
    fn size_one_publishes_one_plain_message_per_call() {
        let (messages, keys) = packed(4, 1);
        assert_eq!(messages.len(), 4);
        assert!(messages.iter().all(|m| !m.is_batch()));
        let plain: Vec<&TaskKey> = messages.iter().map(|m| &m.key).collect();
        assert_eq!(plain, keys.iter().collect::<Vec<_>>());
    }

    #[test]
    fn large_calls_do_not_share_a_message() {
        let mut keys = Vec::new();
        let big = vec![0xc4; MAX_BYTES];
        let small = |n: u8| Ok(vec![0x91, n]);
        let args = [small(1), small(2), Ok(big.clone()), small(3)].into_iter();
        let messages = pack("echo", args, 100, &mut keys)
            .collect::<Result<Vec<_>>>()
            .unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].calls.len(), 2);
        assert_eq!(messages[1].args, big, "alone, as a plain message");
        assert_eq!(messages[2].args, vec![0x91, 3]);
        assert_eq!(keys.len(), 4);
    }
}
