//! Reading an image's header under limits: what [`probe_image`] and [`crate::thumbnail`] share.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use image::metadata::Orientation;
use image::{ImageDecoder, ImageFormat, ImageReader};

use crate::sniff::{ContentType, sniff};

/// Bounds on what is decoded, checked from the header before a pixel is: a decompression bomb
/// (a small file declaring a huge image) is refused without the allocation it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The longest side accepted, in pixels.
    pub side_px_max: u32,
    /// The most pixels accepted (width × height).
    pub pixels_max: u64,
    /// The most bytes the decoded image may take (pixels × bytes per pixel), which is also the
    /// decoder's allocation budget. Peak memory of one decode is about this plus the file (the
    /// JPEG decoder reads the whole file first).
    pub decoded_bytes_max: u64,
}

impl Default for ImageLimits {
    /// 16384 px a side, 40 megapixels (a 12 MP phone photo passes with room; a 48 MP one does
    /// not), and 160 MiB decoded: 40 MP of 8-bit RGBA, fewer pixels at 16 bits a channel.
    fn default() -> Self {
        Self {
            side_px_max: 16_384,
            pixels_max: 40_000_000,
            decoded_bytes_max: 160 * 1024 * 1024,
        }
    }
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// PNG, JPEG, GIF or WebP, from the file's bytes.
    pub content_type: ContentType,
    /// The width as displayed: EXIF orientation (a phone photo taken upright) applied.
    pub width_px: u32,
    /// The height as displayed.
    pub height_px: u32,
}

/// Why an image was not probed or thumbnailed. None of these is a panic or a large allocation.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not one of the formats shown inline (PNG, JPEG, GIF, WebP).
    #[error("not an image we decode (sniffed as {0})")]
    NotAnImage(ContentType),
    /// The header declares more than the limits allow; nothing was decoded.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// The header or the data is damaged, truncated, or uses a feature the decoder lacks.
    #[error("image cannot be decoded")]
    Invalid(#[source] image::ImageError),
    /// A decoder panicked (a bug it has on hostile input); caught by [`crate::ImageWorker`].
    #[error("the image decoder failed unexpectedly")]
    DecoderPanicked,
    /// Reading the file failed.
    #[error("reading the image failed")]
    Io(#[source] io::Error),
}

/// Reads the header of the image at `path` (its format from its bytes, not its name) and
/// checks it against `limits`, without decoding pixels. An image that passes can be
/// thumbnailed under the same limits, unless its data is damaged; one that does not is still
/// a file, just not one to show inline. The JPEG decoder reads the whole file into memory
/// to parse its header (the file is at most an upload), the others only the header.
///
/// Blocking (file IO); see [`crate::ImageWorker`] for the async form.
pub fn probe_image(path: &Path, limits: &ImageLimits) -> Result<ImageInfo, ImageError> {
    let opened = open(path, limits)?;
    Ok(opened.info)
}

/// A decoder past its header checks, with what it said.
pub(crate) struct Opened {
    pub decoder: Box<dyn ImageDecoder>,
    pub info: ImageInfo,
    pub orientation: Orientation,
}

pub(crate) fn open(path: &Path, limits: &ImageLimits) -> Result<Opened, ImageError> {
    let mut file = BufReader::new(File::open(path).map_err(ImageError::Io)?);
    let mut head = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut head)
        .map_err(ImageError::Io)?;
    file.seek(SeekFrom::Start(0)).map_err(ImageError::Io)?;
    let content_type = sniff(&head);
    let format = match content_type {
        ContentType::Png => ImageFormat::Png,
        ContentType::Jpeg => ImageFormat::Jpeg,
        ContentType::Gif => ImageFormat::Gif,
        ContentType::Webp => ImageFormat::WebP,
        other => return Err(ImageError::NotAnImage(other)),
    };

    let mut reader = ImageReader::with_format(file, format);
    // Only the allocation budget goes to the decoders: making one reads its header and
    // allocates nothing the size of the image, so `check` below still comes before any
    // large allocation, and says more than their "Image size exceeds limit".
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.decoded_bytes_max);
    reader.limits(decoder_limits);
    let mut decoder: Box<dyn ImageDecoder> = Box::new(reader.into_decoder().map_err(from_decoder)?);

    let (width, height) = decoder.dimensions();
    check(width, height, decoder.total_bytes(), limits)?;
    // A damaged EXIF block is no reason to refuse pixels that decode: show them unrotated.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (width_px, height_px) = if swaps_sides(orientation) {
        (height, width)
    } else {
        (width, height)
    };
    Ok(Opened {
        decoder,
        info: ImageInfo {
            content_type,
            width_px,
            height_px,
        },
        orientation,
    })
}

fn check(width: u32, height: u32, bytes: u64, limits: &ImageLimits) -> Result<(), ImageError> {
    let pixels = u64::from(width) * u64::from(height);
    let refusal = if width == 0 || height == 0 {
        format!("{width}×{height} px has no pixels")
    } else if width.max(height) > limits.side_px_max {
        format!(
            "{width}×{height} px, the limit is {} px a side",
            limits.side_px_max
        )
    } else if pixels > limits.pixels_max {
        format!(
            "{width}×{height} px is {pixels} pixels, the limit is {}",
            limits.pixels_max
        )
    } else if bytes > limits.decoded_bytes_max {
        format!(
            "{width}×{height} px decodes to {bytes} bytes, the limit is {}",
            limits.decoded_bytes_max
        )
    } else {
        return Ok(());
    };
    Err(ImageError::TooLarge(refusal))
}

/// The decoders' own limit refusals are [`ImageError::TooLarge`] too. A file that ends early
/// is damaged, not unreadable: decoders report it as an IO error.
pub(crate) fn from_decoder(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Limits(limit) => ImageError::TooLarge(limit.to_string()),
        image::ImageError::IoError(io) if io.kind() != io::ErrorKind::UnexpectedEof => {
            ImageError::Io(io)
        }
        other => ImageError::Invalid(other),
    }
}

fn swaps_sides(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_side_then_pixels_then_bytes() {
        let limits = ImageLimits {
            side_px_max: 100,
            pixels_max: 5_000,
            decoded_bytes_max: 12_000,
        };
        assert!(check(100, 50, 10_000, &limits).is_ok());
        let side = check(101, 1, 0, &limits).unwrap_err().to_string();
        assert!(side.contains("px a side"), "{side}");
        let pixels = check(100, 51, 0, &limits).unwrap_err().to_string();
        assert!(pixels.contains("pixels"), "{pixels}");
        let bytes = check(50, 50, 12_001, &limits).unwrap_err().to_string();
        assert!(bytes.contains("bytes"), "{bytes}");
        assert!(check(0, 10, 0, &limits).is_err());
    }
}
