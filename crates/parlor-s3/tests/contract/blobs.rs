// The contract, then what only S3 does: multipart uploads, the key prefix, creating the
// bucket, and an endpoint that does not answer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use parlor_core::BackendErrorKind;
use parlor_core::blobs::BlobStore;
use parlor_s3::{S3BlobStore, S3Credentials, S3Options};
use parlor_testkit::blobs::{BlobFixture, get_all, key_of, pattern, stage};
use tempfile::TempDir;
use uuid::Uuid;

const BUCKET: &str = "parlor-test-blobs";

/// The emulator's URL, or a failed test that says how to start it.
fn emulator() -> String {
    std::env::var("PARLOR_TEST_S3_URL").unwrap_or_else(|_| {
        panic!(
            "PARLOR_TEST_S3_URL is not set: start the S3 emulator (and get the variable) with: \
             eval \"$(scripts/services up)\""
        )
    })
}

/// Options for the emulator, under a prefix of the test's own.
fn options(prefix: &str) -> S3Options {
    S3Options {
        endpoint: Some(emulator()),
        path_style: true,
        credentials: S3Credentials::Static {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        },
        key_prefix: prefix.into(),
        create_bucket: true,
        ..S3Options::new("us-east-1", BUCKET)
    }
}

async fn open(options: &S3Options) -> S3BlobStore {
    S3BlobStore::open(options).await.unwrap_or_else(|error| {
        panic!(
            "open bucket {BUCKET} on {:?}: {error}\n\
             Is the emulator running? eval \"$(scripts/services up)\"",
            options.endpoint
        )
    })
}

struct S3Blobs {
    options: S3Options,
    store: Arc<S3BlobStore>,
    staging: TempDir,
}

async fn fixture() -> S3Blobs {
    fixture_with(|_| {}).await
}

async fn fixture_with(adjust: impl FnOnce(&mut S3Options)) -> S3Blobs {
    let mut options = options(&format!("t{}", Uuid::now_v7().simple()));
    adjust(&mut options);
    S3Blobs {
        store: Arc::new(open(&options).await),
        options,
        staging: tempfile::tempdir().expect("a staging directory"),
    }
}

impl S3Blobs {
    /// The objects under this test's prefix.
    async fn objects(&self) -> Vec<object_store::ObjectMeta> {
        let prefix = object_store::path::Path::from(self.options.key_prefix.as_str());
        self.store
            .object_store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .expect("list the test's objects")
    }
}

impl BlobFixture for S3Blobs {
    fn store(&self) -> Arc<dyn BlobStore> {
        self.store.clone()
    }

    fn reopen(&self) -> BoxFuture<'_, Arc<dyn BlobStore>> {
        Box::pin(async { Arc::new(open(&self.options).await) as _ })
    }

    fn staging_dir(&self) -> &Path {
        self.staging.path()
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {
            let client = self.store.object_store();
            let locations = futures::stream::iter(self.objects().await)
                .map(|meta| Ok(meta.location))
                .boxed();
            let _: Vec<_> = client.delete_stream(locations).collect().await;
        })
    }
}

parlor_testkit::blob_contract!(fixture);

#[tokio::test]
async fn a_file_longer_than_the_part_size_goes_up_in_parts() {
    let blobs = fixture_with(|options| {
        options.part_bytes = 100_000;
        options.parts_in_flight = 3;
    })
    .await;
    let check = async {
        let bytes = pattern(1_000_003, 1);
        let staged = stage(blobs.staging_dir(), &bytes);
        blobs
            .store
            .put_file(&staged.key, &staged.path, staged.len)
            .await
            .expect("a multipart put");
        assert!(get_all(blobs.store.as_ref(), &staged.key).await == bytes);
        let objects = blobs.objects().await;
        assert_eq!(objects.len(), 1, "{objects:?}");
        // A multipart object's ETag is the digest of its parts' digests, then "-<parts>".
        let e_tag = objects[0].e_tag.clone().unwrap_or_default();
        assert!(
            e_tag.trim_matches('"').ends_with("-11"),
            "11 parts, ETag {e_tag}"
        );
        // A file of exactly one part goes up in one PUT.
        let one = stage(blobs.staging_dir(), &pattern(100_000, 2));
        blobs
            .store
            .put_file(&one.key, &one.path, one.len)
            .await
            .expect("a single put");
        let meta = blobs
            .store
            .object_store()
            .head(&blobs.store.object_path(&one.key))
            .await
            .expect("head");
        assert!(
            !meta.e_tag.clone().unwrap_or_default().contains('-'),
            "{meta:?}"
        );
    };
    parlor_testkit::blobs::guarded(&blobs, check).await;
}

#[tokio::test]
async fn blobs_are_objects_under_the_key_prefix() {
    let blobs = fixture().await;
    let check = async {
        let staged = stage(blobs.staging_dir(), b"prefixed");
        blobs
            .store
            .put_file(&staged.key, &staged.path, staged.len)
            .await
            .expect("put_file");
        let objects = blobs.objects().await;
        let names: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
        assert_eq!(
            names,
            [format!("{}/{}", blobs.options.key_prefix, staged.key)]
        );
        // Another prefix in the same bucket does not see it.
        let other = open(&options(&format!("t{}", Uuid::now_v7().simple()))).await;
        assert_eq!(other.len(&staged.key).await.expect("len"), None);
    };
    parlor_testkit::blobs::guarded(&blobs, check).await;
}

#[tokio::test]
async fn creating_a_bucket_that_exists_is_ok() {
    let options = options("unused");
    open(&options).await;
    open(&options).await;
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_unavailable() {
    // Port 1 on loopback: nothing listens, so every connection is refused at once.
    let options = S3Options {
        endpoint: Some("http://127.0.0.1:1".into()),
        create_bucket: false,
        retries_max: 1,
        retry_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..options("unreachable")
    };
    let store = S3BlobStore::new(&options).expect("new makes no request");
    let staging = tempfile::tempdir().expect("tempdir");
    let staged = stage(staging.path(), b"nowhere to go");
    let key = key_of(b"nowhere to go");
    let outcomes = [
        (
            "put_file",
            store
                .put_file(&staged.key, &staged.path, staged.len)
                .await
                .err(),
        ),
        ("get", store.get(&key, None).await.err()),
        ("get a range", store.get(&key, Some(0..3)).await.err()),
        ("len", store.len(&key).await.err()),
        ("delete", store.delete(&key).await.err()),
    ];
    for (what, error) in outcomes {
        let error = error.unwrap_or_else(|| panic!("{what} succeeded"));
        assert_eq!(error.kind, BackendErrorKind::Unavailable, "{what}: {error}");
    }
    // Opening checks the bucket, and so does creating it.
    for create_bucket in [false, true] {
        let error = S3BlobStore::open(&S3Options {
            create_bucket,
            ..options.clone()
        })
        .await
        .expect_err("nothing answers");
        assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
    }
}

#[tokio::test]
async fn a_missing_bucket_fails_open_and_is_never_taken_for_a_missing_blob() {
    let options = S3Options {
        bucket: format!("parlor-missing-{}", Uuid::now_v7().simple()),
        create_bucket: false,
        ..options("missing")
    };
    let error = S3BlobStore::open(&options)
        .await
        .expect_err("no such bucket");
    assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
    assert!(error.message.contains(&options.bucket), "{error}");

    let store = S3BlobStore::new(&options).expect("new makes no request");
    let key = key_of(b"in no bucket");
    for (what, outcome) in [
        (
            "get",
            store.get(&key, None).await.map(|read| read.is_some()),
        ),
        ("delete", store.delete(&key).await.map(|()| true)),
    ] {
        let error = outcome.expect_err(what);
        assert_eq!(error.kind, BackendErrorKind::Unavailable, "{what}: {error}");
    }
}

#[tokio::test]
async fn a_store_on_aws_builds_its_tls_client_without_a_request() {
    // reqwest is built without a crypto provider of its own: opening must install ring's
    // rather than panic when the client's rustls configuration is made.
    let options = S3Options {
        credentials: S3Credentials::Static {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        },
        ..S3Options::new("eu-west-1", "parlor-never-created")
    };
    S3BlobStore::new(&options).expect("new");
}
