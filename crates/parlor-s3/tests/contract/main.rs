//! The blob store contract against `S3BlobStore` on the S3 emulator that `scripts/services
//! up` runs (ministack): `PARLOR_TEST_S3_URL`. A missing variable fails the test: nothing is
//! skipped silently. Each test has a key prefix of its own in one shared bucket, removed at
//! the end.

mod blobs;
