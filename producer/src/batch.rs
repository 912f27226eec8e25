//! Packing calls into batch messages ([`rask_common::batch`]): consecutive calls of one
//! function, at most `size` per message and at most [`MAX_BYTES`] of arguments (a larger call
//! goes alone); a group of one is a plain task message; the batch message gets a key of its
//! own.
//!
//! - A map's calls ([`pack`]): each call gets its own key, of the shape an unbatched call's has,
//!   in one group per message ([`rask_common::call_keys`]: a random prefix per message, then the
//!   call's index), so that the message's task events are one record for all its calls.
//! - A graph's ready sources ([`pack_messages`]): messages already made, each keeping its own
//!   (content) key; consecutive ones that differ in nothing but key and arguments share a
//!   message. Their keys are of no group, so each call is recorded on its own.

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

/// `messages` (graph tasks ready to publish), with runs of consecutive ones that can share a
/// message packed into batch messages of at most `size(function)` calls and [`MAX_BYTES`] of
/// arguments. Messages share one when they differ only in key and arguments, and have no
/// inputs, no resources, no arguments by reference and are no hedge copy; the others are
/// left as they are, in order.
pub(crate) fn pack_messages(
    messages: Vec<TaskMessage>,
    size: impl Fn(&str) -> usize,
) -> Vec<TaskMessage> {
    let mut packed = Vec::with_capacity(messages.len());
    let mut run: Vec<TaskMessage> = Vec::new();
    let mut bytes = 0;
    for mut message in messages {
        let joins = run.first().is_some_and(|first| {
            run.len() < size(&first.function)
                && bytes + message.args.len() <= MAX_BYTES
                && same_but_key_and_args(first, &mut message)
        });
        if !joins {
            close(&mut run, &mut packed);
            bytes = 0;
        }
        if can_share(&message) {
            bytes += message.args.len();
            run.push(message);
        } else {
            packed.push(message);
        }
    }
    close(&mut run, &mut packed);
    packed
}

/// Whether `message` may be a call of a batch message (see [`pack_messages`]).
fn can_share(message: &TaskMessage) -> bool {
    message.deps.is_empty()
        && message.calls.is_empty()
        && message.args_ref.is_none()
        && message.resources.is_empty()
        && !message.hedge
}

/// Whether `a` and `b` are the same message but for their keys and arguments (`b` is given
/// back as it was).
fn same_but_key_and_args(a: &TaskMessage, b: &mut TaskMessage) -> bool {
    let key = std::mem::replace(&mut b.key, a.key.clone());
    let args = std::mem::replace(&mut b.args, a.args.clone());
    let same = a == b;
    b.key = key;
    b.args = args;
    same
}

/// Moves `run` to `packed`: as it is if one message, else as one batch message of its calls.
fn close(run: &mut Vec<TaskMessage>, packed: &mut Vec<TaskMessage>) {
    if run.len() <= 1 {
        packed.append(run);
        return;
    }
    let mut calls = Vec::with_capacity(run.len());
    let mut template = None;
    for mut message in run.drain(..) {
        let args = std::mem::take(&mut message.args);
        calls.push(Call {
            key: message.key.clone(),
            args,
        });
        template.get_or_insert(message);
    }
    let template = template.expect("a run of two or more");
    packed.push(TaskMessage {
        key: batch_key(&template.function),
        args: Vec::new(),
        calls,
        ..template
    });
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

    fn source(function: &str, i: u8) -> TaskMessage {
        TaskMessage::new(TaskKey::unique(function), function, vec![0x91, i])
    }

    /// Each message's calls' keys (or its own key, alone).
    fn keys_of(messages: &[TaskMessage]) -> Vec<Vec<TaskKey>> {
        messages
            .iter()
            .map(|m| match m.is_batch() {
                true => m.calls.iter().map(|c| c.key.clone()).collect(),
                false => vec![m.key.clone()],
            })
            .collect()
    }

    #[test]
    fn graph_sources_alike_share_messages_keeping_their_keys_and_order() {
        let urgent = |m: TaskMessage| TaskMessage { priority: 5, ..m };
        let input = TaskKey::unique("leaf");
        let messages = vec![
            source("leaf", 0),
            source("leaf", 1),
            source("leaf", 2),
            urgent(source("leaf", 3)),
            urgent(source("leaf", 4)),
            source("leaf", 5).with_deps(vec![input]),
            source("other", 6),
            source("leaf", 7),
        ];
        let keys: Vec<TaskKey> = messages.iter().map(|m| m.key.clone()).collect();
        let packed = pack_messages(messages, |_| 2);
        let expected: Vec<Vec<TaskKey>> = [&[0, 1][..], &[2], &[3, 4], &[5], &[6], &[7]]
            .iter()
            .map(|run| run.iter().map(|&i| keys[i].clone()).collect())
            .collect();
        assert_eq!(
            keys_of(&packed),
            expected,
            "runs of two at most, broken by any difference"
        );
        assert!(packed[0].key.as_str().starts_with("leaf.batch-"));
        assert_eq!(packed[0].calls[1].args, vec![0x91, 1]);
        assert!(packed[0].args.is_empty());
        assert_eq!(packed[2].priority, 5, "the batch keeps its calls' options");
        assert!(
            !packed[3].is_batch() && !packed[3].deps.is_empty(),
            "a task with inputs stays alone"
        );
        let unbatched = pack_messages(vec![source("leaf", 0), source("leaf", 1)], |_| 1);
        assert!(unbatched.iter().all(|m| !m.is_batch()));
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
