//! Files under concurrency, through two handles (two processes): what the contract checks
//! one call at a time must hold when the calls race (see `store::files` for how).

use futures::future::join_all;
use parlor_core::blobs::BlobKey;
use parlor_core::error::ErrorCode;
use parlor_core::events::Change;
use parlor_core::files::{FileInfo, StoredFile, UploadRecorded};
use parlor_core::ids::{FileId, UserId};
use parlor_core::ports::{Appended, Store};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{TestDatabase, new_event, user};

fn key() -> BlobKey {
    BlobKey::parse(&Uuid::now_v7().simple().to_string().repeat(2)).expect("64 hex digits")
}

fn upload(owner: UserId, blob: BlobKey, size: u64, created_at: OffsetDateTime) -> StoredFile {
    StoredFile {
        info: FileInfo {
            id: FileId::new(),
            name: "report.pdf".to_owned(),
            content_type: "application/pdf".to_owned(),
            size,
            image: None,
        },
        owner,
        blob,
        thumbnail: None,
        created_at,
        attached_to: None,
    }
}

fn with_files(files: &[&StoredFile]) -> Change {
    Change::Message {
        body: String::new(),
        reply_to_seq: None,
        files: files.iter().map(|file| file.info.id).collect(),
    }
}

/// A blob nobody uses any more: its one upload, made two days ago, expired.
async fn unused_blob(store: &dyn Store, owner: UserId) -> BlobKey {
    let blob = key();
    let old = upload(
        owner,
        blob.clone(),
        10,
        OffsetDateTime::now_utc() - Duration::days(2),
    );
    assert_eq!(
        store.record_upload(&old, u64::MAX).await.unwrap(),
        UploadRecorded::Recorded
    );
    let cutoff = OffsetDateTime::now_utc() - Duration::days(1);
    assert_eq!(store.expire_uploads(cutoff, 100).await.unwrap(), 1);
    blob
}

fn later() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_one_owner_at_once_never_pass_the_quota_together() {
    let database = TestDatabase::create().await;
    let (one, two) = (database.store(4).await, database.store(4).await);
    for round in 0..4 {
        let ann = user(&one, &format!("ann{round}")).await;
        let files: Vec<StoredFile> = (0..8)
            .map(|_| upload(ann, key(), 100, OffsetDateTime::now_utc()))
            .collect();
        let outcomes = join_all(files.iter().enumerate().map(|(index, file)| {
            let store = if index % 2 == 0 { &one } else { &two };
            store.record_upload(file, 450)
        }))
        .await;
        let recorded = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(UploadRecorded::Recorded)))
            .count();
        let over = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(UploadRecorded::OverQuota { used: 400 })))
            .count();
        assert_eq!((recorded, over), (4, 4), "{outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_in_two_conversations_at_once_is_attached_once() {
    let database = TestDatabase::create().await;
    let (one, two) = (database.store(2).await, database.store(2).await);
    let (ann, bob, cid) = (
        user(&one, "ann").await,
        user(&one, "bob").await,
        user(&one, "cid").await,
    );
    let (with_bob, _) = one.create_direct(ann, bob).await.unwrap();
    let (with_cid, _) = one.create_direct(ann, cid).await.unwrap();
    for round in 0..8 {
        let file = upload(ann, key(), 10, OffsetDateTime::now_utc());
        assert_eq!(
            one.record_upload(&file, u64::MAX).await.unwrap(),
            UploadRecorded::Recorded
        );
        let to_bob = [new_event(
            with_bob,
            ann,
            &format!("b{round}"),
            with_files(&[&file]),
        )];
        let to_cid = [new_event(
            with_cid,
            ann,
            &format!("c{round}"),
            with_files(&[&file]),
        )];
        let (a, b) = tokio::join!(one.append_events(&to_bob), two.append_events(&to_cid));
        let outcomes = [a.unwrap().remove(0), b.unwrap().remove(0)];
        let stored: Vec<_> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Appended::New(stored) => Some(stored),
                _ => None,
            })
            .collect();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Appended::Refused(e) if e.code == ErrorCode::Conflict))
            .count();
        assert_eq!((stored.len(), refused), (1, 1), "{outcomes:?}");
        let attached = one.file(ann, file.info.id).await.unwrap().unwrap();
        let at = attached.attached_to.expect("attached");
        assert_eq!(
            (at.conversation_id, at.seq),
            (stored[0].event.conversation_id, stored[0].event.seq)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_claimed_while_an_upload_counts_it_is_either_claimed_or_used() {
    let database = TestDatabase::create().await;
    let (one, two) = (database.store(2).await, database.store(2).await);
    let ann = user(&one, "ann").await;
    for _ in 0..12 {
        let blob = unused_blob(&one, ann).await;
        let again = upload(ann, blob.clone(), 10, OffsetDateTime::now_utc());
        let (claimed, recorded) = tokio::join!(
            one.claim_unused_blobs(later(), 10),
            two.record_upload(&again, u64::MAX),
        );
        match (claimed.unwrap().as_slice(), recorded.unwrap()) {
            ([], UploadRecorded::Recorded) => {
                assert!(
                    one.claim_unused_blobs(later(), 10)
                        .await
                        .unwrap()
                        .is_empty(),
                    "used again: never claimed"
                );
            }
            ([claimed], UploadRecorded::BlobBeingDeleted) if *claimed == blob => {
                assert!(one.file(ann, again.info.id).await.unwrap().is_none());
                one.forget_blobs(std::slice::from_ref(&blob)).await.unwrap();
                assert_eq!(
                    two.record_upload(&again, u64::MAX).await.unwrap(),
                    UploadRecorded::Recorded
                );
            }
            other => panic!("a blob is claimed or used, never both nor neither: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_expiring_as_it_is_sent_is_either_sent_or_gone() {
    let database = TestDatabase::create().await;
    let (one, two) = (database.store(2).await, database.store(2).await);
    let (ann, bob) = (user(&one, "ann").await, user(&one, "bob").await);
    let (chat, _) = one.create_direct(ann, bob).await.unwrap();
    let cutoff = OffsetDateTime::now_utc() - Duration::days(1);
    for round in 0..12 {
        let file = upload(
            ann,
            key(),
            10,
            OffsetDateTime::now_utc() - Duration::days(2),
        );
        assert_eq!(
            one.record_upload(&file, u64::MAX).await.unwrap(),
            UploadRecorded::Recorded
        );
        let send = [new_event(
            chat,
            ann,
            &format!("m{round}"),
            with_files(&[&file]),
        )];
        let (expired, sent) =
            tokio::join!(one.expire_uploads(cutoff, 10), two.append_events(&send),);
        let claimed = one.claim_unused_blobs(later(), 10).await.unwrap();
        match (expired.unwrap(), sent.unwrap().remove(0)) {
            (0, Appended::New(_)) => {
                assert!(claimed.is_empty(), "its blob is used: {claimed:?}");
                assert!(one.file(bob, file.info.id).await.unwrap().is_some());
            }
            (1, Appended::Refused(error)) if error.code == ErrorCode::NotFound => {
                assert_eq!(
                    claimed,
                    std::slice::from_ref(&file.blob),
                    "its blob is unused"
                );
                one.forget_blobs(&claimed).await.unwrap();
            }
            other => panic!("an upload is sent or expired, never both nor neither: {other:?}"),
        }
    }
}
