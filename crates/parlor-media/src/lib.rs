//! `parlor-media`: what the server does with the bytes of an uploaded file.
//!
//! It streams an upload into a staged file while hashing it ([`stage`]), says what the file
//! is from its bytes ([`sniff`]), reads an image's size and makes its thumbnail under limits
//! that refuse a decompression bomb ([`probe_image`], [`thumbnail`], async in
//! [`ImageWorker`]), and cleans the name a client gave ([`file_name`],
//! [`content_disposition`]). It knows files and bytes, not messages or HTTP: it depends on
//! nothing of Parlor's, and the gateway decides what to answer.
//!
//! # Map
//!
//! - `stage`: [`stage`] → [`Staged`] (a temporary file removed unless kept), [`StageError`].
//! - `sniff`: [`ContentType`], magic bytes and the UTF-8 text rule, [`is_inline_image`].
//! - `images`: [`ImageLimits`], [`probe_image`] (header only), [`ImageError`].
//! - `thumbnail`: [`thumbnail`] (decode, scale, orient, encode), [`ImageWorker`].
//! - `name`: [`file_name`], [`content_disposition`].
//!
//! # Invariants
//!
//! - A content type comes from the bytes, never from the client; SVG and HTML are never
//!   typed as such (they can carry script), and only PNG, JPEG, GIF and WebP are inline images.
//! - A staged file never holds more than the limit, and a failed or abandoned upload leaves
//!   no file behind.
//! - Image limits are checked from the header before decoding allocates.
//! - A cleaned name has no path separator or control character and is at most 255 bytes.

mod images;
mod name;
mod sniff;
mod stage;
mod thumbnail;

pub use images::{ImageError, ImageInfo, ImageLimits, probe_image};
pub use name::{Disposition, NAME_BYTES_MAX, NameError, content_disposition, file_name};
pub use sniff::{ALL_CONTENT_TYPES, ContentType, is_inline_image, sniff};
pub use stage::{HEAD_BYTES, StageError, Staged, stage};
pub use thumbnail::{ImageWorker, THUMBNAIL_SIDE_PX, Thumbnail, thumbnail};
