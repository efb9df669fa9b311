//! Small previews of images, and the async wrapper that keeps decoding off the runtime.

use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ColorType, DynamicImage, ExtendedColorType, GenericImageView, ImageEncoder};
use tokio::sync::Semaphore;

use crate::images::{ImageError, ImageInfo, ImageLimits, Opened, from_decoder, open, probe_image};
use crate::sniff::ContentType;

/// The longest side of a thumbnail the web client asks for, in pixels.
pub const THUMBNAIL_SIDE_PX: u32 = 320;

/// The usual quality for previews: its artefacts are hard to see at 320 px.
const JPEG_QUALITY: u8 = 80;

/// An encoded preview of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    /// The encoded file.
    pub bytes: Vec<u8>,
    /// [`ContentType::Jpeg`] for an opaque image, [`ContentType::Webp`] (lossless) when any
    /// pixel is transparent: JPEG has no alpha, and the image crate's lossless WebP encoder is
    /// 10–50× faster than its PNG encoder at 320 px and 10–30 % smaller. Every browser we
    /// serve shows WebP, as it must for uploads anyway.
    pub content_type: ContentType,
    /// The thumbnail's width as displayed (orientation applied).
    pub width_px: u32,
    pub height_px: u32,
    /// What the original's header said.
    pub original: ImageInfo,
}

/// Decodes the image at `path` under `limits` and scales it to fit in a square of
/// `side_px_max` (aspect ratio kept, never enlarged), turned upright by its EXIF orientation.
/// An animated GIF or WebP gives its first frame. The limits are checked from the header
/// before anything is decoded.
///
/// Blocking and CPU-bound; see [`ImageWorker`] for the async form.
pub fn thumbnail(
    path: &Path,
    side_px_max: u32,
    limits: &ImageLimits,
) -> Result<Thumbnail, ImageError> {
    let Opened {
        decoder,
        info,
        orientation,
    } = open(path, limits)?;
    let image = DynamicImage::from_decoder(decoder).map_err(from_decoder)?;
    let (width, height) = image.dimensions();
    let (fit_width, fit_height) = fit(width, height, side_px_max.max(1));
    // `thumbnail_exact` averages every source pixel into one target pixel: fast, no aliasing.
    let mut small = if (fit_width, fit_height) == (width, height) {
        image
    } else {
        image.thumbnail_exact(fit_width, fit_height)
    };
    // Turned after scaling: the same result, on far fewer pixels.
    small.apply_orientation(orientation);
    encode(&small, info)
}

/// The largest size within `side_px` a side with the aspect ratio of `width` × `height`, or
/// the size itself if it already fits.
fn fit(width: u32, height: u32, side_px: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= side_px {
        return (width, height);
    }
    let scale = |x: u32| {
        let scaled = (u64::from(x) * u64::from(side_px) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled).unwrap_or(side_px).max(1)
    };
    (scale(width), scale(height))
}

fn encode(small: &DynamicImage, original: ImageInfo) -> Result<Thumbnail, ImageError> {
    let (width_px, height_px) = small.dimensions();
    let mut bytes = Vec::new();
    let gray = matches!(
        small.color(),
        ColorType::L8 | ColorType::L16 | ColorType::La8 | ColorType::La16
    );
    let content_type = if small.color().has_alpha() && is_transparent(small) {
        WebPEncoder::new_lossless(&mut bytes)
            .write_image(
                small.to_rgba8().as_raw(),
                width_px,
                height_px,
                ExtendedColorType::Rgba8,
            )
            .map_err(ImageError::Invalid)?;
        ContentType::Webp
    } else {
        let (pixels, color) = if gray {
            (small.to_luma8().into_raw(), ExtendedColorType::L8)
        } else {
            (small.to_rgb8().into_raw(), ExtendedColorType::Rgb8)
        };
        JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
            .write_image(&pixels, width_px, height_px, color)
            .map_err(ImageError::Invalid)?;
        ContentType::Jpeg
    };
    Ok(Thumbnail {
        bytes,
        content_type,
        width_px,
        height_px,
        original,
    })
}

/// Whether any pixel is not fully opaque: many PNGs carry an alpha channel they never use, and
/// those are smaller as JPEG.
fn is_transparent(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageLumaA8(buffer) => buffer.pixels().any(|p| p.0[1] < u8::MAX),
        DynamicImage::ImageRgba8(buffer) => buffer.pixels().any(|p| p.0[3] < u8::MAX),
        other => other.to_rgba8().pixels().any(|p| p.0[3] < u8::MAX),
    }
}

/// Runs probes and thumbnails on tokio's blocking pool, at most `decodes_max` at a time, so
/// decoding never stalls the runtime and peak memory stays near `decodes_max` ×
/// [`ImageLimits::decoded_bytes_max`]. Cheap to clone; clones share the bound.
///
/// A permit is held by the blocking task itself: a caller that stops waiting does not free a
/// slot while its decode still runs. A panic in a decoder (a bug on hostile input) is
/// [`ImageError::DecoderPanicked`], not a crash.
#[derive(Debug, Clone)]
pub struct ImageWorker {
    limits: ImageLimits,
    permits: Arc<Semaphore>,
}

impl ImageWorker {
    pub fn new(limits: ImageLimits, decodes_max: NonZeroUsize) -> Self {
        Self {
            limits,
            permits: Arc::new(Semaphore::new(decodes_max.get())),
        }
    }

    /// [`probe_image`] on the blocking pool.
    pub async fn probe(&self, path: PathBuf) -> Result<ImageInfo, ImageError> {
        self.run(move |limits| probe_image(&path, limits)).await
    }

    /// [`thumbnail`] on the blocking pool.
    pub async fn thumbnail(
        &self,
        path: PathBuf,
        side_px_max: u32,
    ) -> Result<Thumbnail, ImageError> {
        self.run(move |limits| thumbnail(&path, side_px_max, limits))
            .await
    }

    async fn run<T, F>(&self, work: F) -> Result<T, ImageError>
    where
        T: Send + 'static,
        F: FnOnce(&ImageLimits) -> Result<T, ImageError> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the worker's semaphore is never closed");
        let limits = self.limits;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work(&limits)
        })
        .await
        .map_err(|e| {
            if e.is_panic() {
                ImageError::DecoderPanicked
            } else {
                // Only a runtime shutting down cancels a blocking task.
                ImageError::Io(io::Error::other(e))
            }
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_ratio_and_never_enlarges() {
        assert_eq!(fit(4000, 3000, 320), (320, 240));
        assert_eq!(fit(3000, 4000, 320), (240, 320));
        assert_eq!(fit(100, 50, 320), (100, 50));
        assert_eq!(fit(10_000, 1, 320), (320, 1));
        assert_eq!(fit(321, 321, 320), (320, 320));
    }
}
