//! The tasks both examples share. In a real project this is a small library crate that the
//! producer and the worker both depend on: the worker registers the handles, the producer
//! submits through them, and the compiler checks argument and result types on both sides.
//!
//! A definition needs only `rask-common` (or `rask::task!`, the same macro re-exported).

use serde::{Deserialize, Serialize};

rask_common::task! {
    /// How many whitespace-separated words `text` has.
    pub(crate) fn word_count(text: String) -> usize {
        text.split_whitespace().count()
    }
}

rask_common::task! {
    /// Lines, words and characters of `text`, like `wc`: a result of your own type.
    pub(crate) fn text_stats(text: String) -> TextStats {
        TextStats {
            lines: text.lines().count(),
            words: text.split_whitespace().count(),
            chars: text.chars().count(),
        }
    }
}

rask_common::task! {
    /// Parses a whole number. Fails on anything else; the error text becomes the message of a
    /// `FailureKind::Failed` failure on the task's future.
    pub(crate) fn parse_number(text: String) -> Result<i64, std::num::ParseIntError> {
        text.trim().parse()
    }
}

/// What [`text_stats`] returns: any serde type works as arguments or result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TextStats {
    /// Number of lines.
    pub(crate) lines: usize,
    /// Number of whitespace-separated words.
    pub(crate) words: usize,
    /// Number of characters (Unicode scalar values).
    pub(crate) chars: usize,
}
