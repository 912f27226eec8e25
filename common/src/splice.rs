//! Graph inputs spliced into a task's arguments as raw MessagePack bytes.
//!
//! A graph task's arguments hold a placeholder ([`DEPENDENCY_EXT`]) where each input goes; its
//! inputs are stored as encoded values. Splicing walks the argument bytes once, without building
//! a value tree, and copies them to a new buffer with each placeholder replaced by the bytes of
//! its input: MessagePack arrays and maps count items, not bytes, so nothing around a
//! placeholder changes. Placeholders inside a spliced input are left as they are (inputs are
//! values, not arguments). The walk is iterative: however deeply the arguments nest, it uses no
//! stack; the depth limit is the decoder's job when the function's arguments are decoded
//! ([`crate::message::decode_args`]).

use crate::graph::DEPENDENCY_EXT;

/// Why bytes are not one well-formed MessagePack value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MessagePack at byte {at}: {what}")]
pub struct Malformed {
    /// Offset of the item that could not be read.
    pub at: usize,
    /// What is wrong there.
    pub what: &'static str,
}

/// One MessagePack item's head: its length in bytes (the items it contains excluded), how many
/// items it contains, and its extension type and data when it is an ext.
struct Item<'a> {
    len: usize,
    children: u64,
    ext: Option<(i8, &'a [u8])>,
}

/// Reads the head of the item at `at` in `bytes`.
fn item(bytes: &[u8], at: usize) -> Result<Item<'_>, Malformed> {
    let short = Malformed {
        at,
        what: "truncated",
    };
    let take = |from: usize, n: usize| -> Result<&[u8], Malformed> {
        bytes
            .get(from..from.checked_add(n).ok_or(short.clone())?)
            .ok_or(short.clone())
    };
    let uint = |n: usize| -> Result<usize, Malformed> {
        let b = take(at + 1, n)?;
        let mut v: u64 = 0;
        for byte in b {
            v = (v << 8) | u64::from(*byte);
        }
        usize::try_from(v).map_err(|_| Malformed {
            at,
            what: "length too large",
        })
    };
    let plain = |len: usize| Item {
        len,
        children: 0,
        ext: None,
    };
    let marker = *bytes.get(at).ok_or(short.clone())?;
    let found = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => plain(1),
        0x80..=0x8f => Item {
            len: 1,
            children: 2 * u64::from(marker & 0x0f),
            ext: None,
        },
        0x90..=0x9f => Item {
            len: 1,
            children: u64::from(marker & 0x0f),
            ext: None,
        },
        0xa0..=0xbf => plain(1 + usize::from(marker & 0x1f)),
        0xc4 | 0xd9 => plain(2 + uint(1)?),
        0xc5 | 0xda => plain(3 + uint(2)?),
        0xc6 | 0xdb => plain(5usize.saturating_add(uint(4)?)),
        0xcc | 0xd0 => plain(2),
        0xcd | 0xd1 => plain(3),
        0xca | 0xce | 0xd2 => plain(5),
        0xcb | 0xcf | 0xd3 => plain(9),
        0xdc => Item {
            len: 3,
            children: uint(2)? as u64,
            ext: None,
        },
        0xdd => Item {
            len: 5,
            children: uint(4)? as u64,
            ext: None,
        },
        0xde => Item {
            len: 3,
            children: 2 * uint(2)? as u64,
            ext: None,
        },
        0xdf => Item {
            len: 5,
            children: 2 * uint(4)? as u64,
            ext: None,
        },
        0xd4..=0xd8 | 0xc7..=0xc9 => {
            let (head, data_len) = match marker {
                0xd4 => (2, 1),
                0xd5 => (2, 2),
                0xd6 => (2, 4),
                0xd7 => (2, 8),
                0xd8 => (2, 16),
                0xc7 => (3, uint(1)?),
                0xc8 => (4, uint(2)?),
                _ => (6, uint(4)?),
            };
            let ty = take(at + head - 1, 1)?[0] as i8;
            let data = take(at + head, data_len)?;
            Item {
                len: head + data_len,
                children: 0,
                ext: Some((ty, data)),
            }
        }
        0xc1 => {
            return Err(Malformed {
                at,
                what: "reserved marker 0xc1",
            })
        }
    };
    take(at, found.len)?;
    Ok(found)
}

/// The length in bytes of the one value at the start of `bytes`.
///
/// # Errors
/// [`Malformed`] if `bytes` do not start with a whole value.
pub fn value_len(bytes: &[u8]) -> Result<usize, Malformed> {
    let mut at = 0;
    let mut remaining: u64 = 1;
    while remaining > 0 {
        remaining -= 1;
        let item = item(bytes, at)?;
        at += item.len;
        remaining = remaining.saturating_add(item.children);
    }
    Ok(at)
}

/// Whether `bytes` are exactly one well-formed MessagePack value.
pub fn is_one_value(bytes: &[u8]) -> bool {
    value_len(bytes) == Ok(bytes.len())
}

/// `args` (one MessagePack value) with every dependency placeholder whose key `input` knows
/// replaced by that input's bytes; `None` if there is no placeholder to replace (the arguments
/// are used as they are). Bytes after the value are kept.
///
/// # Errors
/// [`Malformed`] if `args` is not a well-formed value.
pub fn splice<'i>(
    args: &[u8],
    input: impl Fn(&str) -> Option<&'i [u8]>,
) -> Result<Option<Vec<u8>>, Malformed> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    let mut remaining: u64 = 1;
    while remaining > 0 {
        remaining -= 1;
        let item = item(args, at)?;
        if let Some((DEPENDENCY_EXT, key)) = item.ext {
            if let Some(value) = std::str::from_utf8(key).ok().and_then(&input) {
                let out = out.get_or_insert_with(|| Vec::with_capacity(args.len() + value.len()));
                out.extend_from_slice(&args[copied..at]);
                out.extend_from_slice(value);
                copied = at + item.len;
            }
        }
        at += item.len;
        remaining = remaining.saturating_add(item.children);
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&args[copied..]);
        out
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::placeholder;
    use crate::keys::TaskKey;
    use rmpv::Value;

    fn encode(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        bytes
    }

    /// Every kind of item, each size class of lengths included.
    fn every_kind() -> Vec<Value> {
        vec![
            Value::Nil,
            true.into(),
            5.into(),
            (-3).into(),
            (-100).into(),
            200.into(),
            70_000.into(),
            (-70_000).into(),
            (1_i64 << 40).into(),
            u64::MAX.into(),
            1.5_f32.into(),
            2.5_f64.into(),
            "short".into(),
            "x".repeat(40).into(),
            "y".repeat(300).into(),
            "z".repeat(70_000).into(),
            Value::Binary(vec![1; 10]),
            Value::Binary(vec![2; 300]),
            Value::Binary(vec![3; 70_000]),
            Value::Ext(7, vec![1]),
            Value::Ext(7, vec![1, 2]),
            Value::Ext(7, vec![1; 4]),
            Value::Ext(7, vec![1; 8]),
            Value::Ext(7, vec![1; 16]),
            Value::Ext(7, vec![1; 3]),
            Value::Ext(7, vec![1; 300]),
            Value::Ext(7, vec![1; 70_000]),
            Value::Array((0..20).map(Value::from).collect()),
            Value::Map(
                (0..20)
                    .map(|i| (Value::from(i), Value::from("v")))
                    .collect(),
            ),
            Value::Array((0..70_000).map(|_| Value::Nil).collect()),
        ]
    }

    #[test]
    fn lengths_of_every_kind_of_value() {
        for value in every_kind() {
            let bytes = encode(&value);
            assert_eq!(value_len(&bytes), Ok(bytes.len()), "{value:?}");
            assert!(is_one_value(&bytes));
            assert!(!is_one_value(&bytes[..bytes.len() - 1]), "{value:?}");
        }
        assert!(value_len(b"\xc1").is_err());
        assert!(value_len(b"").is_err());
        assert!(value_len(b"\xdd\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn splices_like_substituting_in_the_value_tree() {
        let a = TaskKey::new("inc-a").unwrap();
        let b = TaskKey::new("inc-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        let unknown = TaskKey::new("inc-unknown").unwrap();
        let inputs = [
            (a.clone(), Value::Array(vec![1.into(), "one".into()])),
            (b.clone(), Value::from("x".repeat(300))),
        ];
        let encoded: Vec<(TaskKey, Vec<u8>)> =
            inputs.iter().map(|(k, v)| (k.clone(), encode(v))).collect();
        let mut items = every_kind();
        items.extend([
            placeholder(&a),
            Value::Map(vec![(placeholder(&b), placeholder(&a))]),
            Value::Array(vec![placeholder(&b), placeholder(&unknown), 9.into()]),
        ]);
        let args = Value::Array(items);
        let spliced = splice(&encode(&args), |key| {
            encoded
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.as_slice())
        })
        .unwrap()
        .expect("placeholders replaced");
        let mut expected = args.clone();
        crate::graph::substitute(&mut expected, &|key| {
            inputs
                .iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.clone())
        });
        assert_eq!(
            rmpv::decode::read_value(&mut spliced.as_slice()).unwrap(),
            expected
        );
        assert!(is_one_value(&spliced));
    }

    #[test]
    fn arguments_without_known_placeholders_are_left_alone() {
        let args = encode(&Value::Array(vec![1.into(), Value::Ext(7, vec![0])]));
        assert_eq!(splice(&args, |_| Some(b"\x01".as_slice())), Ok(None));
        let other = encode(&Value::Array(vec![placeholder(
            &TaskKey::new("k").unwrap(),
        )]));
        assert_eq!(splice(&other, |_| None), Ok(None));
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let args = encode(&Value::Array(vec![1.into(), "two".into()]));
        assert!(splice(&args[..args.len() - 1], |_| None).is_err());
        assert!(splice(b"\x92\xc1\x01", |_| None).is_err());
    }
}
