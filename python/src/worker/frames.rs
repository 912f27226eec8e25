//! The frames between a Python worker and its child processes, over the child's stdin and
//! stdout pipes: one call at a time per child.
//!
//! Every frame is a 4-byte little-endian length, then that many bytes. A call: a 2-byte
//! little-endian name length, the function's name (UTF-8), then the task's arguments
//! (MessagePack). A reply: one tag byte, then for [`VALUE`] the result (MessagePack), for
//! [`ERROR`] the error as a MessagePack array `[type, message, traceback or nil, retryable]`.
//! A child writes one [`READY`] byte once it has imported its modules, before any frame.

use rask_worker::ForeignError;

/// The byte a child writes once it is ready for calls.
pub(crate) const READY: u8 = b'R';
/// The reply tag of a result.
pub(crate) const VALUE: u8 = 0;
/// The reply tag of an error the function raised.
pub(crate) const ERROR: u8 = 1;

/// Why a frame does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadFrame(pub(crate) String);

/// A call frame (length prefix included) of `name` with `args`.
pub(crate) fn call(name: &str, args: &[u8]) -> Vec<u8> {
    let name_len = u16::try_from(name.len()).expect("function names are under 64 KiB");
    let body_len = 2 + name.len() + args.len();
    let mut frame = Vec::with_capacity(4 + body_len);
    frame.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    frame.extend_from_slice(&name_len.to_le_bytes());
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(args);
    frame
}

/// The function name and arguments of a call frame's body (without its length prefix).
pub(crate) fn read_call(body: &[u8]) -> Result<(&str, &[u8]), BadFrame> {
    let Some((len, rest)) = body.split_first_chunk::<2>() else {
        return Err(BadFrame(format!("a call of {} bytes", body.len())));
    };
    let len = usize::from(u16::from_le_bytes(*len));
    if rest.len() < len {
        return Err(BadFrame(format!(
            "a name of {len} bytes in a call of {}",
            body.len()
        )));
    }
    let (name, args) = rest.split_at(len);
    let name = std::str::from_utf8(name)
        .map_err(|e| BadFrame(format!("a name that is not UTF-8: {e}")))?;
    Ok((name, args))
}

/// A reply frame (length prefix included) of a result.
pub(crate) fn value(result: &[u8]) -> Vec<u8> {
    reply(VALUE, result)
}

/// A reply frame (length prefix included) of an error.
pub(crate) fn error(error: &ForeignError) -> Vec<u8> {
    let fields = (
        &error.error_type,
        &error.message,
        &error.traceback,
        error.retryable,
    );
    let encoded = rmp_serde::to_vec(&fields).expect("strings and a bool encode");
    reply(ERROR, &encoded)
}

fn reply(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    let len = u32::try_from(1 + payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.push(tag);
    frame.extend_from_slice(payload);
    frame
}

/// The outcome in a reply frame's body (without its length prefix).
pub(crate) fn read_reply(mut body: Vec<u8>) -> Result<Result<Vec<u8>, ForeignError>, BadFrame> {
    match body.first() {
        Some(&VALUE) => {
            body.remove(0);
            Ok(Ok(body))
        }
        Some(&ERROR) => {
            let (error_type, message, traceback, retryable): (
                String,
                String,
                Option<String>,
                bool,
            ) = rmp_serde::from_slice(&body[1..])
                .map_err(|e| BadFrame(format!("an error that does not decode: {e}")))?;
            Ok(Err(ForeignError {
                error_type,
                message,
                traceback,
                retryable,
            }))
        }
        Some(tag) => Err(BadFrame(format!("a reply tagged {tag}"))),
        None => Err(BadFrame("an empty reply".into())),
    }
}
