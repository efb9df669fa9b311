//! What probing, thumbnailing and staging cost on this machine, for the figures in the report
//! and to check a change: `cargo run --release -p parlor-media --example thumbnail_cost`.
//!
//! The photo is generated (smooth gradients and fine noise, so the JPEG is photo-sized, about
//! 1 byte a pixel at quality 90); the numbers are the median of a few runs.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageEncoder, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use parlor_media::{ImageLimits, THUMBNAIL_SIDE_PX, probe_image, stage, thumbnail};

const RUNS: usize = 5;

fn main() -> io::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = ImageLimits::default();

    let photo = write_photo(dir.path(), 4000, 3000)?;
    report_image("12 MP JPEG (4000×3000)", &photo, &limits);

    let png = dir.path().join("alpha.png");
    let mut noise = Noise(7);
    DynamicImage::ImageRgba8(RgbaImage::from_fn(2000, 1500, |x, y| {
        let n = noise.next();
        Rgba([
            (x / 8) as u8,
            (y / 6) as u8,
            n,
            if x < 1000 { 128 } else { 255 },
        ])
    }))
    .save_with_format(&png, ImageFormat::Png)
    .map_err(io::Error::other)?;
    report_image("3 MP RGBA PNG (2000×1500)", &png, &limits);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
    let staged = median(|| {
        let body =
            futures::stream::iter(std::iter::repeat_n(chunk.clone(), 400).map(Ok::<_, io::Error>));
        let staged = runtime
            .block_on(stage(body, dir.path(), u64::MAX))
            .expect("stage");
        drop(staged);
    });
    println!("stage 25 MiB (64 KiB chunks, SHA-256, fsync): {staged:?}");
    Ok(())
}

fn report_image(what: &str, path: &Path, limits: &ImageLimits) {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let probe = median(|| {
        probe_image(path, limits).expect("probe");
    });
    let mut thumb_bytes = 0;
    let thumb = median(|| {
        thumb_bytes = thumbnail(path, THUMBNAIL_SIDE_PX, limits)
            .expect("thumbnail")
            .bytes
            .len();
    });
    println!(
        "{what}, {size} bytes: probe {probe:?}, thumbnail {thumb:?} ({thumb_bytes} bytes out)"
    );
}

fn write_photo(dir: &Path, width: u32, height: u32) -> io::Result<std::path::PathBuf> {
    let mut noise = Noise(1);
    let image = RgbImage::from_fn(width, height, |x, y| {
        let n = noise.next() / 8;
        Rgb([
            ((x * 255 / width) as u8).saturating_add(n),
            ((y * 255 / height) as u8).saturating_add(n),
            (((x + y) / 16) as u8).wrapping_add(n),
        ])
    });
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(
            image.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(io::Error::other)?;
    let path = dir.join("photo.jpg");
    std::fs::write(&path, jpeg)?;
    Ok(path)
}

fn median(mut run: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

/// xorshift: noise with a fixed seed, so every run measures the same files.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u8
    }
}
