// The blob store contract against DirBlobStore in a temporary directory (staged files on the
// same filesystem, so puts take the hard-link path), then what only a directory does: the
// copy path across filesystems, a full device, the layout, and what a crash leaves behind.
// The checks that need a second filesystem mount a small tmpfs: they need root (as on CI)
// and fail if they cannot.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_core::BackendErrorKind;
use parlor_core::blobs::BlobStore;
use parlor_embedded::DirBlobStore;
use parlor_testkit::blobs::{BlobFixture, get_all, pattern, stage};
use tempfile::TempDir;

struct DirBlobs {
    dir: TempDir,
    staging: PathBuf,
    store: Arc<DirBlobStore>,
}

impl DirBlobs {
    fn blobs(&self) -> PathBuf {
        self.dir.path().join("blobs")
    }
}

async fn fixture() -> DirBlobs {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).expect("a staging directory");
    let store = DirBlobStore::open(&dir.path().join("blobs")).expect("open the blob store");
    DirBlobs {
        dir,
        staging,
        store: Arc::new(store),
    }
}

impl BlobFixture for DirBlobs {
    fn store(&self) -> Arc<dyn BlobStore> {
        self.store.clone()
    }

    fn reopen(&self) -> BoxFuture<'_, Arc<dyn BlobStore>> {
        Box::pin(async { Arc::new(DirBlobStore::open(&self.blobs()).expect("reopen")) as _ })
    }

    fn staging_dir(&self) -> &Path {
        &self.staging
    }
}

parlor_testkit::blob_contract!(fixture);

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}); these tests need root"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(status, Ok(status) if status.success()) && !std::thread::panicking() {
            panic!("unmounting the test tmpfs failed: {status:?}");
        }
    }
}

fn tmp_entries(blobs: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(blobs.join(".tmp"))
        .expect("read .tmp")
        .map(|entry| entry.expect("an entry").path())
        .collect()
}

#[tokio::test]
async fn a_blob_lives_under_its_first_two_hex_digits() {
    let blobs = fixture().await;
    let staged = stage(blobs.staging_dir(), b"layout");
    blobs
        .store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    let key = staged.key.as_str();
    let path = blobs.blobs().join(&key[..2]).join(&key[2..]);
    assert_eq!(blobs.store.path_of(&staged.key), path);
    assert_eq!(std::fs::read(&path).expect("the blob file"), b"layout");
}

#[tokio::test]
async fn a_put_on_the_same_filesystem_links_the_staged_file() {
    let blobs = fixture().await;
    let staged = stage(blobs.staging_dir(), &pattern(10_000, 1));
    blobs
        .store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    let blob = std::fs::metadata(blobs.store.path_of(&staged.key)).expect("the blob");
    assert_eq!(
        blob.nlink(),
        2,
        "the blob and the staged file are one inode"
    );
    assert!(tmp_entries(&blobs.blobs()).is_empty());
}

#[tokio::test]
async fn a_put_across_filesystems_copies_and_leaves_no_temporary_file() {
    let tmpfs = Tmpfs::mount(4 * 1024 * 1024);
    let staging = tempfile::tempdir().expect("a staging directory");
    let store = DirBlobStore::open(&tmpfs.path().join("blobs")).expect("open");
    let bytes = pattern(1024 * 1024 + 3, 2);
    let staged = stage(staging.path(), &bytes);
    store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    let blob = std::fs::metadata(store.path_of(&staged.key)).expect("the blob");
    assert_eq!(blob.nlink(), 1, "a copy of its own");
    assert!(get_all(&store, &staged.key).await == bytes);
    assert!(tmp_entries(&tmpfs.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn a_full_device_refuses_the_put_with_storage_full_and_keeps_nothing_of_it() {
    let tmpfs = Tmpfs::mount(1024 * 1024);
    let staging = tempfile::tempdir().expect("a staging directory");
    let root = tmpfs.path().join("blobs");
    let store = DirBlobStore::open(&root).expect("open");
    let staged = stage(staging.path(), &pattern(2 * 1024 * 1024, 3));

    let error = store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect_err("2 MiB on a 1 MiB device");
    assert_eq!(error.kind, BackendErrorKind::StorageFull, "{error}");
    assert_eq!(store.len(&staged.key).await.expect("len"), None);
    assert!(tmp_entries(&root).is_empty(), "the partial copy is removed");

    // The device has its room back: a blob that fits goes in.
    let small = pattern(100_000, 4);
    let fits = stage(staging.path(), &small);
    store
        .put_file(&fits.key, &fits.path, fits.len)
        .await
        .expect("a put that fits");
    assert!(get_all(&store, &fits.key).await == small);
}

#[tokio::test]
async fn open_removes_the_copies_a_crash_left_half_written() {
    let blobs = fixture().await;
    let leftover = blobs.blobs().join(".tmp").join("abc.0123");
    std::fs::write(&leftover, b"half a copy").expect("a leftover copy");
    let kept = stage(blobs.staging_dir(), b"kept");
    blobs
        .store
        .put_file(&kept.key, &kept.path, kept.len)
        .await
        .expect("put_file");

    let reopened = DirBlobStore::open(&blobs.blobs()).expect("reopen");
    assert!(tmp_entries(&blobs.blobs()).is_empty());
    assert_eq!(get_all(&reopened, &kept.key).await, b"kept");
}

#[tokio::test]
async fn a_read_that_began_survives_the_delete_of_its_blob() {
    let blobs = fixture().await;
    let bytes = pattern(1024 * 1024, 5);
    let staged = stage(blobs.staging_dir(), &bytes);
    blobs
        .store
        .put_file(&staged.key, &staged.path, staged.len)
        .await
        .expect("put_file");
    let read = blobs
        .store
        .get(&staged.key, None)
        .await
        .expect("get")
        .expect("stored");
    blobs.store.delete(&staged.key).await.expect("delete");
    assert!(
        blobs
            .store
            .get(&staged.key, None)
            .await
            .expect("get")
            .is_none()
    );
    // The open file outlives its name.
    assert!(parlor_testkit::blobs::read_all(read).await.0 == bytes);
}
