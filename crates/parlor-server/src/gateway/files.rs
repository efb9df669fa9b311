//! Files over HTTP: `POST /files` streams an upload to a staged file (hashed as it comes,
//! never whole in memory), sniffs its type from its bytes, probes and thumbnails an image,
//! records it in the store and then stores its blobs; `GET /files/{id}` (and `/thumbnail`)
//! serves it to whoever may read it, with ranges, and as an attachment unless it is an
//! image shown inline.
//!
//! The order of an upload is what keeps it safe: the store records the file first (so the
//! janitor cannot delete a blob it is about to use), the blobs are stored and fsynced next,
//! and only then does the uploader get the id a message can attach. A message the queue
//! accepted therefore never points at a file whose bytes are not stored.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use parlor_core::blobs::{BlobKey, BlobRead};
use parlor_core::error::{ApiError, BackendErrorKind};
use parlor_core::files::{FileInfo, ImageSize, StoredFile, Thumbnail, UploadRecorded};
use parlor_core::{ErrorCode, FileId};
use parlor_media::{Disposition, ImageError, StageError, Staged};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use super::Gateway;
use super::extract::Caller;
use super::http::{HttpError, query_of};
use crate::metrics as m;

/// How long one upload may take in all, and between two chunks of it: a client that
/// stalls gives its slot back.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const UPLOAD_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an upload waits for the janitor to finish deleting a blob it needs.
const BLOB_DELETION_WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub struct UploadParams {
    name: Option<String>,
}

fn invalid(message: impl Into<String>) -> HttpError {
    HttpError::new(ErrorCode::InvalidInput, message)
}

fn staging_failed(error: StageError, bytes_max: u64) -> HttpError {
    match error {
        StageError::TooLarge { .. } => HttpError::new(
            ErrorCode::BodyTooLarge,
            format!("a file is at most {bytes_max} bytes"),
        ),
        StageError::Empty => invalid("the file is empty"),
        StageError::StorageFull(_) => HttpError::new(
            ErrorCode::StorageFull,
            "the server is out of disk space; try again later",
        ),
        StageError::Body(_) => invalid("the upload was cut off"),
        StageError::Io(error) => {
            tracing::warn!(%error, "staging an upload failed");
            HttpError::new(ErrorCode::Unavailable, "the upload could not be stored")
        }
    }
}

pub async fn upload(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    params: Result<Query<UploadParams>, QueryRejection>,
    request: Request,
) -> Result<Response, HttpError> {
    let params = query_of(params)?;
    let config = &gateway.config.files;
    gateway
        .limits
        .uploads
        .check(&caller.user.id)
        .map_err(|wait| HttpError(ApiError::rate_limited("too many uploads; slow down", wait)))?;
    let name = params
        .name
        .as_deref()
        .ok_or_else(|| invalid("name (the file's name) is missing"))?;
    let name = parlor_media::file_name(name).map_err(|error| invalid(error.to_string()))?;
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        && length > config.bytes_max
    {
        return Err(staging_failed(
            StageError::TooLarge {
                body_bytes_max: config.bytes_max,
            },
            config.bytes_max,
        ));
    }

    type BodyError = Box<dyn std::error::Error + Send + Sync>;
    // Each chunk must come within the chunk timeout; a stalled body ends in an error.
    let body = futures::stream::unfold(
        Some(request.into_body().into_data_stream()),
        |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(UPLOAD_CHUNK_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
                Ok(Some(Err(error))) => Some((Err(Box::new(error) as BodyError), None)),
                Ok(None) => None,
                Err(elapsed) => Some((Err(Box::new(elapsed) as BodyError), None)),
            }
        },
    );
    let staged = tokio::time::timeout(
        UPLOAD_TIMEOUT,
        parlor_media::stage(body, &config.staging_dir, config.bytes_max),
    )
    .await
    .map_err(|_| invalid("the upload took too long"))?
    .map_err(|error| staging_failed(error, config.bytes_max))?;

    let prepared = prepare(&gateway, caller.user.id, name, &staged).await?;
    let file = prepared.file;
    record(&gateway, &file).await?;
    let stored = async {
        gateway
            .deps
            .blobs
            .put_file(&file.blob, staged.path(), staged.len_bytes())
            .await?;
        if let (Some(thumbnail), Some(staged)) = (&file.thumbnail, &prepared.thumbnail) {
            gateway
                .deps
                .blobs
                .put_file(&thumbnail.blob, staged.path(), staged.len_bytes())
                .await?;
        }
        Ok::<(), parlor_core::BackendError>(())
    };
    // The record stays if this fails: never attached, it expires with its blobs' counts.
    stored.await?;
    metrics::counter!(m::FILES_UPLOADED).increment(1);
    metrics::counter!(m::FILE_BYTES_UPLOADED).increment(file.info.size);
    Ok((StatusCode::CREATED, Json(json!({ "file": file.info }))).into_response())
}

/// An upload made into a file: its type from its bytes, and for an image its size and a
/// staged thumbnail.
struct Prepared {
    file: StoredFile,
    thumbnail: Option<Staged>,
}

async fn prepare(
    gateway: &Gateway,
    owner: parlor_core::UserId,
    name: String,
    staged: &Staged,
) -> Result<Prepared, HttpError> {
    let blob = BlobKey::parse(staged.sha256_hex())
        .map_err(|error| HttpError::new(ErrorCode::Internal, error.to_string()))?;
    let sniffed = parlor_media::sniff(staged.head());
    let mut file = StoredFile {
        info: FileInfo {
            id: FileId::new(),
            name,
            content_type: sniffed.mime().to_owned(),
            size: staged.len_bytes(),
            image: None,
        },
        owner,
        blob,
        thumbnail: None,
        created_at: OffsetDateTime::now_utc(),
        attached_to: None,
    };
    if !parlor_media::is_inline_image(&sniffed) {
        return Ok(Prepared {
            file,
            thumbnail: None,
        });
    }
    let made = gateway
        .images
        .thumbnail(staged.path().to_owned(), parlor_media::THUMBNAIL_SIDE_PX)
        .await;
    let thumbnail = match made {
        Ok(thumbnail) => thumbnail,
        Err(ImageError::TooLarge(why)) => {
            return Err(invalid(format!("the image is too large to show: {why}")));
        }
        // Not an image after all (damaged, or it only starts like one): a file to download,
        // never shown inline.
        Err(error) => {
            tracing::debug!(%error, "an upload that starts like an image is kept as a file");
            file.info.content_type = parlor_media::ContentType::OctetStream.mime().to_owned();
            return Ok(Prepared {
                file,
                thumbnail: None,
            });
        }
    };
    let staged_thumbnail = parlor_media::stage(
        futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(thumbnail.bytes))]),
        &gateway.config.files.staging_dir,
        u64::MAX,
    )
    .await
    .map_err(|error| staging_failed(error, u64::MAX))?;
    file.info.image = Some(ImageSize {
        width: thumbnail.original.width_px,
        height: thumbnail.original.height_px,
    });
    file.thumbnail = Some(Thumbnail {
        blob: BlobKey::parse(staged_thumbnail.sha256_hex())
            .map_err(|error| HttpError::new(ErrorCode::Internal, error.to_string()))?,
        content_type: thumbnail.content_type.mime().to_owned(),
        size: staged_thumbnail.len_bytes(),
    });
    Ok(Prepared {
        file,
        thumbnail: Some(staged_thumbnail),
    })
}

/// Records `file`, waiting while the janitor deletes a blob it needs.
async fn record(gateway: &Gateway, file: &StoredFile) -> Result<(), HttpError> {
    let quota = gateway.config.files.quota_bytes;
    let deadline = tokio::time::Instant::now() + BLOB_DELETION_WAIT;
    loop {
        match gateway.deps.store.record_upload(file, quota).await? {
            UploadRecorded::Recorded => return Ok(()),
            UploadRecorded::OverQuota { used } => {
                return Err(HttpError::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "your files take {used} of your {quota} bytes; this one needs {} more",
                        file.info.size
                    ),
                ));
            }
            UploadRecorded::BlobBeingDeleted if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            UploadRecorded::BlobBeingDeleted => {
                return Err(HttpError::new(
                    ErrorCode::Unavailable,
                    "the server is busy with this file; try again",
                ));
            }
        }
    }
}

#[derive(Deserialize)]
pub struct DownloadParams {
    #[serde(default)]
    download: Option<String>,
}

fn not_found() -> HttpError {
    HttpError::new(ErrorCode::NotFound, "no such file")
}

/// The file, if the caller may read it; any other case is the same `not_found`.
async fn readable(gateway: &Gateway, caller: &Caller, id: &str) -> Result<StoredFile, HttpError> {
    let id: FileId = id.parse().map_err(|_| not_found())?;
    gateway
        .deps
        .store
        .file(caller.user.id, id)
        .await?
        .ok_or_else(not_found)
}

pub async fn download(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<DownloadParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let params = query_of(params)?;
    let file = readable(&gateway, &caller, &id).await?;
    let inline = file.info.image.is_some() && params.download.is_none();
    let disposition = parlor_media::content_disposition(
        if inline {
            Disposition::Inline
        } else {
            Disposition::Attachment
        },
        &file.info.name,
    );
    serve_blob(
        &gateway,
        &file.blob,
        &file.info.content_type,
        &disposition,
        &headers,
    )
    .await
}

pub async fn thumbnail(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let file = readable(&gateway, &caller, &id).await?;
    let Some(thumbnail) = &file.thumbnail else {
        return Err(HttpError::new(
            ErrorCode::NotFound,
            "this file has no thumbnail",
        ));
    };
    let disposition = parlor_media::content_disposition(Disposition::Inline, &file.info.name);
    serve_blob(
        &gateway,
        &thumbnail.blob,
        &thumbnail.content_type,
        &disposition,
        &headers,
    )
    .await
}

/// What a `Range` header asks for: one range of bytes. Several ranges, or a unit other than
/// bytes, are answered with the whole file (as RFC 9110 allows).
enum Wanted {
    All,
    Range(Range<u64>),
    /// The last n bytes.
    Suffix(u64),
    Unsatisfiable,
}

fn wanted(headers: &HeaderMap) -> Wanted {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Wanted::All;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Wanted::Unsatisfiable;
    };
    match (start.trim(), end.trim()) {
        ("", suffix) => match suffix.parse::<u64>() {
            Ok(0) | Err(_) => Wanted::Unsatisfiable,
            Ok(n) => Wanted::Suffix(n),
        },
        (start, "") => match start.parse::<u64>() {
            Ok(start) => Wanted::Range(start..u64::MAX),
            Err(_) => Wanted::Unsatisfiable,
        },
        (start, end) => match (start.parse::<u64>(), end.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => Wanted::Range(start..end.saturating_add(1)),
            _ => Wanted::Unsatisfiable,
        },
    }
}

async fn serve_blob(
    gateway: &Gateway,
    key: &BlobKey,
    content_type: &str,
    disposition: &str,
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    // Content-addressed: the key is the strongest validator there is.
    let etag = format!("\"{key}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag))
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let blobs = &gateway.deps.blobs;
    let range = match wanted(headers) {
        Wanted::All => None,
        Wanted::Range(range) => Some(range),
        Wanted::Suffix(n) => {
            let total = blobs.len(key).await?.ok_or_else(missing_blob)?;
            Some(total.saturating_sub(n)..total)
        }
        Wanted::Unsatisfiable => return Ok(unsatisfiable(blobs.len(key).await?.unwrap_or(0))),
    };
    let partial = range.is_some();
    let read: BlobRead = match blobs.get(key, range).await {
        Ok(Some(read)) => read,
        Ok(None) => return Err(missing_blob()),
        Err(error) if error.kind == BackendErrorKind::Rejected => {
            return Ok(unsatisfiable(blobs.len(key).await?.unwrap_or(0)));
        }
        Err(error) => return Err(error.into()),
    };
    let length = read.range.end - read.range.start;
    let mut response = Response::new(Body::from_stream(read.body));
    *response.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let headers = response.headers_mut();
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::CONTENT_TYPE, value(content_type));
    headers.insert(header::CONTENT_LENGTH, value(&length.to_string()));
    headers.insert(header::CONTENT_DISPOSITION, value(disposition));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, value(&etag));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    // Whatever the bytes are, they never run as a page of this origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if partial {
        headers.insert(
            header::CONTENT_RANGE,
            value(&format!(
                "bytes {}-{}/{}",
                read.range.start,
                read.range.end.saturating_sub(1),
                read.total_len
            )),
        );
    }
    Ok(response)
}

fn unsatisfiable(total: u64) -> Response {
    let mut response = HttpError::new(
        ErrorCode::RangeNotSatisfiable,
        "the range asked for is outside the file",
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// A recorded file whose blob is not in the blob store: a bug or lost storage, never the
/// caller's fault.
fn missing_blob() -> HttpError {
    tracing::error!("a file's blob is missing from the blob store");
    HttpError::new(
        ErrorCode::Unavailable,
        "the file's bytes cannot be read now",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> Wanted {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        wanted(&headers)
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert!(matches!(wanted(&HeaderMap::new()), Wanted::All));
        assert!(matches!(range("bytes=0-99"), Wanted::Range(r) if r == (0..100)));
        assert!(matches!(range("bytes=100-"), Wanted::Range(r) if r == (100..u64::MAX)));
        assert!(matches!(range("bytes=-20"), Wanted::Suffix(20)));
        assert!(matches!(range("bytes=0-1,5-6"), Wanted::All));
        assert!(matches!(range("items=0-1"), Wanted::All));
        for bad in ["bytes=5-1", "bytes=-0", "bytes=x-", "bytes=1-y", "bytes=7"] {
            assert!(matches!(range(bad), Wanted::Unsatisfiable), "{bad}");
        }
    }
}
