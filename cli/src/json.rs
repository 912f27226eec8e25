//! JSON on the command line, MessagePack on the wire: arguments in, results out.

use anyhow::{Context, Result};
use rmpv::Value;

/// Encodes JSON arguments as the MessagePack tuple (array) a task takes.
pub(crate) fn encode_args(args: &[serde_json::Value]) -> Result<Vec<u8>> {
    rmp_serde::to_vec(args).context("encoding arguments")
}

/// Parses command-line arguments, each one JSON value.
pub(crate) fn parse_args(args: &[String]) -> Result<Vec<serde_json::Value>> {
    args.iter()
        .enumerate()
        .map(|(i, a)| {
            serde_json::from_str(a).with_context(|| {
                format!(
                    "argument {} ({a:?}) is not JSON; quote text as '\"{a}\"'",
                    i + 1
                )
            })
        })
        .collect()
}

/// A MessagePack value as JSON: binary becomes an array of byte values, non-text map keys
/// become their JSON text.
pub(crate) fn to_json(value: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => J::from(n),
            (None, Some(n)) => J::from(n),
            (None, None) => J::Null,
        },
        Value::F32(f) => J::from(f64::from(f)),
        Value::F64(f) => J::from(f),
        Value::String(s) => J::String(s.into_str().unwrap_or_default()),
        Value::Binary(bytes) => J::Array(bytes.into_iter().map(J::from).collect()),
        Value::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.into_str().unwrap_or_default(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(_, bytes) => J::Array(bytes.into_iter().map(J::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_common_values() {
        let args = parse_args(&[
            "41".into(),
            "\"x\"".into(),
            "[1,2.5]".into(),
            "{\"a\":null}".into(),
        ])
        .unwrap();
        let bytes = encode_args(&args).unwrap();
        let value: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(to_json(value), serde_json::Value::Array(args));
    }

    #[test]
    fn bad_json_names_the_argument() {
        let err = parse_args(&["hello".into()]).unwrap_err().to_string();
        assert!(err.contains("argument 1") && err.contains("hello"), "{err}");
    }
}
