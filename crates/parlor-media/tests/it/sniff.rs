use std::io::Cursor;

use image::ImageFormat;
use parlor_media::{ALL_CONTENT_TYPES, ContentType, HEAD_BYTES, is_inline_image, sniff};

use crate::support::opaque;

fn with(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.resize(len.max(prefix.len()), 0);
    bytes
}

#[test]
fn magic_bytes_give_the_type() {
    let ftyp = |brand: &[u8; 4]| [b"\0\0\0\x18ftyp".as_slice(), brand, b"\0\0\0\0"].concat();
    let cases: Vec<(&str, Vec<u8>, ContentType)> = vec![
        (
            "png",
            with(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 64),
            ContentType::Png,
        ),
        (
            "jpeg",
            with(b"\xff\xd8\xff\xe0\0\x10JFIF", 64),
            ContentType::Jpeg,
        ),
        ("gif87", with(b"GIF87a", 64), ContentType::Gif),
        ("gif89", with(b"GIF89a", 64), ContentType::Gif),
        (
            "webp",
            with(b"RIFF\x24\0\0\0WEBPVP8 ", 64),
            ContentType::Webp,
        ),
        ("wav", with(b"RIFF\x24\0\0\0WAVEfmt ", 64), ContentType::Wav),
        (
            "avi is not wav",
            with(b"RIFF\x24\0\0\0AVI LIST", 64),
            ContentType::OctetStream,
        ),
        (
            "pdf",
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec(),
            ContentType::Pdf,
        ),
        ("zip", with(b"PK\x03\x04\x14\0", 64), ContentType::Zip),
        ("empty zip", with(b"PK\x05\x06", 22), ContentType::Zip),
        // A docx is a zip whose first entry is [Content_Types].xml.
        (
            "docx",
            [b"PK\x03\x04\x14\0\x06\0".as_slice(), b"[Content_Types].xml"].concat(),
            ContentType::Zip,
        ),
        ("gzip", with(b"\x1f\x8b\x08\0", 32), ContentType::Gzip),
        ("mp4 isom", ftyp(b"isom"), ContentType::Mp4),
        ("mp4 mp42", ftyp(b"mp42"), ContentType::Mp4),
        ("m4a", ftyp(b"M4A "), ContentType::M4a),
        ("quicktime", ftyp(b"qt  "), ContentType::QuickTime),
        (
            "old quicktime",
            with(b"\0\0\0\x08wide", 32),
            ContentType::QuickTime,
        ),
        ("heic", ftyp(b"heic"), ContentType::OctetStream),
        ("avif", ftyp(b"avif"), ContentType::OctetStream),
        (
            "webm",
            with(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", 64),
            ContentType::Webm,
        ),
        (
            "matroska",
            with(
                b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska",
                64,
            ),
            ContentType::OctetStream,
        ),
        ("mp3 id3", with(b"ID3\x04\0\0", 64), ContentType::Mp3),
        ("mp3 frame", with(b"\xff\xfb\x90\x64", 64), ContentType::Mp3),
        ("ogg", with(b"OggS\0\x02", 64), ContentType::Ogg),
        ("flac", with(b"fLaC\0\0\0\x22", 64), ContentType::Flac),
    ];
    for (what, bytes, expected) in cases {
        assert_eq!(sniff(&bytes), expected, "{what}");
    }
}

#[test]
fn text_is_valid_utf8_without_nul() {
    assert_eq!(sniff(b"hello\nworld\n"), ContentType::Text);
    assert_eq!(sniff("naïve café, 東京\r\n".as_bytes()), ContentType::Text);
    assert_eq!(sniff(b"\xef\xbb\xbfwith a BOM"), ContentType::Text);
    assert_eq!(sniff(b"hello\0world"), ContentType::OctetStream);
    assert_eq!(sniff(b"latin-1 caf\xe9"), ContentType::OctetStream);
    // UTF-16 text has NULs: bytes we do not claim to know.
    assert_eq!(sniff(b"\xff\xfeh\0i\0"), ContentType::OctetStream);
    assert_eq!(sniff(b""), ContentType::OctetStream);
    assert_eq!(ContentType::Text.mime(), "text/plain; charset=utf-8");
}

#[test]
fn svg_and_html_are_never_served_as_such() {
    let documents: [&[u8]; 4] = [
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
        b"<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>",
        b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>",
        b"\xef\xbb\xbf<html><script>x()</script></html>",
    ];
    for doc in documents {
        assert_eq!(
            sniff(doc),
            ContentType::Text,
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    // Not UTF-8: not even text.
    assert_eq!(sniff(b"<svg>\xff\xfe</svg>"), ContentType::OctetStream);
    for t in ALL_CONTENT_TYPES {
        assert!(
            !t.mime().contains("svg") && !t.mime().contains("html"),
            "{t}"
        );
    }
}

#[test]
fn random_bytes_are_octet_stream() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..HEAD_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    assert_eq!(sniff(&noise), ContentType::OctetStream);
}

#[test]
fn files_from_real_encoders_sniff_as_their_format() {
    let image = opaque(16, 16);
    for (format, expected) in [
        (ImageFormat::Png, ContentType::Png),
        (ImageFormat::Jpeg, ContentType::Jpeg),
        (ImageFormat::Gif, ContentType::Gif),
        (ImageFormat::WebP, ContentType::Webp),
    ] {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        bytes.truncate(HEAD_BYTES);
        assert_eq!(sniff(&bytes), expected, "{format:?}");
    }
}

#[test]
fn only_png_jpeg_gif_and_webp_are_inline_images() {
    let inline: Vec<_> = ALL_CONTENT_TYPES
        .into_iter()
        .filter(is_inline_image)
        .collect();
    assert_eq!(
        inline,
        [
            ContentType::Png,
            ContentType::Jpeg,
            ContentType::Gif,
            ContentType::Webp
        ]
    );
}
