//! [`S3BlobStore`]: one object per blob, named `<key_prefix>/<key>`.

use std::ops::Range;
use std::path::Path as LocalPath;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use parlor_core::BackendError;
use parlor_core::blobs::{BlobKey, BlobRead, BlobStore, RangeError, resolve_range};

use crate::error::backend_error;
use crate::options::S3Options;
use crate::{bucket, upload};

/// A [`BlobStore`] on an S3-compatible bucket.
///
/// A put is one `PUT` (files up to `part_bytes`) or a multipart upload; either way the
/// object appears whole or not at all, and S3 answers only once it is stored durably. A
/// key already stored is not uploaded again (one `HEAD` first). Reads are ranged `GET`s,
/// streamed as they arrive. S3 reads its own writes, so a `get` after an `Ok` put finds it.
#[derive(Clone, Debug)]
pub struct S3BlobStore {
    pub(crate) client: AmazonS3,
    bucket: String,
    prefix: Path,
    pub(crate) part_bytes: usize,
    pub(crate) parts_in_flight: usize,
}

impl S3BlobStore {
    /// A store on the bucket `options` describe, ready to serve: creates the bucket first
    /// if `create_bucket` is set (and this account does not have it), then checks that the
    /// bucket answers (one listing that returns nothing), so that a wrong bucket, endpoint or
    /// credentials fail the start rather than the first upload. `Unavailable` if it does not
    /// answer; `Rejected` for options that can never work.
    pub async fn open(options: &S3Options) -> Result<S3BlobStore, BackendError> {
        let store = S3BlobStore::new(options)?;
        if options.create_bucket {
            bucket::create_bucket(&store.client, options).await?;
        }
        store.check().await?;
        Ok(store)
    }

    /// A store on the bucket `options` describe, without a request: the first one finds
    /// out whether the bucket is there.
    pub fn new(options: &S3Options) -> Result<S3BlobStore, BackendError> {
        Ok(S3BlobStore {
            prefix: options.prefix()?,
            client: options.client()?,
            bucket: options.bucket.clone(),
            part_bytes: options.part_bytes,
            parts_in_flight: options.parts_in_flight,
        })
    }

    /// Lists the keys after the last possible blob key under the prefix: none, but the bucket
    /// has to exist and let these credentials in.
    async fn check(&self) -> Result<(), BackendError> {
        // Keys are hex: "g" sorts after every one of them.
        let after_every_key = self.prefix.clone().join("g");
        let mut listing = self
            .client
            .list_with_offset(Some(&self.prefix), &after_every_key);
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(backend_error(
                &format!("list bucket {} (is it there?)", self.bucket),
                error,
            )),
        }
    }

    /// The object that holds the blob `key`.
    pub fn object_path(&self, key: &BlobKey) -> Path {
        self.prefix.clone().join(key.as_str())
    }

    /// The underlying client, for tests that list or remove what a store wrote.
    #[doc(hidden)]
    pub fn object_store(&self) -> &AmazonS3 {
        &self.client
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put_file(
        &self,
        key: &BlobKey,
        staged: &LocalPath,
        len: u64,
    ) -> Result<(), BackendError> {
        upload::put_file(self, key, staged, len).await
    }

    async fn get(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobRead>, BackendError> {
        if let Some(range) = &range
            && range.start >= range.end
        {
            // HTTP cannot ask for no bytes: S3 would ignore such a header and send it all.
            return Err(RangeError::Empty {
                start: range.start,
                end: range.end,
            }
            .into());
        }
        let path = self.object_path(key);
        let options = GetOptions {
            range: range.clone().map(GetRange::Bounded),
            ..GetOptions::default()
        };
        match self.client.get_opts(&path, options).await {
            Ok(result) => Ok(Some(BlobRead {
                total_len: result.meta.size,
                range: result.range.clone(),
                body: Box::pin(
                    result
                        .into_stream()
                        .map_err(move |error| backend_error("read a blob", error)),
                ),
            })),
            Err(error @ object_store::Error::NotFound { .. }) if is_missing_bucket(&error) => {
                Err(backend_error(&format!("get {path}"), error))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => {
                // A range past the end is a 416 that object_store reports like any failure:
                // the blob's length tells them apart.
                if range.is_some() {
                    match self.len(key).await? {
                        None => return Ok(None),
                        Some(total_len) => {
                            resolve_range(range.as_ref(), total_len)?;
                        }
                    }
                }
                Err(backend_error(&format!("get {path}"), error))
            }
        }
    }

    async fn len(&self, key: &BlobKey) -> Result<Option<u64>, BackendError> {
        let path = self.object_path(key);
        match self.client.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(backend_error(&format!("head {path}"), error)),
        }
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), BackendError> {
        let path = self.object_path(key);
        match self.client.delete(&path).await {
            Err(error @ object_store::Error::NotFound { .. }) if is_missing_bucket(&error) => {
                Err(backend_error(&format!("delete {path}"), error))
            }
            // S3 answers 204 whether or not the object was there.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(backend_error(&format!("delete {path}"), error)),
        }
    }
}

/// object_store reports a missing bucket as a missing object; S3's error body says which
/// (a `HEAD` has no body, so `len` cannot tell: `open` checks the bucket instead).
fn is_missing_bucket(error: &object_store::Error) -> bool {
    error.to_string().contains("NoSuchBucket")
}
