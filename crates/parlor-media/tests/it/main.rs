//! Integration tests of parlor-media on real files in temporary directories. Every image is
//! generated here with the image crate's encoders (or written byte by byte, for the bombs),
//! so there are no binary fixtures.

mod images;
mod names;
mod properties;
mod sniff;
mod stage;
mod support;
