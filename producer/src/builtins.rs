//! The functions every stock `rask-worker` runs, as typed handles to submit: rask's own (from
//! `rask-common`) and the demo's image tasks (from `rask-demo`), in one place as before.

pub use rask_common::builtins::*;
/// [`image_stats`] of a batch read on the worker from a blob store by URL (feature `blobs`).
#[cfg(feature = "blobs")]
pub use rask_demo::tasks::image_stats_from;
pub use rask_demo::tasks::{image_stats, image_summary, merge_image_summaries};
