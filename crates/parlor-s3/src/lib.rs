//! Parlor's blob store on S3-compatible object storage: AWS S3 and MinIO in production, an
//! emulator (ministack) in tests. [`S3BlobStore`] implements `parlor_core::blobs::BlobStore`.
//!
//! Built on object_store's S3 client (SigV4 signing, the credential chain, retries with
//! backoff) over reqwest with rustls and ring: no AWS SDK and no aws-lc-rs, so the default
//! build holds it. Depends on `parlor-core`; never on `parlor-server` or another backend.

mod bucket;
mod error;
mod options;
mod store;
mod upload;

pub use options::{S3Credentials, S3Options};
pub use store::S3BlobStore;
