use std::num::NonZeroUsize;

use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::{
    Delay, DynamicImage, Frame, GenericImageView, ImageEncoder, ImageFormat, Rgba, RgbaImage,
};
use parlor_media::{
    ContentType, ImageError, ImageLimits, ImageWorker, THUMBNAIL_SIDE_PX, probe_image, thumbnail,
};

use crate::support::{exif_orientation, half_transparent, opaque, save, write, zeros_png};

fn limits() -> ImageLimits {
    ImageLimits::default()
}

fn decoded(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).expect("a thumbnail decodes")
}

#[test]
fn probe_reads_the_size_of_each_inline_format() {
    let dir = tempfile::tempdir().unwrap();
    let image = opaque(123, 45);
    for (format, content_type) in [
        (ImageFormat::Png, ContentType::Png),
        (ImageFormat::Jpeg, ContentType::Jpeg),
        (ImageFormat::Gif, ContentType::Gif),
        (ImageFormat::WebP, ContentType::Webp),
    ] {
        // A misleading name: the format comes from the bytes.
        let path = save(dir.path(), "picture.txt", &image, format);
        let info = probe_image(&path, &limits()).unwrap();
        assert_eq!(info.content_type, content_type, "{format:?}");
        assert_eq!((info.width_px, info.height_px), (123, 45), "{format:?}");
    }
}

#[test]
fn a_thumbnail_keeps_the_aspect_ratio_within_the_side() {
    let dir = tempfile::tempdir().unwrap();
    for (width, height, expected) in [
        (1000, 500, (320, 160)),
        (500, 1000, (160, 320)),
        (999, 333, (320, 107)),
        (4000, 10, (320, 1)),
        (320, 320, (320, 320)),
    ] {
        let path = save(
            dir.path(),
            "wide.png",
            &opaque(width, height),
            ImageFormat::Png,
        );
        let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
        assert_eq!(
            (thumb.width_px, thumb.height_px),
            expected,
            "{width}×{height}"
        );
        assert_eq!(decoded(&thumb.bytes).dimensions(), expected);
        assert_eq!(
            (thumb.original.width_px, thumb.original.height_px),
            (width, height)
        );
    }
}

#[test]
fn a_small_image_is_not_enlarged() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "small.png", &opaque(100, 50), ImageFormat::Png);
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!((thumb.width_px, thumb.height_px), (100, 50));
}

#[test]
fn an_opaque_image_gives_a_jpeg_and_a_transparent_one_a_webp() {
    let dir = tempfile::tempdir().unwrap();

    let path = save(
        dir.path(),
        "opaque.png",
        &opaque(640, 480),
        ImageFormat::Png,
    );
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Jpeg);
    assert_eq!(parlor_media::sniff(&thumb.bytes), ContentType::Jpeg);

    let path = save(
        dir.path(),
        "alpha.png",
        &half_transparent(640, 480),
        ImageFormat::Png,
    );
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Webp);
    assert_eq!(parlor_media::sniff(&thumb.bytes), ContentType::Webp);
    let small = decoded(&thumb.bytes).to_rgba8();
    assert_eq!(
        small.get_pixel(0, 0).0[3],
        0,
        "the transparent half stays transparent"
    );
    assert_eq!(small.get_pixel(319, 0).0[3], 255);

    // An alpha channel that every pixel leaves opaque is no reason for a WebP.
    let unused_alpha = DynamicImage::ImageRgba8(opaque(640, 480).to_rgba8());
    let path = save(
        dir.path(),
        "unused-alpha.png",
        &unused_alpha,
        ImageFormat::Png,
    );
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Jpeg);
}

#[test]
fn a_grayscale_image_gives_a_grayscale_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    let gray = DynamicImage::ImageLuma8(opaque(400, 400).to_luma8());
    let path = save(dir.path(), "gray.png", &gray, ImageFormat::Png);
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Jpeg);
    assert_eq!(decoded(&thumb.bytes).color(), image::ColorType::L8);
}

#[test]
fn an_animated_gif_gives_its_first_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frame = |color: [u8; 4]| {
        Frame::from_parts(
            RgbaImage::from_pixel(64, 32, Rgba(color)),
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        )
    };
    let mut gif = Vec::new();
    GifEncoder::new(&mut gif)
        .encode_frames([frame([255, 0, 0, 255]), frame([0, 0, 255, 255])])
        .unwrap();
    let path = write(dir.path(), "animated.gif", &gif);

    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!((thumb.width_px, thumb.height_px), (64, 32));
    let pixel = decoded(&thumb.bytes).to_rgb8().get_pixel(10, 10).0;
    assert!(
        pixel[0] > 200 && pixel[2] < 50,
        "the first frame is red, got {pixel:?}"
    );
}

#[test]
fn a_jpeg_turned_by_exif_is_probed_and_thumbnailed_upright() {
    let dir = tempfile::tempdir().unwrap();
    // Stored 400×200 with its top row white; orientation 6 means "turn 90° clockwise to show".
    let stored = DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 200, |_, y| {
        if y < 20 {
            image::Rgb([255, 255, 255])
        } else {
            image::Rgb([0, 0, 0])
        }
    }));
    let mut jpeg = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut jpeg, 90);
    encoder.set_exif_metadata(exif_orientation(6)).unwrap();
    encoder
        .write_image(stored.as_bytes(), 400, 200, image::ExtendedColorType::Rgb8)
        .unwrap();
    let path = write(dir.path(), "phone.jpg", &jpeg);

    let info = probe_image(&path, &limits()).unwrap();
    assert_eq!((info.width_px, info.height_px), (200, 400));

    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!((thumb.width_px, thumb.height_px), (160, 320));
    // Turned clockwise, the white top row becomes the right column.
    let upright = decoded(&thumb.bytes).to_luma8();
    assert!(upright.get_pixel(155, 160).0[0] > 200);
    assert!(upright.get_pixel(5, 160).0[0] < 50);
}

#[test]
fn text_named_like_an_image_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "photo.png", b"definitely not a picture\n");
    let err = probe_image(&path, &limits()).unwrap_err();
    assert!(
        matches!(err, ImageError::NotAnImage(ContentType::Text)),
        "{err:?}"
    );
    let err = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap_err();
    assert!(
        matches!(err, ImageError::NotAnImage(ContentType::Text)),
        "{err:?}"
    );
}

#[test]
fn random_bytes_behind_an_image_magic_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed-seed xorshift: the same "random" bytes every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..20_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let magics: [&[u8]; 4] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"GIF89a",
        b"RIFF\x10\x4e\x00\x00WEBP",
    ];
    for magic in magics {
        let path = write(dir.path(), "fake.png", &[magic, &noise].concat());
        let probed = probe_image(&path, &limits());
        let thumbed = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits());
        for result in [probed.map(|_| ()), thumbed.map(|_| ())] {
            let err = result.expect_err("noise is no image");
            assert!(
                matches!(err, ImageError::Invalid(_) | ImageError::TooLarge(_)),
                "{magic:?}: {err:?}"
            );
        }
    }
}

#[test]
fn a_truncated_image_probes_but_does_not_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let mut png = Vec::new();
    opaque(300, 300)
        .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    png.truncate(png.len() / 2);
    let path = write(dir.path(), "cut.png", &png);
    assert!(probe_image(&path, &limits()).is_ok());
    let err = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap_err();
    assert!(matches!(err, ImageError::Invalid(_)), "{err:?}");
}

#[test]
fn the_zero_bomb_generator_makes_a_png_that_decodes() {
    // Checks the test's own bomb maker: the same bytes, at a size within the limits.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "zeros.png", &zeros_png(700, 300, 300));
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!((thumb.width_px, thumb.height_px), (320, 137));
    assert!(
        decoded(&thumb.bytes)
            .to_luma8()
            .pixels()
            .all(|p| p.0[0] < 8)
    );
}

#[test]
fn a_png_declaring_100000_px_a_side_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = zeros_png(100_000, 100_000, 10);
    assert!(
        bomb.len() < 10_000,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    let path = write(dir.path(), "bomb.png", &bomb);
    for result in [
        probe_image(&path, &limits()).map(|_| ()),
        thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "image too large: 100000×100000 px, the limit is 16384 px a side"
        );
    }
}

#[test]
fn a_complete_zero_bomb_within_the_side_limit_is_refused_for_its_pixels() {
    // 15000 × 15000 black pixels: 225 MB decoded from a 1.4 MB file that is valid to the end,
    // so only the limits (not a decode error) can stop it.
    let dir = tempfile::tempdir().unwrap();
    let bomb = zeros_png(15_000, 15_000, 15_000);
    assert!(bomb.len() < 2_000_000, "{} bytes", bomb.len());
    let path = write(dir.path(), "bomb.png", &bomb);
    let peak_before = peak_memory_bytes();
    let err = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap_err();
    let ImageError::TooLarge(why) = &err else {
        panic!("expected TooLarge, got {err:?}");
    };
    assert!(why.contains("225000000 pixels"), "{why}");
    // Decoding would have taken 225 MB; refusing takes next to nothing. (Other tests in the
    // same process allocate far less than the margin.)
    if let (Some(before), Some(after)) = (peak_before, peak_memory_bytes()) {
        assert!(
            after - before < 100 << 20,
            "peak memory grew by {} bytes",
            after - before
        );
    }
}

/// The process's peak resident memory (`VmHWM`), where /proc says it.
fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn sixteen_bit_images_are_thumbnailed_too() {
    let dir = tempfile::tempdir().unwrap();
    let rgb16 = DynamicImage::ImageRgb16(opaque(500, 250).to_rgb16());
    let path = save(dir.path(), "rgb16.png", &rgb16, ImageFormat::Png);
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Jpeg);
    assert_eq!((thumb.width_px, thumb.height_px), (320, 160));

    let rgba16 = DynamicImage::ImageRgba16(half_transparent(500, 250).to_rgba16());
    let path = save(dir.path(), "rgba16.png", &rgba16, ImageFormat::Png);
    let thumb = thumbnail(&path, THUMBNAIL_SIDE_PX, &limits()).unwrap();
    assert_eq!(thumb.content_type, ContentType::Webp);
    assert_eq!(decoded(&thumb.bytes).color(), image::ColorType::Rgba8);
}

#[test]
fn tighter_limits_refuse_by_pixels_and_by_decoded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(
        dir.path(),
        "rgba.png",
        &half_transparent(200, 100),
        ImageFormat::Png,
    );
    let by_pixels = ImageLimits {
        pixels_max: 19_999,
        ..limits()
    };
    let err = thumbnail(&path, THUMBNAIL_SIDE_PX, &by_pixels).unwrap_err();
    assert!(err.to_string().contains("pixels"), "{err}");
    // 200 × 100 RGBA is 80,000 bytes decoded.
    let by_bytes = ImageLimits {
        decoded_bytes_max: 79_999,
        ..limits()
    };
    let err = thumbnail(&path, THUMBNAIL_SIDE_PX, &by_bytes).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
    let by_side = ImageLimits {
        side_px_max: 199,
        ..limits()
    };
    let err = probe_image(&path, &by_side).unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
}

#[test]
fn a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = probe_image(&dir.path().join("absent"), &limits()).unwrap_err();
    assert!(matches!(err, ImageError::Io(_)), "{err:?}");
}

#[tokio::test]
async fn the_worker_runs_thumbnails_off_the_runtime_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let worker = ImageWorker::new(limits(), NonZeroUsize::MIN);
    let paths: Vec<_> = (0..4)
        .map(|i| {
            save(
                dir.path(),
                &format!("{i}.png"),
                &opaque(400 + i, 300),
                ImageFormat::Png,
            )
        })
        .collect();
    let thumbs = futures::future::join_all(
        paths
            .iter()
            .map(|p| worker.thumbnail(p.clone(), THUMBNAIL_SIDE_PX)),
    )
    .await;
    for thumb in thumbs {
        assert_eq!(thumb.unwrap().width_px, 320);
    }
    let info = worker.probe(paths[0].clone()).await.unwrap();
    assert_eq!((info.width_px, info.height_px), (400, 300));
    let bomb = write(dir.path(), "bomb.png", &zeros_png(100_000, 100_000, 1));
    let err = worker.thumbnail(bomb, THUMBNAIL_SIDE_PX).await.unwrap_err();
    assert!(matches!(err, ImageError::TooLarge(_)), "{err:?}");
}
