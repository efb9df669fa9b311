//! `put_file`: a file up to `part_bytes` in one `PUT`, a longer one as a multipart upload
//! in parts of `part_bytes`, read from the staged file as they are sent. At most
//! `part_bytes × parts_in_flight` of a file is in memory at once.

use std::io;
use std::path::Path as LocalPath;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use parlor_core::BackendError;
use parlor_core::blobs::{BlobKey, BlobStore};
use tokio::fs::File;
use tokio::io::AsyncReadExt;

use crate::error::backend_error;
use crate::store::S3BlobStore;

pub(crate) async fn put_file(
    store: &S3BlobStore,
    key: &BlobKey,
    staged: &LocalPath,
    len: u64,
) -> Result<(), BackendError> {
    let mut file = open_staged(staged, len).await?;
    if store.len(key).await?.is_some() {
        return Ok(());
    }
    let path = store.object_path(key);
    if len <= store.part_bytes as u64 {
        let bytes = read_part(&mut file, staged, len as usize).await?;
        store
            .client
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|error| backend_error(&format!("put {path}"), error))?;
        return Ok(());
    }
    let mut upload =
        store.client.put_multipart(&path).await.map_err(|error| {
            backend_error(&format!("start a multipart upload of {path}"), error)
        })?;
    let sent = send_parts(store, upload.as_mut(), &mut file, staged, len).await;
    let completed = match sent {
        Ok(()) => upload
            .complete()
            .await
            .map(drop)
            .map_err(|error| backend_error(&format!("complete the upload of {path}"), error)),
        Err(error) => Err(error),
    };
    if completed.is_err() {
        // Best effort: parts left behind cost storage until a lifecycle rule removes them
        // (which a production bucket should have), but never show as the blob.
        let _ = upload.abort().await;
    }
    completed
}

/// Reads and sends the parts in order, `parts_in_flight` at a time.
async fn send_parts(
    store: &S3BlobStore,
    upload: &mut dyn MultipartUpload,
    file: &mut File,
    staged: &LocalPath,
    len: u64,
) -> Result<(), BackendError> {
    let mut in_flight: FuturesUnordered<object_store::UploadPart> = FuturesUnordered::new();
    let mut left = len;
    while left > 0 {
        if in_flight.len() >= store.parts_in_flight
            && let Some(sent) = in_flight.next().await
        {
            sent.map_err(|error| backend_error("upload a part", error))?;
        }
        let size = left.min(store.part_bytes as u64);
        let part = read_part(file, staged, size as usize).await?;
        in_flight.push(upload.put_part(PutPayload::from(part)));
        left -= size;
    }
    while let Some(sent) = in_flight.next().await {
        sent.map_err(|error| backend_error("upload a part", error))?;
    }
    Ok(())
}

/// The staged file, if it is a file of `len` bytes.
async fn open_staged(staged: &LocalPath, len: u64) -> Result<File, BackendError> {
    let file = match File::open(staged).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(BackendError::rejected(format!(
                "the staged file {} is missing",
                staged.display()
            ))
            .with_source(error));
        }
        Err(error) => return Err(local_error(staged, error)),
    };
    let metadata = file
        .metadata()
        .await
        .map_err(|error| local_error(staged, error))?;
    if !metadata.is_file() {
        return Err(BackendError::rejected(format!(
            "the staged {} is not a file",
            staged.display()
        )));
    }
    if metadata.len() != len {
        return Err(BackendError::rejected(format!(
            "the staged file {} has {} bytes, not {len}",
            staged.display(),
            metadata.len()
        )));
    }
    Ok(file)
}

/// The next `size` bytes of the staged file.
async fn read_part(
    file: &mut File,
    staged: &LocalPath,
    size: usize,
) -> Result<Bytes, BackendError> {
    let mut part = vec![0; size];
    match file.read_exact(&mut part).await {
        Ok(_) => Ok(Bytes::from(part)),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            Err(BackendError::rejected(format!(
                "the staged file {} got shorter while it was sent",
                staged.display()
            ))
            .with_source(error))
        }
        Err(error) => Err(local_error(staged, error)),
    }
}

fn local_error(staged: &LocalPath, error: io::Error) -> BackendError {
    BackendError::unavailable(format!(
        "read the staged file {}: {error}",
        staged.display()
    ))
    .with_source(error)
}
