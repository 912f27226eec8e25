//! The demo's tasks: what the stock worker runs for `rask demo`, as typed handles.

use rask_common::State;

use crate::image::{
    analyze_batch_with, merge, merge_summaries, BatchStats, ImageBatch, ImageError, LumaTable,
    Summary,
};

rask_common::task! {
    /// The demo's per-batch image computation: grayscale, blur, Sobel edges, histogram. Takes
    /// the worker's [`LumaTable`], built once per worker (`Registry::with_builtins` adds it).
    pub fn image_stats(luma: &State<LumaTable>, batch: ImageBatch) -> Result<BatchStats, ImageError> {
        analyze_batch_with(luma, &batch)
    }
}

#[cfg(feature = "blobs")]
rask_common::task! {
    /// [`image_stats`] of the batch stored at `url` (`file://…` or `s3://…`, MessagePack of an
    /// [`ImageBatch`]), read on the worker from the blob store (`rask demo --from URL`): the
    /// task message carries the URL, not the pixels.
    pub async fn image_stats_from(
        luma: &State<LumaTable>,
        ctx: &rask_common::TaskContext,
        url: String
    ) -> Result<BatchStats, ImageError> {
        let unreadable = |cause: String| ImageError::Unreadable { url: url.clone(), cause };
        let bytes = ctx
            .blob(&url)
            .map_err(|e| unreadable(e.to_string()))?
            .get()
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let batch: ImageBatch = rmp_serde::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        analyze_batch_with(luma, &batch)
    }
}

rask_common::task! {
    /// Reduces per-batch statistics to one summary.
    pub fn image_summary(stats: Vec<BatchStats>) -> Summary { merge(&stats) }
}

rask_common::task! {
    /// Reduces summaries of parts to the summary of the whole (for reduction trees).
    pub fn merge_image_summaries(parts: Vec<Summary>) -> Summary { merge_summaries(&parts) }
}
