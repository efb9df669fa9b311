//! Test files made on the spot: images from the image crate's encoders, and PNGs written byte
//! by byte whose header declares more than the pixels they carry.

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

/// An opaque picture with detail in it (a gradient and a pattern), so encoders do real work.
pub fn opaque(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    }))
}

/// A picture whose left half is transparent.
pub fn half_transparent(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgba8(RgbaImage::from_fn(width, height, |x, _| {
        Rgba([200, 30, 30, if x < width / 2 { 0 } else { 255 }])
    }))
}

pub fn save(dir: &Path, name: &str, image: &DynamicImage, format: ImageFormat) -> PathBuf {
    let path = dir.join(name);
    image
        .save_with_format(&path, format)
        .expect("encode a test image");
    path
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a test file");
    path
}

/// A valid 8-bit grayscale PNG of `width` × `height` black pixels whose IDAT is a complete
/// zlib stream of the rows (each a filter byte and `width` zeros), encoded as long
/// back-references: about 1.6 bytes of file a kilobyte of pixels. With `rows_written` below
/// `height`, only that many rows are in the stream (enough for a header the size of a
/// country, without writing megabytes); a decoder would find it truncated.
pub fn zeros_png(width: u32, height: u32, rows_written: u32) -> Vec<u8> {
    let raw_len = u64::from(rows_written) * (u64::from(width) + 1);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8 bits, grayscale, deflate, adaptive, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_zeros(raw_len));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of `len` zero bytes: one fixed-Huffman block holding a literal zero and then
/// copies of 258 bytes at distance 1, with the shorter copy or literals at the end.
fn zlib_zeros(len: u64) -> Vec<u8> {
    let mut bits = BitWriter::default();
    bits.put(1, 1); // final block
    bits.put(0b01, 2); // fixed Huffman codes
    if len > 0 {
        bits.literal_zero();
        let mut left = len - 1;
        while left >= 3 {
            let copy = left.min(258);
            // 258 would leave 1 or 2 bytes, which a copy cannot be: take 255 then.
            let copy = if (1..3).contains(&(left - copy)) {
                copy - 3
            } else {
                copy
            };
            bits.copy_distance_one(copy as u16);
            left -= copy;
        }
        for _ in 0..left {
            bits.literal_zero();
        }
    }
    bits.put_code(0b000_0000, 7); // end of block (256)
    let mut out = vec![0x78, 0x01];
    out.extend_from_slice(&bits.finish());
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let b = (len % 65_521) as u32;
    out.extend_from_slice(&((b << 16) | 1).to_be_bytes());
    out
}

#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    used: u32,
}

impl BitWriter {
    /// Raw values go least significant bit first.
    fn put(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.current |= ((value >> i) & 1) << self.used;
            self.used += 1;
            if self.used == 8 {
                self.bytes.push(self.current as u8);
                self.current = 0;
                self.used = 0;
            }
        }
    }

    /// Huffman codes go most significant bit first.
    fn put_code(&mut self, code: u32, count: u32) {
        for i in (0..count).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn literal_zero(&mut self) {
        self.put_code(0b0011_0000, 8);
    }

    /// A copy of `len` (3..=258) bytes from distance 1.
    fn copy_distance_one(&mut self, len: u16) {
        // RFC 1951 3.2.5: length codes 257..285, their extra bits, then distance code 0.
        const BASE: [u16; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const EXTRA: [u32; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        let index = BASE.iter().rposition(|&base| base <= len).unwrap();
        let symbol = 257 + index as u32;
        if symbol <= 279 {
            self.put_code(symbol - 256, 7);
        } else {
            self.put_code(0b1100_0000 + (symbol - 280), 8);
        }
        self.put(u32::from(len - BASE[index]), EXTRA[index]);
        self.put_code(0, 5); // distance code 0: distance 1
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.bytes.push(self.current as u8);
        }
        self.bytes
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A minimal little-endian EXIF block (TIFF header and one IFD) with only an orientation.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut exif = b"II*\0".to_vec();
    exif.extend_from_slice(&8u32.to_le_bytes()); // IFD0 right after the header
    exif.extend_from_slice(&1u16.to_le_bytes()); // one entry
    exif.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    exif.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    exif.extend_from_slice(&1u32.to_le_bytes()); // one value
    exif.extend_from_slice(&value.to_le_bytes());
    exif.extend_from_slice(&[0, 0]); // padding of the 4-byte value field
    exif.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    exif
}
