//! The demo workload: synthetic image batches, their analysis, and the reduction of results.
//!
//! This module owns the pure computation behind rask's demo, modelled on the classic Dask
//! workshop "process a set of image batches". [`generate_batch`] builds a batch of RGB8 scenes
//! deterministically from its id (no downloads, no files), [`analyze_batch`] runs a real
//! per-image pipeline on it (Rec. 601 grayscale, 3x3 Gaussian blur, Sobel edges, histogram), and
//! [`merge`] / [`merge_summaries`] reduce the per-batch [`BatchStats`] into one [`Summary`].
//! Nothing here does I/O or spawns tasks: the producer and the worker call it.
//!
//! [`LumaTable`] is the analysis' precomputation: the Rec. 601 products of every channel value,
//! which [`analyze_batch_with`] looks up instead of multiplying. A worker builds it once as its
//! state and shares it by reference with every `image_stats` task it runs.
//!
//! The analysis works in integers (luma in thousandths of a gray level) so results are
//! bit-identical on every machine, and the reduction sums integers, so it is exactly
//! associative: a tree of partial merges gives the same [`Summary`] as one flat merge.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Number of gray-level bins in every histogram: bin `i` counts gray levels `16*i ..= 16*i+15`.
pub const HISTOGRAM_BINS: usize = 16;

/// Sobel gradient magnitude, in gray levels, above which a pixel counts as an edge.
///
/// The magnitude is that of the unnormalised 3x3 Sobel operator on the blurred image, so a sharp
/// step of height `h` peaks at about `3h`: any step of more than about 43 gray levels is an edge,
/// while a smooth background ramp is not unless it climbs 16 levels per pixel.
pub const EDGE_THRESHOLD: u32 = 128;

/// Most pixels one image of an [`ImageBatch`] may have: 2^27 (about 134 million, e.g.
/// 16384 x 8192). Like Pillow's `MAX_IMAGE_PIXELS`, a guard against dimensions that no real image
/// has: a batch is analysed with two 32-bit buffers of one image's size, so the declared size
/// must be believable before anything is allocated for it, even when the batch has no images.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 27;

/// Rec. 601 luma weights in thousandths: `Y = 0.299 R + 0.587 G + 0.114 B`.
const LUMA_WEIGHTS: [u32; 3] = [299, 587, 114];
/// Luma is kept in thousandths of a gray level so the weights above stay exact.
const LUMA_SCALE: u32 = 1000;
/// The separable 1-2-1 blur kernel sums to 4 per axis, so a blurred pixel is scaled by 16.
const BLUR_SCALE: i64 = 16;
/// Largest change, in either direction, that noise makes to one colour channel.
const NOISE_AMPLITUDE: i16 = 8;

/// A batch of same-sized RGB8 images, concatenated row-major.
///
/// Image `i` occupies the `width * height * 3` bytes starting at `i * width * height * 3`; inside
/// an image, pixel `(x, y)` is the bytes `R, G, B` at offset `(y * width + x) * 3`. The pixels
/// serialize as one binary blob (`serde_bytes`), so a batch stays compact on the wire.
///
/// A batch is checked as it is decoded ([`batch_bytes`]): images over [`MAX_IMAGE_PIXELS`] or a
/// pixel buffer of the wrong length do not decode, so a worker refuses them as bad arguments
/// before it allocates anything for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedBatch")]
pub struct ImageBatch {
    /// Batch number: the seed of [`generate_batch`] and the key results are reported under.
    pub id: u32,
    /// Width of every image, in pixels.
    pub width: u32,
    /// Height of every image, in pixels.
    pub height: u32,
    /// Number of images in the batch.
    pub count: u32,
    /// `count` images of `width * height` RGB8 pixels each, back to back.
    #[serde(with = "serde_bytes")]
    pub pixels: Vec<u8>,
}

/// An [`ImageBatch`] as it arrives, before [`batch_bytes`] has checked it.
#[derive(Deserialize)]
struct UncheckedBatch {
    id: u32,
    width: u32,
    height: u32,
    count: u32,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
}

impl TryFrom<UncheckedBatch> for ImageBatch {
    type Error = ImageError;

    fn try_from(raw: UncheckedBatch) -> Result<Self, ImageError> {
        let batch = ImageBatch {
            id: raw.id,
            width: raw.width,
            height: raw.height,
            count: raw.count,
            pixels: raw.pixels,
        };
        batch.check()?;
        Ok(batch)
    }
}

impl ImageBatch {
    /// Whether the dimensions are believable and the buffer holds exactly the declared images.
    fn check(&self) -> Result<(), ImageError> {
        let expected = batch_bytes(self.count, self.width, self.height)?;
        if self.pixels.len() != expected {
            return Err(ImageError::BufferLength {
                expected,
                actual: self.pixels.len(),
            });
        }
        Ok(())
    }
}

/// Why a batch could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageError {
    /// `width * height * 3 * count` does not fit in `usize`, so no buffer can hold the batch.
    TooLarge {
        /// Declared image width.
        width: u32,
        /// Declared image height.
        height: u32,
        /// Declared number of images.
        count: u32,
    },
    /// One image would have more than [`MAX_IMAGE_PIXELS`] pixels.
    ImageTooLarge {
        /// Declared image width.
        width: u32,
        /// Declared image height.
        height: u32,
    },
    /// The pixel buffer is not `width * height * 3 * count` bytes long.
    BufferLength {
        /// Length implied by the declared dimensions.
        expected: usize,
        /// Length of the buffer received.
        actual: usize,
    },
    /// A batch named by URL (`image_stats_from`) could not be read or decoded.
    Unreadable {
        /// The batch's URL.
        url: String,
        /// Why (the blob store's or the decoder's error).
        cause: String,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge {
                width,
                height,
                count,
            } => write!(
                f,
                "a batch of {count} images of {width}x{height} is too large"
            ),
            Self::ImageTooLarge { width, height } => write!(
                f,
                "images of {width}x{height} have {} pixels, over the limit of {MAX_IMAGE_PIXELS}",
                u64::from(*width) * u64::from(*height)
            ),
            Self::BufferLength { expected, actual } => write!(
                f,
                "pixel buffer holds {actual} bytes but the dimensions need {expected}"
            ),
            Self::Unreadable { url, cause } => write!(f, "batch {url} cannot be read: {cause}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// What [`analyze_batch`] measured on one batch.
///
/// The integer sums (`luma_sum`, `edge_pixels`, `histogram`) are the ground truth that
/// [`merge`] adds up; the `f64` fields are derived from them for convenience.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Id of the analysed batch.
    pub id: u32,
    /// Number of images in the batch.
    pub images: u32,
    /// Number of pixels over all images of the batch.
    pub pixels: u64,
    /// Mean gray level (Rec. 601 luma, 0 to 255) over all pixels; 0 when there are none.
    pub mean_brightness: f64,
    /// Fraction of pixels whose Sobel magnitude exceeds [`EDGE_THRESHOLD`]; 0 when there are none.
    pub edge_density: f64,
    /// Pixel counts per gray level, in [`HISTOGRAM_BINS`] bins of 16 levels.
    pub histogram: Vec<u64>,
    /// Index of the image with the highest mean gray level and that level (the first on ties).
    /// `(0, 0.0)` for a batch without images.
    pub brightest: (u32, f64),
    /// Sum of every pixel's luma in thousandths of a gray level; exact, so merges are exact.
    pub luma_sum: u64,
    /// Number of pixels counted as edges.
    pub edge_pixels: u64,
}

/// The reduction of any number of [`BatchStats`]: what the demo reports at the end.
///
/// As in [`BatchStats`], the integer fields are summed and the `f64` fields are derived from
/// them, so merging is exactly associative and independent of grouping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of batches merged.
    pub batches: u32,
    /// Number of images over all batches.
    pub images: u64,
    /// Number of pixels over all batches.
    pub pixels: u64,
    /// Pixel-weighted mean gray level (0 to 255); 0 when there are no pixels.
    pub mean_brightness: f64,
    /// Pixel-weighted fraction of edge pixels; 0 when there are no pixels.
    pub edge_density: f64,
    /// Pixel counts per gray level, in [`HISTOGRAM_BINS`] bins of 16 levels.
    pub histogram: Vec<u64>,
    /// Batch id, image index and mean gray level of the brightest image. Ties go to the lowest
    /// `(batch, image)`; `(0, 0, 0.0)` when no image was merged.
    pub brightest: (u32, u32, f64),
    /// Sum of every pixel's luma in thousandths of a gray level.
    pub luma_sum: u64,
    /// Number of pixels counted as edges.
    pub edge_pixels: u64,
}

/// Byte length of a batch of `count` RGB8 images of `width` x `height`, or `None` if there can
/// be no such batch (see [`batch_bytes`]).
///
/// Lets callers validate settings before asking [`generate_batch`] for a batch.
pub fn batch_len(count: u32, width: u32, height: u32) -> Option<usize> {
    batch_bytes(count, width, height).ok()
}

/// Byte length of a batch of `count` RGB8 images of `width` x `height`.
///
/// # Errors
///
/// [`ImageError::ImageTooLarge`] if one image would have more than [`MAX_IMAGE_PIXELS`] pixels
/// (whatever `count` is), [`ImageError::TooLarge`] if the length does not fit in `usize`.
pub fn batch_bytes(count: u32, width: u32, height: u32) -> Result<usize, ImageError> {
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageError::ImageTooLarge { width, height });
    }
    image_len(width, height)
        .and_then(|len| len.checked_mul(count as usize))
        .ok_or(ImageError::TooLarge {
            width,
            height,
            count,
        })
}

/// Byte length of one RGB8 image, or `None` on overflow.
fn image_len(width: u32, height: u32) -> Option<usize> {
    (width as usize)
        .checked_mul(height as usize)?
        .checked_mul(3)
}

/// Builds batch `id`: `count` synthetic `width` x `height` scenes, the same bytes every time.
///
/// Each image is drawn from its own small PRNG stream, seeded by the batch id and the image
/// index: a two-colour background gradient, two to five filled circles and rectangles of random
/// colours, and a little per-pixel noise. Different batches and different images differ.
///
/// # Panics
///
/// If there can be no such batch, that is if [`batch_len`] returns `None`.
pub fn generate_batch(id: u32, count: u32, width: u32, height: u32) -> ImageBatch {
    let len = batch_len(count, width, height).expect("a batch of believable size");
    let mut pixels = vec![0; len];
    let per_image = image_len(width, height).unwrap_or(0);
    if per_image > 0 {
        for (index, image) in pixels.chunks_exact_mut(per_image).enumerate() {
            let mut rng = SplitMix64::new((u64::from(id) << 32) | index as u64);
            draw_scene(image, width as usize, height as usize, &mut rng);
        }
    }
    ImageBatch {
        id,
        width,
        height,
        count,
        pixels,
    }
}

/// Analyses every image of a batch and sums the results.
///
/// Per image: RGB to gray (Rec. 601 luma), 3x3 Gaussian blur, Sobel gradient magnitude (edges
/// replicate their border pixels), then the edge count, the gray histogram and the brightness.
///
/// Memory: two 32-bit buffers of one image's size, allocated only when the batch has an image,
/// so at most 8/3 of the length of the pixel buffer.
///
/// # Errors
///
/// As [`batch_bytes`], and [`ImageError::BufferLength`] if `pixels` is not
/// `width * height * 3 * count` bytes long.
pub fn analyze_batch(batch: &ImageBatch) -> Result<BatchStats, ImageError> {
    analyze_batch_with(&LumaTable::new(), batch)
}

/// The luma of every channel value, precomputed: `table[c][v]` is `LUMA_WEIGHTS[c] * v`, so
/// that a pixel's luma is three lookups and two additions instead of three multiplications.
/// 3 KiB, built once by [`LumaTable::new`]; what a worker keeps as the state of its image tasks
/// (`Registry::with_state`), shared by all of them.
#[derive(Clone, PartialEq, Eq)]
pub struct LumaTable {
    table: Box<[[u32; 256]; 3]>,
}

impl LumaTable {
    /// Computes the table.
    pub fn new() -> Self {
        let mut table = Box::new([[0; 256]; 3]);
        for (channel, weight) in table.iter_mut().zip(LUMA_WEIGHTS) {
            for (value, luma) in (0u32..).zip(channel.iter_mut()) {
                *luma = weight * value;
            }
        }
        LumaTable { table }
    }

    /// The luma of one RGB8 pixel, in thousandths of a gray level.
    pub fn luma(&self, rgb: [u8; 3]) -> u32 {
        self.table[0][usize::from(rgb[0])]
            + self.table[1][usize::from(rgb[1])]
            + self.table[2][usize::from(rgb[2])]
    }
}

impl Default for LumaTable {
    fn default() -> Self {
        LumaTable::new()
    }
}

impl fmt::Debug for LumaTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LumaTable")
            .field("weights", &LUMA_WEIGHTS)
            .finish()
    }
}

/// [`analyze_batch`] with a [`LumaTable`] built beforehand (a worker's state), so that no
/// call builds its own.
///
/// # Errors
///
/// As [`analyze_batch`].
pub fn analyze_batch_with(luma: &LumaTable, batch: &ImageBatch) -> Result<BatchStats, ImageError> {
    batch.check()?;
    let ImageBatch {
        id,
        width,
        height,
        count,
        ref pixels,
    } = *batch;
    let (w, h) = (width as usize, height as usize);
    let per_image = w * h;
    let mut histogram = vec![0; HISTOGRAM_BINS];
    let mut luma_sum = 0;
    let mut edge_pixels = 0;
    // (index, luma sum) of the brightest image so far: all images have the same size, so the
    // exact integer sums compare like the means.
    let mut brightest: Option<(u32, u64)> = None;
    if per_image > 0 && count > 0 {
        // The buffer holds `count` images of `per_image` pixels (checked above), so the scratch
        // is sized by data that arrived, not by what the header claims.
        let mut scratch = Scratch::new(per_image);
        for (index, image) in pixels.chunks_exact(per_image * 3).enumerate() {
            let sum = scratch.load_luma(luma, image, &mut histogram);
            scratch.blur(w, h);
            edge_pixels += scratch.count_edges(w, h);
            luma_sum += sum;
            if brightest.is_none_or(|(_, best)| sum > best) {
                brightest = Some((index as u32, sum));
            }
        }
    } else if count > 0 {
        brightest = Some((0, 0));
    }
    let pixels = per_image as u64 * u64::from(count);
    Ok(BatchStats {
        id,
        images: count,
        pixels,
        mean_brightness: mean_gray(luma_sum, pixels),
        edge_density: ratio(edge_pixels, pixels),
        histogram,
        brightest: brightest.map_or((0, 0.0), |(index, sum)| {
            (index, mean_gray(sum, per_image as u64))
        }),
        luma_sum,
        edge_pixels,
    })
}

/// Reduces per-batch results into one [`Summary`]; `merge(&[])` is the empty summary.
///
/// `merge_summaries(&[merge(a), merge(b)]) == merge(a ++ b)` exactly, whatever the split.
pub fn merge(stats: &[BatchStats]) -> Summary {
    stats
        .iter()
        .map(Summary::from)
        .fold(Summary::default(), Summary::combine)
}

/// Reduces partial summaries into one, for tree reductions; the empty summary is the identity.
pub fn merge_summaries(parts: &[Summary]) -> Summary {
    parts
        .iter()
        .cloned()
        .fold(Summary::default(), Summary::combine)
}

impl Default for Summary {
    /// The summary of nothing: all counts zero and [`HISTOGRAM_BINS`] empty bins.
    fn default() -> Self {
        Self {
            batches: 0,
            images: 0,
            pixels: 0,
            mean_brightness: 0.0,
            edge_density: 0.0,
            histogram: vec![0; HISTOGRAM_BINS],
            brightest: (0, 0, 0.0),
            luma_sum: 0,
            edge_pixels: 0,
        }
    }
}

impl From<&BatchStats> for Summary {
    /// The summary of a single batch; derived fields are recomputed from the exact sums.
    fn from(stats: &BatchStats) -> Self {
        Self {
            batches: 1,
            images: u64::from(stats.images),
            pixels: stats.pixels,
            mean_brightness: mean_gray(stats.luma_sum, stats.pixels),
            edge_density: ratio(stats.edge_pixels, stats.pixels),
            histogram: stats.histogram.clone(),
            brightest: (stats.id, stats.brightest.0, stats.brightest.1),
            luma_sum: stats.luma_sum,
            edge_pixels: stats.edge_pixels,
        }
    }
}

impl Summary {
    /// Adds two summaries. Associative and commutative, with [`Summary::default`] as identity.
    fn combine(self, other: Self) -> Self {
        let brightest = match (self.images, other.images) {
            (0, _) => other.brightest,
            (_, 0) => self.brightest,
            _ => brighter(self.brightest, other.brightest),
        };
        let mut histogram = self.histogram;
        if histogram.len() < other.histogram.len() {
            histogram.resize(other.histogram.len(), 0);
        }
        for (bin, add) in histogram.iter_mut().zip(&other.histogram) {
            *bin = bin.saturating_add(*add);
        }
        let pixels = self.pixels.saturating_add(other.pixels);
        let luma_sum = self.luma_sum.saturating_add(other.luma_sum);
        let edge_pixels = self.edge_pixels.saturating_add(other.edge_pixels);
        Self {
            batches: self.batches.saturating_add(other.batches),
            images: self.images.saturating_add(other.images),
            pixels,
            mean_brightness: mean_gray(luma_sum, pixels),
            edge_density: ratio(edge_pixels, pixels),
            histogram,
            brightest,
            luma_sum,
            edge_pixels,
        }
    }

    /// A short human-readable report: totals, means, the brightest image and an ASCII histogram.
    pub fn render(&self) -> String {
        const BAR: u64 = 32;
        let mut out = format!(
            "{} batches, {} images, {} pixels\n\
             mean brightness {:.1} / 255, edge density {:.2}%\n",
            self.batches,
            self.images,
            self.pixels,
            self.mean_brightness,
            self.edge_density * 100.0,
        );
        if self.images > 0 {
            let (batch, image, level) = self.brightest;
            out += &format!("brightest image: batch {batch}, image {image} (mean {level:.1})\n");
        }
        out += "gray level histogram:\n";
        let max = self.histogram.iter().copied().max().unwrap_or(0).max(1);
        for (bin, &n) in self.histogram.iter().enumerate() {
            // Round up so a non-empty bin always shows at least one mark.
            let len = (u128::from(n) * u128::from(BAR)).div_ceil(u128::from(max)) as usize;
            let low = bin * 16;
            out += &format!(
                "{low:>4}-{:<4}|{:<width$}| {n}\n",
                low + 15,
                "#".repeat(len),
                width = BAR as usize
            );
        }
        out
    }
}

/// The brighter of two `(batch, image, level)` candidates; ties go to the lowest index so the
/// choice does not depend on merge order.
fn brighter(a: (u32, u32, f64), b: (u32, u32, f64)) -> (u32, u32, f64) {
    let order =
        a.2.total_cmp(&b.2)
            .then_with(|| (b.0, b.1).cmp(&(a.0, a.1)));
    if order == Ordering::Less {
        b
    } else {
        a
    }
}

/// Mean gray level from a luma sum in thousandths; 0 when there are no pixels.
fn mean_gray(luma_sum: u64, pixels: u64) -> f64 {
    if pixels == 0 {
        0.0
    } else {
        luma_sum as f64 / (f64::from(LUMA_SCALE) * pixels as f64)
    }
}

/// `part / whole`, or 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Per-image buffers, allocated once per batch and reused for every image.
struct Scratch {
    /// Luma of each pixel, in thousandths of a gray level; later the vertical blur output.
    luma: Vec<u32>,
    /// Horizontal blur pass.
    row_blur: Vec<u32>,
}

impl Scratch {
    fn new(pixels: usize) -> Self {
        Self {
            luma: vec![0; pixels],
            row_blur: vec![0; pixels],
        }
    }

    /// Converts an RGB8 image to luma, counts it into `histogram` and returns the luma sum.
    fn load_luma(&mut self, table: &LumaTable, image: &[u8], histogram: &mut [u64]) -> u64 {
        let mut sum = 0;
        for (luma, rgb) in self.luma.iter_mut().zip(image.chunks_exact(3)) {
            let y = table.luma([rgb[0], rgb[1], rgb[2]]);
            *luma = y;
            sum += u64::from(y);
            // y < 256 * LUMA_SCALE, so the bin is below HISTOGRAM_BINS.
            let bin = (y / (16 * LUMA_SCALE)) as usize;
            if let Some(count) = histogram.get_mut(bin) {
                *count += 1;
            }
        }
        sum
    }

    /// 3x3 Gaussian blur (1-2-1 in each direction, unnormalised) of `luma`, in place.
    fn blur(&mut self, w: usize, h: usize) {
        for (src, dst) in self
            .luma
            .chunks_exact(w)
            .zip(self.row_blur.chunks_exact_mut(w))
        {
            for x in 0..w {
                dst[x] = src[x.saturating_sub(1)] + 2 * src[x] + src[(x + 1).min(w - 1)];
            }
        }
        for y in 0..h {
            let up = &self.row_blur[y.saturating_sub(1) * w..][..w];
            let mid = &self.row_blur[y * w..][..w];
            let down = &self.row_blur[(y + 1).min(h - 1) * w..][..w];
            let out = &mut self.luma[y * w..][..w];
            for x in 0..w {
                out[x] = up[x] + 2 * mid[x] + down[x];
            }
        }
    }

    /// Counts the pixels of the blurred image whose Sobel magnitude exceeds [`EDGE_THRESHOLD`].
    fn count_edges(&self, w: usize, h: usize) -> u64 {
        let threshold = i64::from(EDGE_THRESHOLD) * i64::from(LUMA_SCALE) * BLUR_SCALE;
        let threshold_sq = threshold * threshold;
        let b = &self.luma;
        let mut edges = 0;
        for y in 0..h {
            let up = &b[y.saturating_sub(1) * w..][..w];
            let mid = &b[y * w..][..w];
            let down = &b[(y + 1).min(h - 1) * w..][..w];
            for x in 0..w {
                let (l, r) = (x.saturating_sub(1), (x + 1).min(w - 1));
                let column =
                    |i: usize| i64::from(up[i]) + 2 * i64::from(mid[i]) + i64::from(down[i]);
                let row = |v: &[u32]| i64::from(v[l]) + 2 * i64::from(v[x]) + i64::from(v[r]);
                let gx = column(r) - column(l);
                let gy = row(down) - row(up);
                if gx * gx + gy * gy > threshold_sq {
                    edges += 1;
                }
            }
        }
        edges
    }
}

/// Draws one synthetic scene into `image` (`w * h` RGB8 pixels, both non-zero).
fn draw_scene(image: &mut [u8], w: usize, h: usize, rng: &mut SplitMix64) {
    // Background: a linear gradient between two colours, horizontal, vertical or diagonal.
    let (from, to) = (rng.colour(), rng.colour());
    let direction = rng.below(3);
    let span = match direction {
        0 => w - 1,
        1 => h - 1,
        _ => w + h - 2,
    }
    .max(1) as u64;
    for y in 0..h {
        for x in 0..w {
            let t = match direction {
                0 => x,
                1 => y,
                _ => x + y,
            } as u64;
            let pixel = &mut image[(y * w + x) * 3..][..3];
            for ((out, a), b) in pixel.iter_mut().zip(from).zip(to) {
                let mixed = (u64::from(a) * (span - t) + u64::from(b) * t) / span;
                *out = mixed as u8;
            }
        }
    }

    // Two to five filled shapes, each a circle or a rectangle of its own colour.
    let max_extent = (w.min(h) / 4).max(1);
    for _ in 0..2 + rng.below(4) {
        let colour = rng.colour();
        let (cx, cy) = (rng.below(w), rng.below(h));
        let rx = 1 + rng.below(max_extent);
        let circle = rng.below(2) == 0;
        let ry = if circle {
            rx
        } else {
            1 + rng.below(max_extent)
        };
        for y in cy.saturating_sub(ry)..=(cy + ry).min(h - 1) {
            for x in cx.saturating_sub(rx)..=(cx + rx).min(w - 1) {
                let (dx, dy) = (x.abs_diff(cx), y.abs_diff(cy));
                if !circle || dx * dx + dy * dy <= rx * rx {
                    image[(y * w + x) * 3..][..3].copy_from_slice(&colour);
                }
            }
        }
    }

    // Sensor-like noise: every channel moves by up to NOISE_AMPLITUDE either way.
    let span = (2 * NOISE_AMPLITUDE + 1) as u64;
    for pixel in image.chunks_exact_mut(3) {
        let bits = rng.next_u64();
        for (channel, value) in pixel.iter_mut().enumerate() {
            let noise = ((bits >> (channel * 16)) % span) as i16 - NOISE_AMPLITUDE;
            *value = (i16::from(*value) + noise).clamp(0, 255) as u8;
        }
    }
}

/// The splitmix64 generator: tiny, fast, and good enough to draw scenes from.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`, or 0 when `n` is 0 (the slight modulo bias does not matter here).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    fn colour(&mut self) -> [u8; 3] {
        let [r, g, b, ..] = self.next_u64().to_le_bytes();
        [r, g, b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose every pixel is `rgb`.
    fn uniform(count: u32, width: u32, height: u32, rgb: [u8; 3]) -> ImageBatch {
        let pixels = (0..width * height * count).flat_map(|_| rgb).collect();
        ImageBatch {
            id: 1,
            width,
            height,
            count,
            pixels,
        }
    }

    #[test]
    fn generation_is_deterministic_and_varied() {
        let batch = generate_batch(7, 4, 32, 24);
        assert_eq!(batch.pixels.len(), 32 * 24 * 3 * 4);
        assert_eq!(
            (batch.id, batch.count, batch.width, batch.height),
            (7, 4, 32, 24)
        );
        assert_eq!(batch, generate_batch(7, 4, 32, 24));
        assert_ne!(batch.pixels, generate_batch(8, 4, 32, 24).pixels);
        let (first, second) = batch.pixels.split_at(32 * 24 * 3);
        assert_ne!(first, &second[..first.len()]);
    }

    #[test]
    fn the_luma_table_holds_the_rec601_products() {
        let table = LumaTable::new();
        for rgb in [[0, 0, 0], [255, 255, 255], [1, 2, 3], [200, 17, 99]] {
            let direct: u32 = LUMA_WEIGHTS
                .iter()
                .zip(rgb)
                .map(|(w, v)| w * u32::from(v))
                .sum();
            assert_eq!(table.luma(rgb), direct, "{rgb:?}");
        }
        let batch = generate_batch(3, 2, 24, 16);
        assert_eq!(
            analyze_batch_with(&table, &batch).unwrap(),
            analyze_batch(&batch).unwrap()
        );
    }

    #[test]
    fn empty_batches_are_fine() {
        for batch in [generate_batch(1, 0, 16, 16), generate_batch(1, 3, 0, 16)] {
            assert!(batch.pixels.is_empty());
            let stats = analyze_batch(&batch).unwrap();
            assert_eq!(
                (stats.pixels, stats.mean_brightness, stats.edge_density),
                (0, 0.0, 0.0)
            );
            assert_eq!(stats.images, batch.count);
        }
    }

    #[test]
    fn generated_scenes_have_some_but_not_all_edges() {
        let stats = analyze_batch(&generate_batch(3, 16, 64, 64)).unwrap();
        assert!(
            stats.edge_density > 0.01 && stats.edge_density < 0.5,
            "{stats:?}"
        );
        assert_eq!(stats.histogram.iter().sum::<u64>(), stats.pixels);
        assert_eq!(stats.pixels, 16 * 64 * 64);
    }

    #[test]
    fn uniform_gray_image_has_exact_brightness_and_no_edges() {
        let stats = analyze_batch(&uniform(3, 20, 10, [77, 77, 77])).unwrap();
        assert_eq!(stats.mean_brightness, 77.0);
        assert_eq!(stats.edge_density, 0.0);
        assert_eq!(stats.edge_pixels, 0);
        assert_eq!(stats.pixels, 600);
        assert_eq!(stats.histogram[77 / 16], 600);
        assert_eq!(stats.brightest, (0, 77.0));
    }

    #[test]
    fn uniform_colour_image_uses_rec601_luma() {
        let stats = analyze_batch(&uniform(1, 9, 7, [10, 200, 30])).unwrap();
        let luma = 0.299 * 10.0 + 0.587 * 200.0 + 0.114 * 30.0;
        assert!((stats.mean_brightness - luma).abs() < 1e-9);
        assert_eq!(stats.edge_pixels, 0);
        assert_eq!(stats.histogram[7], 63);
    }

    #[test]
    fn checkerboard_has_high_edge_density() {
        let (w, h, square) = (64, 64, 8);
        let pixels = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let white = (x / square + y / square) % 2 == 0;
                [if white { 255 } else { 0 }; 3]
            })
            .collect();
        let batch = ImageBatch {
            id: 0,
            width: w,
            height: h,
            count: 1,
            pixels,
        };
        let stats = analyze_batch(&batch).unwrap();
        assert!(stats.edge_density > 0.5, "{stats:?}");
        assert_eq!(stats.histogram[0], 2048);
        assert_eq!(stats.histogram[15], 2048);
        assert_eq!(stats.mean_brightness, 127.5);
    }

    #[test]
    fn brightest_image_is_found() {
        let mut batch = uniform(4, 5, 5, [0, 0, 0]);
        batch.pixels[2 * 75..3 * 75].fill(255);
        let stats = analyze_batch(&batch).unwrap();
        assert_eq!(stats.brightest, (2, 255.0));
    }

    #[test]
    fn wrong_buffer_length_is_an_error() {
        let mut batch = generate_batch(1, 2, 8, 8);
        batch.pixels.pop();
        assert_eq!(
            analyze_batch(&batch),
            Err(ImageError::BufferLength {
                expected: 384,
                actual: 383
            })
        );
        batch.pixels.clear();
        batch.count = 0;
        assert!(analyze_batch(&batch).is_ok());
        batch.count = 1;
        assert!(analyze_batch(&batch)
            .unwrap_err()
            .to_string()
            .contains("192"));

        let huge = ImageBatch {
            id: 0,
            width: u32::MAX,
            height: u32::MAX,
            count: u32::MAX,
            pixels: Vec::new(),
        };
        assert!(matches!(
            analyze_batch(&huge),
            Err(ImageError::ImageTooLarge { .. })
        ));
        // Believable images, but too many of them for this machine's address space.
        let many = ImageBatch {
            count: u32::MAX,
            width: 1 << 13,
            height: 1 << 14,
            ..huge
        };
        let expected = if usize::BITS < 64 {
            Err(ImageError::TooLarge {
                width: 1 << 13,
                height: 1 << 14,
                count: u32::MAX,
            })
        } else {
            Ok((1usize << 27) * 3 * u32::MAX as usize)
        };
        assert_eq!(batch_bytes(u32::MAX, 1 << 13, 1 << 14), expected);
        assert!(analyze_batch(&many).is_err());
    }

    #[test]
    fn a_batch_of_no_images_of_huge_size_is_refused_before_anything_is_allocated() {
        // The message that aborted every stock worker that took it (issue 15, item 5).
        let empty = ImageBatch {
            id: 0,
            width: 1_000_000,
            height: 1_000_000,
            count: 0,
            pixels: Vec::new(),
        };
        let error = analyze_batch(&empty).unwrap_err();
        assert_eq!(
            error,
            ImageError::ImageTooLarge {
                width: 1_000_000,
                height: 1_000_000
            }
        );
        assert!(error.to_string().contains("1000000x1000000"), "{error}");
        // Decoding refuses it too, so a worker reports bad arguments.
        let bytes = rmp_serde::to_vec_named(&empty).unwrap();
        let decoded = rmp_serde::from_slice::<ImageBatch>(&bytes).unwrap_err();
        assert!(decoded.to_string().contains("over the limit"), "{decoded}");
        // The largest image allowed is fine when the batch is empty, and nothing is allocated
        // for its analysis either.
        let largest = ImageBatch {
            width: 1 << 13,
            height: 1 << 14,
            ..empty
        };
        assert_eq!(analyze_batch(&largest).unwrap().pixels, 0);
        let short = ImageBatch {
            count: 1,
            ..largest.clone()
        };
        let bytes = rmp_serde::to_vec(&short).unwrap();
        assert!(rmp_serde::from_slice::<ImageBatch>(&bytes).is_err());
        let fine = generate_batch(3, 2, 8, 8);
        let bytes = rmp_serde::to_vec(&fine).unwrap();
        assert_eq!(rmp_serde::from_slice::<ImageBatch>(&bytes).unwrap(), fine);
    }

    #[test]
    fn merge_is_associative() {
        let stats: Vec<BatchStats> = (0..7)
            .map(|id| analyze_batch(&generate_batch(id, 3, 24, 16)).unwrap())
            .collect();
        let all = merge(&stats);
        assert_eq!(all.batches, 7);
        assert_eq!(all.images, 21);
        assert_eq!(all.pixels, 21 * 24 * 16);
        assert_eq!(all.histogram.iter().sum::<u64>(), all.pixels);
        let best = stats.iter().map(|s| s.brightest.1).fold(f64::MIN, f64::max);
        assert_eq!(all.brightest.2, best);

        for split in 0..=stats.len() {
            let (left, right) = stats.split_at(split);
            let halves = merge_summaries(&[merge(left), merge(right)]);
            assert_close(&halves, &all);
            // The sums are integers, so the results are in fact identical.
            assert_eq!(halves, all);
        }
        let tree = merge_summaries(&[
            merge_summaries(&[merge(&stats[..2]), merge(&stats[2..3])]),
            merge_summaries(&[merge(&stats[3..6]), Summary::default(), merge(&stats[6..])]),
        ]);
        assert_eq!(tree, all);
        assert_eq!(merge(&[]), Summary::default());
        assert_eq!(merge_summaries(&[]), Summary::default());
    }

    fn assert_close(a: &Summary, b: &Summary) {
        assert_eq!(
            (a.batches, a.images, a.pixels),
            (b.batches, b.images, b.pixels)
        );
        assert_eq!(a.histogram, b.histogram);
        assert!((a.mean_brightness - b.mean_brightness).abs() < 1e-9);
        assert!((a.edge_density - b.edge_density).abs() < 1e-12);
        assert_eq!(
            (a.brightest.0, a.brightest.1),
            (b.brightest.0, b.brightest.1)
        );
    }

    #[test]
    fn brightest_ties_go_to_the_lowest_index() {
        let stats: Vec<BatchStats> = [5, 2, 9]
            .into_iter()
            .map(|id| {
                let mut batch = uniform(2, 4, 4, [90, 90, 90]);
                batch.id = id;
                analyze_batch(&batch).unwrap()
            })
            .collect();
        assert_eq!(merge(&stats).brightest, (2, 0, 90.0));
        let reversed: Vec<Summary> = stats.iter().rev().map(Summary::from).collect();
        assert_eq!(merge_summaries(&reversed).brightest, (2, 0, 90.0));
    }

    #[test]
    fn render_shows_totals_and_histogram() {
        let stats = analyze_batch(&uniform(2, 10, 10, [200, 200, 200])).unwrap();
        let text = merge(&[stats]).render();
        assert!(text.contains("1 batches, 2 images, 200 pixels"), "{text}");
        assert!(text.contains("mean brightness 200.0"), "{text}");
        assert!(text.contains("brightest image: batch 1, image 0"), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.contains('|')).count(),
            HISTOGRAM_BINS
        );
        assert!(
            text.contains(&format!(" 192-207 |{}| 200", "#".repeat(32))),
            "{text}"
        );
        assert!(Summary::default().render().contains("0 batches"));
    }
}
