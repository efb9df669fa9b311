//! A file's content type, from its first bytes: never from the client's name or header.
//!
//! A hand-written table rather than the `infer` crate: we serve a closed set of types we know
//! how to present, and a type outside it must come out as `application/octet-stream`. `infer`
//! knows some 200 types, among them `text/html` and `text/xml`, which we would have to filter
//! out again; it has no UTF-8 text rule, which we need; and the table below is short enough to
//! read whole.

use std::fmt;

use crate::stage::HEAD_BYTES;

/// What a file is, as far as its bytes say. Every variant maps to one MIME type
/// ([`mime`](Self::mime)) and back ([`from_mime`](Self::from_mime)), so a stored type can be
/// read again.
///
/// There is deliberately no SVG or HTML: both can carry script, which a browser would run with
/// the user's session if we served them as `image/svg+xml` or `text/html` from our origin.
/// Being UTF-8 text, they sniff as [`Text`](Self::Text) (`text/plain`), shown as source and
/// never rendered; with invalid UTF-8 or a NUL they are [`OctetStream`](Self::OctetStream).
///
/// The zip-based document formats (docx, xlsx, odt, epub…) are [`Zip`](Self::Zip): telling
/// them apart means reading the archive's entries, which need not be in the first bytes, and
/// nothing we do depends on it (they are downloads either way; the file name tells the user).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentType {
    Png,
    Jpeg,
    Gif,
    Webp,
    Pdf,
    Zip,
    Gzip,
    /// An ISO media file (`ftyp`) of any video brand but QuickTime's.
    Mp4,
    /// An ISO media file of an audio-only brand (`M4A `, `M4B `).
    M4a,
    QuickTime,
    Webm,
    Mp3,
    Ogg,
    Flac,
    Wav,
    /// Valid UTF-8 without NUL in the head: `text/plain; charset=utf-8`. Judged on the head
    /// alone, so a file that turns binary later is still called text (it is a download either
    /// way).
    Text,
    /// Anything else, including the ISO image brands (HEIC, AVIF) we do not show.
    OctetStream,
}

/// Every variant, for the round trip test and whoever needs to list them.
pub const ALL_CONTENT_TYPES: [ContentType; 17] = [
    ContentType::Png,
    ContentType::Jpeg,
    ContentType::Gif,
    ContentType::Webp,
    ContentType::Pdf,
    ContentType::Zip,
    ContentType::Gzip,
    ContentType::Mp4,
    ContentType::M4a,
    ContentType::QuickTime,
    ContentType::Webm,
    ContentType::Mp3,
    ContentType::Ogg,
    ContentType::Flac,
    ContentType::Wav,
    ContentType::Text,
    ContentType::OctetStream,
];

impl ContentType {
    /// The MIME type to store and to send as `Content-Type`.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
            Self::Pdf => "application/pdf",
            Self::Zip => "application/zip",
            Self::Gzip => "application/gzip",
            Self::Mp4 => "video/mp4",
            Self::M4a => "audio/mp4",
            Self::QuickTime => "video/quicktime",
            Self::Webm => "video/webm",
            Self::Mp3 => "audio/mpeg",
            Self::Ogg => "audio/ogg",
            Self::Flac => "audio/flac",
            Self::Wav => "audio/wav",
            Self::Text => "text/plain; charset=utf-8",
            Self::OctetStream => "application/octet-stream",
        }
    }

    /// The type whose [`mime`](Self::mime) is exactly `mime`, if any.
    pub fn from_mime(mime: &str) -> Option<Self> {
        ALL_CONTENT_TYPES.into_iter().find(|t| t.mime() == mime)
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// Whether a browser may be shown the file inline as an image: PNG, JPEG, GIF and WebP only,
/// the formats every browser decodes and none of which runs script.
pub fn is_inline_image(content_type: &ContentType) -> bool {
    matches!(
        content_type,
        ContentType::Png | ContentType::Jpeg | ContentType::Gif | ContentType::Webp
    )
}

/// The type of a file whose first bytes are `head`: the first [`HEAD_BYTES`] of the file, or
/// all of it if it is shorter (as [`crate::Staged::head`] keeps them). Any input gives an
/// answer; nothing recognised is [`ContentType::OctetStream`].
pub fn sniff(head: &[u8]) -> ContentType {
    magic(head).unwrap_or_else(|| {
        if is_text(head) {
            ContentType::Text
        } else {
            ContentType::OctetStream
        }
    })
}

fn magic(head: &[u8]) -> Option<ContentType> {
    let at = |offset: usize, bytes: &[u8]| head.get(offset..offset + bytes.len()) == Some(bytes);
    let found = if at(0, b"\x89PNG\r\n\x1a\n") {
        ContentType::Png
    } else if at(0, b"\xff\xd8\xff") {
        ContentType::Jpeg
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        ContentType::Gif
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        ContentType::Webp
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        ContentType::Wav
    } else if at(0, b"%PDF-") {
        ContentType::Pdf
    } else if at(0, b"PK\x03\x04") || at(0, b"PK\x05\x06") {
        // A local file header, or the end record that is all an empty archive has.
        ContentType::Zip
    } else if at(0, b"\x1f\x8b\x08") {
        ContentType::Gzip
    } else if at(4, b"ftyp") {
        iso_media(head.get(8..12)?)
    } else if at(4, b"moov") || at(4, b"mdat") || at(4, b"wide") {
        // QuickTime files older than the `ftyp` box start straight with an atom.
        ContentType::QuickTime
    } else if at(0, b"\x1a\x45\xdf\xa3") {
        // EBML: WebM is Matroska with DocType "webm", which sits in the first few bytes.
        let header = &head[..head.len().min(64)];
        if header.windows(4).any(|w| w == b"webm") {
            ContentType::Webm
        } else {
            return None;
        }
    } else if at(0, b"OggS") {
        ContentType::Ogg
    } else if at(0, b"fLaC") {
        ContentType::Flac
    } else if at(0, b"ID3") || is_mp3_frame(head) {
        ContentType::Mp3
    } else {
        return None;
    };
    Some(found)
}

fn iso_media(brand: &[u8]) -> ContentType {
    match brand {
        b"qt  " => ContentType::QuickTime,
        b"M4A " | b"M4B " => ContentType::M4a,
        b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1" | b"avif" | b"avis" => {
            ContentType::OctetStream
        }
        _ => ContentType::Mp4,
    }
}

/// An MPEG audio layer III frame header without an ID3 tag before it: the 11-bit sync, a
/// defined version, layer III, and a bitrate and sample rate that are not reserved.
fn is_mp3_frame(head: &[u8]) -> bool {
    let [0xff, b1, b2, ..] = *head else {
        return false;
    };
    let sync = b1 & 0xe0 == 0xe0;
    let version_defined = (b1 >> 3) & 0b11 != 0b01;
    let layer_three = (b1 >> 1) & 0b11 == 0b01;
    let bitrate_defined = b2 >> 4 != 0b1111;
    let rate_defined = (b2 >> 2) & 0b11 != 0b11;
    sync && version_defined && layer_three && bitrate_defined && rate_defined
}

/// Valid UTF-8 without NUL. A head cut at [`HEAD_BYTES`] may end inside a character, which
/// does not count against it.
fn is_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() >= HEAD_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_round_trips_for_every_type() {
        for t in ALL_CONTENT_TYPES {
            assert_eq!(ContentType::from_mime(t.mime()), Some(t));
        }
        assert_eq!(ContentType::from_mime("image/svg+xml"), None);
    }

    #[test]
    fn mp3_frame_needs_layer_three_and_defined_fields() {
        assert!(is_mp3_frame(&[0xff, 0xfb, 0x90, 0x64]));
        assert!(is_mp3_frame(&[0xff, 0xf3, 0x40, 0x00]));
        assert!(!is_mp3_frame(&[0xff, 0xf1, 0x50, 0x80])); // AAC ADTS: layer bits 00
        assert!(!is_mp3_frame(&[0xff, 0xfb, 0xf0, 0x00])); // bitrate index 15
        assert!(!is_mp3_frame(&[0xff, 0xfb]));
    }

    #[test]
    fn a_character_cut_by_the_head_limit_is_still_text() {
        let mut head = format!("a{}", "é".repeat(HEAD_BYTES / 2)).into_bytes();
        head.truncate(HEAD_BYTES); // ends with the first byte of an "é"
        assert_eq!(head.last(), Some(&0xc3));
        assert!(is_text(&head));
        // The same cut in a whole (short) file is not valid UTF-8.
        assert!(!is_text(&head[HEAD_BYTES - 3..]));
    }
}
