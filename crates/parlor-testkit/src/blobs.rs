//! The [`BlobStore`] contract: one `pub async fn` per guarantee, each taking a
//! [`BlobFixture`], and [`blob_contract!`](crate::blob_contract) to turn them into one test
//! per check:
//!
//! ```ignore
//! async fn fixture() -> MyFixture { … }
//! parlor_testkit::blob_contract!(fixture);
//! ```
//!
//! Blobs are staged as the upload path stages them: a file written and fsynced in a staging
//! directory, named by the SHA-256 of its bytes. The bytes are a seeded pattern, so a wrong
//! offset or a chunk out of order cannot pass for the right one.

use std::io::Write;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parlor_core::BackendErrorKind;
use parlor_core::blobs::{BlobKey, BlobRead, BlobStore};
use sha2::{Digest, Sha256};

/// The blobs of one check. Each check gets a fresh fixture: an empty store of its own.
pub trait BlobFixture: Send + Sync {
    /// The store under test.
    fn store(&self) -> Arc<dyn BlobStore>;
    /// A new handle on the same blobs, as a restarted process would open it.
    fn reopen(&self) -> BoxFuture<'_, Arc<dyn BlobStore>>;
    /// Where the check stages its files, as the upload path's staging directory.
    fn staging_dir(&self) -> &Path;
    /// Removes what the check left behind (a bucket on a shared server, say); best effort.
    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Runs `check`, then the fixture's cleanup, even when the check panics.
pub async fn guarded(fixture: &dyn BlobFixture, check: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(check).catch_unwind().await;
    fixture.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per check of the blob store contract, for `$fixture`: a path to an
/// `async fn() -> impl BlobFixture`.
#[macro_export]
macro_rules! blob_contract {
    ($fixture:path) => {
        $crate::blob_contract!(@checks $fixture;
            put_then_get_returns_the_same_bytes,
            an_empty_blob_round_trips,
            a_multi_mib_blob_round_trips_in_bounded_chunks,
            range_reads_return_the_bytes_asked_for,
            a_range_past_the_end_or_empty_is_rejected,
            putting_an_existing_key_is_ok_and_changes_nothing,
            delete_removes_the_blob_and_deleting_an_absent_one_is_ok,
            len_and_exists_tell_stored_from_absent,
            get_of_an_unknown_key_is_none,
            concurrent_puts_of_one_key_end_with_one_whole_blob,
            the_staged_file_stays_the_callers,
            a_staged_file_of_the_wrong_length_is_rejected_and_stores_nothing,
            a_missing_staged_file_is_rejected,
            blobs_survive_reopening,
            keys_that_are_not_a_sha256_are_refused,
        );
    };
    (@checks $fixture:path; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = $fixture().await;
                $crate::blobs::guarded(&fixture, $crate::blobs::$check(&fixture)).await;
            }
        )*
    };
}

/// The largest chunk a body may yield: bodies stream, they are not read whole.
pub const CHUNK_BYTES_MAX: usize = 1024 * 1024;

/// `len` bytes of a pattern seeded by `seed` (xorshift), different at every offset.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The key of `bytes`: their SHA-256.
pub fn key_of(bytes: &[u8]) -> BlobKey {
    BlobKey::from_digest(Sha256::digest(bytes).into())
}

/// A file staged for `put_file`.
pub struct Staged {
    pub key: BlobKey,
    pub path: PathBuf,
    pub len: u64,
}

/// Writes `bytes` to a new file in `dir` and fsyncs it, as the upload path does.
pub fn stage(dir: &Path, bytes: &[u8]) -> Staged {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("staged-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut file = std::fs::File::create(&path).expect("create a staged file");
    file.write_all(bytes).expect("write a staged file");
    file.sync_all().expect("fsync a staged file");
    Staged {
        key: key_of(bytes),
        path,
        len: bytes.len() as u64,
    }
}

/// Stages `bytes` and puts them; returns their key.
pub async fn put(fixture: &dyn BlobFixture, bytes: &[u8]) -> BlobKey {
    let staged = stage(fixture.staging_dir(), bytes);
    fixture
        .store()
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    staged.key
}

/// Reads a whole body, checking every chunk is bounded.
pub async fn read_all(read: BlobRead) -> (Vec<u8>, usize) {
    let mut body = read.body;
    let mut bytes = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("a chunk of the body");
        assert!(
            chunk.len() <= CHUNK_BYTES_MAX,
            "a chunk of {} bytes: bodies must stream",
            chunk.len()
        );
        bytes.extend_from_slice(&chunk);
        chunks += 1;
    }
    (bytes, chunks)
}

/// The whole blob `key`, which must be stored.
pub async fn get_all(store: &dyn BlobStore, key: &BlobKey) -> Vec<u8> {
    let read = store
        .get(key, None)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{key} is not stored"));
    let total_len = read.total_len;
    assert_eq!(read.range, 0..total_len);
    let (bytes, _) = read_all(read).await;
    assert_eq!(bytes.len() as u64, total_len, "the body is the whole blob");
    bytes
}

async fn get_range(store: &dyn BlobStore, key: &BlobKey, range: Range<u64>) -> BlobRead {
    store
        .get(key, Some(range.clone()))
        .await
        .unwrap_or_else(|error| panic!("get {range:?}: {error}"))
        .unwrap_or_else(|| panic!("{key} is not stored"))
}

fn assert_rejected<T: std::fmt::Debug>(outcome: Result<T, parlor_core::BackendError>, what: &str) {
    match outcome {
        Err(error) if error.kind == BackendErrorKind::Rejected => {}
        other => panic!("{what}: expected Rejected, got {other:?}"),
    }
}

/// A small blob comes back byte for byte, with its length.
pub async fn put_then_get_returns_the_same_bytes(fixture: &dyn BlobFixture) {
    let bytes = pattern(1000, 1);
    let key = put(fixture, &bytes).await;
    let read = fixture
        .store()
        .get(&key, None)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(read.total_len, 1000);
    assert_eq!(read.range, 0..1000);
    assert_eq!(read_all(read).await.0, bytes);
}

/// A blob of no bytes is a blob like any other.
pub async fn an_empty_blob_round_trips(fixture: &dyn BlobFixture) {
    let key = put(fixture, &[]).await;
    let store = fixture.store();
    assert_eq!(store.len(&key).await.expect("len"), Some(0));
    let read = store.get(&key, None).await.expect("get").expect("stored");
    assert_eq!((read.total_len, read.range.clone()), (0, 0..0));
    assert_eq!(read_all(read).await.0, Vec::<u8>::new());
}

/// A file of several MiB (larger than an S3 backend's default part size) comes back whole,
/// in many bounded chunks.
pub async fn a_multi_mib_blob_round_trips_in_bounded_chunks(fixture: &dyn BlobFixture) {
    let bytes = pattern(9 * 1024 * 1024 + 7, 2);
    let key = put(fixture, &bytes).await;
    let read = fixture
        .store()
        .get(&key, None)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(read.total_len, bytes.len() as u64);
    let (got, chunks) = read_all(read).await;
    assert!(got == bytes, "the blob came back different");
    assert!(chunks >= 9, "{chunks} chunks for 9 MiB");
}

/// Ranges at the start, in the middle (across chunk boundaries), at the end, of one byte,
/// and past the end (clamped) yield exactly those bytes, with the blob's total length.
pub async fn range_reads_return_the_bytes_asked_for(fixture: &dyn BlobFixture) {
    let bytes = pattern(300_000, 3);
    let key = put(fixture, &bytes).await;
    let store = fixture.store();
    let cases: [(Range<u64>, Range<u64>); 6] = [
        (0..10, 0..10),
        (100_000..200_000, 100_000..200_000),
        (299_990..300_000, 299_990..300_000),
        (12_345..12_346, 12_345..12_346),
        (299_000..1_000_000, 299_000..300_000),
        (0..u64::MAX, 0..300_000),
    ];
    for (asked, expected) in cases {
        let read = get_range(store.as_ref(), &key, asked.clone()).await;
        assert_eq!(read.total_len, 300_000, "total_len for {asked:?}");
        assert_eq!(read.range, expected, "range for {asked:?}");
        let (got, _) = read_all(read).await;
        let want = &bytes[expected.start as usize..expected.end as usize];
        assert!(got == want, "bytes of {asked:?}: {} bytes", got.len());
    }
}

/// A range that starts at or past the end (any range of an empty blob), or an empty one, is
/// `Rejected` (HTTP's 416); an unknown key is still `None`, whatever the range.
pub async fn a_range_past_the_end_or_empty_is_rejected(fixture: &dyn BlobFixture) {
    let key = put(fixture, &pattern(100, 4)).await;
    let empty = put(fixture, &[]).await;
    let store = fixture.store();
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 50..40;
    for range in [100..101, 100..200, 1000..2000, 5..5, backwards] {
        assert_rejected(
            store.get(&key, Some(range.clone())).await,
            &format!("{range:?} of 100 bytes"),
        );
    }
    assert_rejected(store.get(&empty, Some(0..1)).await, "0..1 of an empty blob");
    let unknown = key_of(b"never stored");
    assert!(
        store
            .get(&unknown, Some(1000..2000))
            .await
            .expect("get")
            .is_none()
    );
}

/// A second put of a stored key is `Ok` and stores nothing: even a staged file with other
/// bytes (which a correct caller never has) leaves the first blob as it was.
pub async fn putting_an_existing_key_is_ok_and_changes_nothing(fixture: &dyn BlobFixture) {
    let bytes = pattern(5000, 5);
    let key = put(fixture, &bytes).await;
    let store = fixture.store();
    let again = stage(fixture.staging_dir(), &bytes);
    store
        .put_file(&key, &again.path, again.len)
        .await
        .expect("put the same file again");
    let other = stage(fixture.staging_dir(), &pattern(5000, 6));
    store
        .put_file(&key, &other.path, other.len)
        .await
        .expect("put other bytes under a stored key");
    assert!(get_all(store.as_ref(), &key).await == bytes);
}

/// After `delete` the blob is gone; deleting it again, or a key never stored, is `Ok`.
pub async fn delete_removes_the_blob_and_deleting_an_absent_one_is_ok(fixture: &dyn BlobFixture) {
    let kept = put(fixture, &pattern(100, 7)).await;
    let key = put(fixture, &pattern(100, 8)).await;
    let store = fixture.store();
    store.delete(&key).await.expect("delete");
    assert!(store.get(&key, None).await.expect("get").is_none());
    assert_eq!(store.len(&key).await.expect("len"), None);
    store.delete(&key).await.expect("delete again");
    store
        .delete(&key_of(b"never stored"))
        .await
        .expect("delete a key never stored");
    assert_eq!(get_all(store.as_ref(), &kept).await, pattern(100, 7));
    // A deleted blob can be stored again.
    let again = put(fixture, &pattern(100, 8)).await;
    assert_eq!(get_all(store.as_ref(), &again).await, pattern(100, 8));
}

/// `len` is the stored length or `None`; `exists` agrees with it.
pub async fn len_and_exists_tell_stored_from_absent(fixture: &dyn BlobFixture) {
    let key = put(fixture, &pattern(4321, 9)).await;
    let store = fixture.store();
    assert_eq!(store.len(&key).await.expect("len"), Some(4321));
    assert!(store.exists(&key).await.expect("exists"));
    let unknown = key_of(b"never stored");
    assert_eq!(store.len(&unknown).await.expect("len"), None);
    assert!(!store.exists(&unknown).await.expect("exists"));
}

/// A key never stored is `None`, not an error.
pub async fn get_of_an_unknown_key_is_none(fixture: &dyn BlobFixture) {
    let store = fixture.store();
    assert!(
        store
            .get(&key_of(b"never stored"), None)
            .await
            .expect("get")
            .is_none()
    );
}

/// Several tasks putting the same key at once all succeed and leave one whole blob; readers
/// meanwhile see either nothing or the whole blob, never part of it.
pub async fn concurrent_puts_of_one_key_end_with_one_whole_blob(fixture: &dyn BlobFixture) {
    const PUTS: usize = 8;
    let bytes = Arc::new(pattern(600_000, 10));
    let staged: Vec<Staged> = (0..PUTS)
        .map(|_| stage(fixture.staging_dir(), &bytes))
        .collect();
    let key = staged[0].key.clone();
    let store = fixture.store();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, key, bytes, done) = (
                Arc::clone(&store),
                key.clone(),
                Arc::clone(&bytes),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    if let Some(read) = store.get(&key, None).await.expect("get while putting") {
                        assert_eq!(read.total_len, bytes.len() as u64, "a partial blob");
                        assert!(read_all(read).await.0 == *bytes, "a partial blob");
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let puts: Vec<_> = staged
        .into_iter()
        .map(|file| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put_file(&file.key, &file.path, file.len).await })
        })
        .collect();
    for put in puts {
        put.await.expect("a put task").expect("a concurrent put");
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("a reader task");
    }
    assert!(get_all(store.as_ref(), &key).await == *bytes);
}

/// The store only reads the staged file: it is still there, unchanged, after the put, and
/// removing it (as the caller then does) leaves the blob whole.
pub async fn the_staged_file_stays_the_callers(fixture: &dyn BlobFixture) {
    let bytes = pattern(70_000, 11);
    let staged = stage(fixture.staging_dir(), &bytes);
    let store = fixture.store();
    store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    assert_eq!(std::fs::read(&staged.path).expect("the staged file"), bytes);
    std::fs::remove_file(&staged.path).expect("remove the staged file");
    assert!(get_all(store.as_ref(), &staged.key).await == bytes);
}

/// A staged file shorter or longer than the length the caller counted is `Rejected`, and
/// no blob is stored.
pub async fn a_staged_file_of_the_wrong_length_is_rejected_and_stores_nothing(
    fixture: &dyn BlobFixture,
) {
    let store = fixture.store();
    let staged = stage(fixture.staging_dir(), &pattern(1000, 12));
    for len in [999, 1001, 0] {
        assert_rejected(
            store.put_file(&staged.key, &staged.path, len).await,
            &format!("1000 bytes staged as {len}"),
        );
    }
    assert_eq!(store.len(&staged.key).await.expect("len"), None);
}

/// A staged path with no file is the caller's bug: `Rejected`.
pub async fn a_missing_staged_file_is_rejected(fixture: &dyn BlobFixture) {
    let path = fixture.staging_dir().join("not-there");
    let key = key_of(b"not there");
    assert_rejected(
        fixture.store().put_file(&key, &path, 9).await,
        "a missing staged file",
    );
}

/// What a put stored is there for a handle opened afterwards, as after a restart; a delete
/// through one handle is seen by the other.
pub async fn blobs_survive_reopening(fixture: &dyn BlobFixture) {
    let bytes = pattern(200_000, 13);
    let key = put(fixture, &bytes).await;
    let reopened = fixture.reopen().await;
    assert!(get_all(reopened.as_ref(), &key).await == bytes);
    reopened.delete(&key).await.expect("delete");
    assert!(
        fixture
            .store()
            .get(&key, None)
            .await
            .expect("get")
            .is_none()
    );
}

/// A backend is only ever handed valid keys: a name that is not a lowercase hex SHA-256
/// (so not a safe file or object name either) cannot become a [`BlobKey`].
pub async fn keys_that_are_not_a_sha256_are_refused(_fixture: &dyn BlobFixture) {
    let good = key_of(b"x");
    for bad in [
        String::new(),
        good.as_str()[..63].to_string(),
        good.as_str().to_uppercase(),
        format!("../{}", &good.as_str()[3..]),
        format!("{}/", &good.as_str()[..63]),
        format!("{good}0"),
    ] {
        assert!(BlobKey::parse(&bad).is_err(), "{bad:?} was accepted");
    }
}
