use std::io;
use std::path::Path;
use std::pin::pin;
use std::task::Poll;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use parlor_media::{HEAD_BYTES, StageError, stage};

fn chunks(parts: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, io::Error>> {
    stream::iter(parts.into_iter().map(|p| Ok(Bytes::from(p))))
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read the staging directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_body_is_staged_with_its_hash_length_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let parts = vec![
        body[..3].to_vec(),
        Vec::new(),
        body[3..5000].to_vec(),
        body[5000..].to_vec(),
    ];
    let staged = stage(chunks(parts), dir.path(), 10_000).await.unwrap();

    assert_eq!(staged.len_bytes(), 10_000);
    assert_eq!(staged.head(), &body[..HEAD_BYTES]);
    assert_eq!(std::fs::read(staged.path()).unwrap(), body);
    assert_eq!(staged.path().parent(), Some(dir.path()));
    let name = staged
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(".upload-") && name.ends_with(".part"),
        "{name}"
    );

    let expected = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(staged.sha256_hex(), expected);
}

#[tokio::test]
async fn the_hash_is_the_lowercase_hex_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage(chunks(vec![b"ab".to_vec(), b"c".to_vec()]), dir.path(), 3)
        .await
        .unwrap();
    assert_eq!(
        staged.sha256_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Shorter than HEAD_BYTES: the head is the whole body.
    assert_eq!(staged.head(), b"abc");
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_staged() {
    let dir = tempfile::tempdir().unwrap();
    let staged = stage(chunks(vec![vec![7; 600], vec![7; 400]]), dir.path(), 1000)
        .await
        .unwrap();
    assert_eq!(staged.len_bytes(), 1000);
}

#[tokio::test]
async fn a_body_past_the_limit_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let result = stage(chunks(vec![vec![1; 600], vec![1; 401]]), dir.path(), 1000).await;
    assert!(
        matches!(
            result,
            Err(StageError::TooLarge {
                body_bytes_max: 1000
            })
        ),
        "{result:?}"
    );
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn an_endless_body_is_refused_once_it_passes_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let endless = stream::repeat_with(|| Ok::<_, io::Error>(Bytes::from_static(&[0; 8192])));
    let result = stage(endless, dir.path(), 1 << 20).await;
    assert!(
        matches!(result, Err(StageError::TooLarge { .. })),
        "{result:?}"
    );
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn an_empty_body_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let result = stage(chunks(vec![]), dir.path(), 1000).await;
    assert!(matches!(result, Err(StageError::Empty)), "{result:?}");
    let result = stage(chunks(vec![Vec::new(), Vec::new()]), dir.path(), 1000).await;
    assert!(matches!(result, Err(StageError::Empty)), "{result:?}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn a_body_that_fails_midway_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let body = stream::iter(vec![
        Ok(Bytes::from(vec![1; 300_000])),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
        Ok(Bytes::from(vec![1; 10])),
    ]);
    let result = stage(body, dir.path(), 1 << 20).await;
    let Err(StageError::Body(cause)) = result else {
        panic!("expected a body error, got {result:?}");
    };
    assert_eq!(cause.to_string(), "client went away");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn an_upload_abandoned_midway_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // One chunk, then a client that never sends the rest.
    let body =
        stream::iter([Ok::<_, io::Error>(Bytes::from_static(b"partial"))]).chain(stream::pending());
    {
        let mut staging = pin!(stage(body, dir.path(), 1000));
        // Poll until the staged file exists: the upload is under way.
        while files_in(dir.path()).is_empty() {
            assert!(matches!(futures::poll!(staging.as_mut()), Poll::Pending));
            tokio::task::yield_now().await;
        }
    } // the handler's future is dropped, as when the connection closes
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn a_staged_file_is_removed_on_drop_or_discard_and_stays_when_kept() {
    let dir = tempfile::tempdir().unwrap();
    let body = || chunks(vec![b"bytes".to_vec()]);

    let dropped = stage(body(), dir.path(), 100).await.unwrap();
    let path = dropped.path().to_owned();
    assert!(path.exists());
    drop(dropped);
    assert!(!path.exists());

    let discarded = stage(body(), dir.path(), 100).await.unwrap();
    let path = discarded.path().to_owned();
    discarded.discard().unwrap();
    assert!(!path.exists());

    // A blob store that renamed the file away leaves nothing to discard: still fine.
    let moved = stage(body(), dir.path(), 100).await.unwrap();
    std::fs::rename(moved.path(), dir.path().join("blob")).unwrap();
    moved.discard().unwrap();

    let kept = stage(body(), dir.path(), 100).await.unwrap();
    let path = kept.keep().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
}

#[tokio::test]
async fn a_missing_staging_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let result = stage(chunks(vec![b"x".to_vec()]), &dir.path().join("absent"), 100).await;
    assert!(matches!(result, Err(StageError::Io(_))), "{result:?}");
}
