//! # rask-demo
//!
//! The workload of `rask demo` (and of the notebook), apart from rask's core: it is an example
//! of what runs on rask, not part of how rask runs tasks. The stock worker registers its
//! [`tasks`] (`Registry::with_builtins`), and the `rask` library re-exports them under
//! `rask::builtins`, where they have always been.
//!
//! ## Layout
//! - [`image`]: the pure computation: generated image batches, their analysis, the reduction.
//! - [`tasks`]: `image_stats`, `image_summary` and `merge_image_summaries`, as typed task
//!   handles producers submit and workers register.

pub mod image;
pub mod tasks;

#[cfg(feature = "blobs")]
pub use tasks::image_stats_from;
pub use tasks::{image_stats, image_summary, merge_image_summaries};
