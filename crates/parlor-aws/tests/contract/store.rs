//! The store contract against [`DynamoStore`] on DynamoDB Local, one set of tables per test.
//!
//! The emulator comes from `PARLOR_TEST_DYNAMODB_URL`; each test creates its tables under a
//! prefix of its own (`t<uuid>-`) and deletes them at the end. No emulator fails the test:
//! run `eval "$(scripts/services up)"` first. After the contract (and the files contract),
//! two checks of what DynamoDB's limits (100 items per transaction, 400 KB per item) make
//! this store do.

use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_aws::AwsOptions;
use parlor_aws::store::DynamoStore;
use parlor_core::blobs::BlobKey;
use parlor_core::error::ErrorCode;
use parlor_core::events::{Change, EventData};
use parlor_core::files::{
    FILES_PER_MESSAGE_MAX, FileInfo, ImageSize, StoredFile, Thumbnail, UploadRecorded,
};
use parlor_core::ids::{ConversationId, FileId, UserId};
use parlor_core::ports::{Appended, NewEvent, Store};
use parlor_core::protocol::ConversationKind;
use parlor_testkit::store::StoreFixture;
use time::OffsetDateTime;
use uuid::Uuid;

struct DynamoFixture {
    store: Arc<DynamoStore>,
    client: aws_sdk_dynamodb::Client,
    prefix: String,
}

/// A client for the emulator, or a failed test that says how to start it.
async fn client() -> aws_sdk_dynamodb::Client {
    let url = std::env::var("PARLOR_TEST_DYNAMODB_URL").unwrap_or_else(|_| {
        panic!(
            "PARLOR_TEST_DYNAMODB_URL is not set: start DynamoDB Local (and get the variable) \
             with: eval \"$(scripts/services up)\""
        )
    });
    AwsOptions {
        endpoint: Some(url),
        ..Default::default()
    }
    .dynamodb()
    .await
}

impl DynamoFixture {
    async fn new() -> DynamoFixture {
        let client = client().await;
        let prefix = format!("t{}-", Uuid::now_v7().simple());
        let store = DynamoStore::open(client.clone(), &prefix, true)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "create tables {prefix}*: {error}\n\
                     Is DynamoDB Local running? eval \"$(scripts/services up)\""
                )
            });
        DynamoFixture {
            store: Arc::new(store),
            client,
            prefix,
        }
    }
}

impl StoreFixture for DynamoFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn open_another(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = DynamoStore::open(self.client.clone(), &self.prefix, false)
                .await
                .expect("open another store");
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

impl Drop for DynamoFixture {
    /// Deletes the test's tables, best effort, on a thread of its own: `drop` cannot await,
    /// and the test's runtime may be going away.
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime
                .block_on(async {
                    // A client of this runtime's own: the test's may be going away with it.
                    let store = DynamoStore::open(client().await, &prefix, false).await?;
                    store.delete_tables().await
                })
                .map_err(|error| error.to_string())
        })
        .join();
        if let Ok(Err(error)) = deleted {
            eprintln!("could not delete test tables {}*: {error}", self.prefix);
        }
    }
}

parlor_testkit::store_contract!(DynamoFixture::new().await);

mod files {
    use super::DynamoFixture;
    parlor_testkit::files_contract!(DynamoFixture::new().await);
}

// ---- beyond the contract: what DynamoDB's limits make this store do -------------------

/// A change by `sender`, accepted now.
fn change(conversation: ConversationId, sender: UserId, id: &str, change: Change) -> NewEvent {
    NewEvent {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: id.to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
        change,
    }
}

/// A transaction holds 100 items: a delete of a message edited more often than that
/// erases the bodies of all its edits all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_erases_more_edits_than_one_transaction_holds() {
    let fixture = DynamoFixture::new().await;
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap().id;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let mut batch = vec![change(
        notes,
        ann,
        "m",
        Change::Message {
            body: "draft".into(),
            reply_to_seq: None,
            files: Vec::new(),
        },
    )];
    batch.extend((1..=150).map(|i| {
        change(
            notes,
            ann,
            &format!("e{i}"),
            Change::Edit {
                target_seq: 1,
                body: format!("draft {i}"),
            },
        )
    }));
    batch.push(change(notes, ann, "d", Change::Delete { target_seq: 1 }));
    let answers = store.append_events(&batch).await.unwrap();
    assert!(answers.iter().all(|a| matches!(a, Appended::New(_))));
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events(notes, after, 200).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        events.extend(page);
    }
    assert_eq!(events.len(), 152);
    for event in &events[1..151] {
        assert_eq!(
            event.data,
            EventData::Edit {
                target_seq: 1,
                body: String::new(),
                mentions: Vec::new()
            },
            "seq {}",
            event.seq
        );
    }
    let view = store.conversation_of(ann, notes).await.unwrap().unwrap();
    assert_eq!((view.kind, view.last_seq), (ConversationKind::Group, 152));
}

/// An item holds 400 KB: a reaction that would grow a message past it is rejected (it can
/// never be stored), and the rest of the batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_outgrow_its_item_is_rejected_alone() {
    let fixture = DynamoFixture::new().await;
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap().id;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let big = "x".repeat(195 * 1024);
    let message = |id: &str, body: &str| {
        change(
            notes,
            ann,
            id,
            Change::Message {
                body: body.to_owned(),
                reply_to_seq: None,
                files: Vec::new(),
            },
        )
    };
    store.append_events(&[message("m", &big)]).await.unwrap();
    let answers = store
        .append_events(&[
            change(
                notes,
                ann,
                "e",
                Change::Edit {
                    target_seq: 1,
                    body: format!("{big}{big}"),
                },
            ),
            message("after", "still stored"),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Appended::Rejected(_)),
        "{:?}",
        answers[0]
    );
    assert!(matches!(&answers[1], Appended::New(s) if s.event.seq == 2));
}

/// A blob key of its own.
fn blob(n: u64) -> BlobKey {
    BlobKey::parse(&format!("{:032x}{n:032x}", Uuid::now_v7().as_u128() as u64)).unwrap()
}

/// An image of `owner` with a thumbnail: two blobs.
fn image(owner: UserId, size: u64) -> StoredFile {
    StoredFile {
        info: FileInfo {
            id: FileId::new(),
            name: "photo.jpg".into(),
            content_type: "image/jpeg".into(),
            size,
            image: Some(ImageSize {
                width: 1200,
                height: 800,
            }),
        },
        owner,
        blob: blob(1),
        thumbnail: Some(Thumbnail {
            blob: blob(2),
            content_type: "image/jpeg".into(),
            size: 300,
        }),
        created_at: OffsetDateTime::now_utc(),
        attached_to: None,
    }
}

/// A delete of a message with the most files (10, each with a thumbnail: 10 file items,
/// 20 blobs and the owner's total to change) and 95 edits needs more than the 100 items
/// of one transaction: the files go with the message, the edits that do not fit are
/// erased after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_removes_the_most_files_and_many_edits() {
    let fixture = DynamoFixture::new().await;
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap().id;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let quota = 10_000;
    let files: Vec<StoredFile> = (0..FILES_PER_MESSAGE_MAX)
        .map(|_| image(ann, 1_000))
        .collect();
    for file in &files {
        assert_eq!(
            store.record_upload(file, quota).await.unwrap(),
            UploadRecorded::Recorded
        );
    }
    let mut batch = vec![change(
        notes,
        ann,
        "m",
        Change::Message {
            body: String::new(),
            reply_to_seq: None,
            files: files.iter().map(|file| file.info.id).collect(),
        },
    )];
    batch.extend((1..=95).map(|i| {
        change(
            notes,
            ann,
            &format!("e{i}"),
            Change::Edit {
                target_seq: 1,
                body: format!("caption {i}"),
            },
        )
    }));
    batch.push(change(notes, ann, "d", Change::Delete { target_seq: 1 }));
    let answers = store.append_events(&batch).await.unwrap();
    assert!(
        answers.iter().all(|a| matches!(a, Appended::New(_))),
        "{answers:?}"
    );

    for file in &files {
        assert!(store.file(ann, file.info.id).await.unwrap().is_none());
    }
    let events = store.events(notes, 0, 200).await.unwrap();
    assert_eq!(events.len(), 97);
    assert!(events[1..96].iter().all(|event| matches!(
        &event.data,
        EventData::Edit { body, .. } if body.is_empty()
    )));
    match &events[0].data {
        EventData::Message { message } => assert!(message.deleted && message.files.is_empty()),
        other => panic!("{other:?}"),
    }
    let future = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let mut claimed = store.claim_unused_blobs(future, 100).await.unwrap();
    claimed.sort();
    let mut blobs: Vec<BlobKey> = files
        .iter()
        .flat_map(|file| file.blobs().cloned().collect::<Vec<_>>())
        .collect();
    blobs.sort();
    assert_eq!(claimed, blobs, "every blob released");
    // The owner's total is back to 0: the whole quota is free.
    let whole = image(ann, quota - 1);
    assert_eq!(
        store.record_upload(&whole, quota).await.unwrap(),
        UploadRecorded::Recorded
    );
}

/// Two persisters attach the same upload to messages of two conversations at once (each
/// transaction guarded by its own conversation's `last_seq`): the condition on the file
/// item lets one of them attach it; the other is refused, having stored nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_raced_into_two_conversations_is_attached_once() {
    let fixture = DynamoFixture::new().await;
    let store = fixture.store();
    let other = fixture.open_another().await;
    let ann = store.create_user("ann", "h").await.unwrap().unwrap().id;
    let bob = store.create_user("bob", "h").await.unwrap().unwrap().id;
    let carl = store.create_user("carl", "h").await.unwrap().unwrap().id;
    let (with_bob, _) = store.create_direct(ann, bob).await.unwrap();
    let (with_carl, _) = store.create_direct(ann, carl).await.unwrap();
    let mut wins: std::collections::HashMap<ConversationId, usize> = Default::default();
    for round in 0..8 {
        let file = image(ann, 10);
        assert_eq!(
            store.record_upload(&file, 1 << 30).await.unwrap(),
            UploadRecorded::Recorded
        );
        let send = |conversation| {
            change(
                conversation,
                ann,
                &format!("{conversation}-{round}"),
                Change::Message {
                    body: format!("round {round}"),
                    reply_to_seq: None,
                    files: vec![file.info.id],
                },
            )
        };
        let (first, second) = (send(with_bob), send(with_carl));
        let (a, b) = futures::future::join(
            store.append_events(std::slice::from_ref(&first)),
            other.append_events(std::slice::from_ref(&second)),
        )
        .await;
        let answers = [a.unwrap().remove(0), b.unwrap().remove(0)];
        let won: Vec<ConversationId> = answers
            .iter()
            .filter_map(|answer| match answer {
                Appended::New(stored) => Some(stored.event.conversation_id),
                _ => None,
            })
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        assert!(
            answers.iter().any(
                |answer| matches!(answer, Appended::Refused(error) if error.code == ErrorCode::Conflict)
            ),
            "round {round}: {answers:?}"
        );
        let read = store.file(ann, file.info.id).await.unwrap().unwrap();
        assert_eq!(read.attached_to.map(|at| at.conversation_id), Some(won[0]));
        *wins.entry(won[0]).or_default() += 1;
        for conversation in [with_bob, with_carl] {
            let stored = store.events(conversation, 0, 200).await.unwrap();
            assert_eq!(
                stored.len(),
                wins.get(&conversation).copied().unwrap_or(0),
                "round {round}: a refused message takes no seq"
            );
        }
    }
}

/// A message that names one file twice could never be stored (its transaction would touch
/// the file item twice): it is rejected alone, and the next message of the batch attaches
/// the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_twice_in_one_message_is_rejected() {
    let fixture = DynamoFixture::new().await;
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap().id;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let file = image(ann, 10);
    store.record_upload(&file, 1 << 30).await.unwrap();
    let message = |id: &str, files: Vec<FileId>| {
        change(
            notes,
            ann,
            id,
            Change::Message {
                body: String::new(),
                reply_to_seq: None,
                files,
            },
        )
    };
    let answers = store
        .append_events(&[
            message("twice", vec![file.info.id, file.info.id]),
            message("once", vec![file.info.id]),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&answers[0], Appended::Rejected(_)),
        "{:?}",
        answers[0]
    );
    assert!(matches!(&answers[1], Appended::New(s) if s.event.seq == 1));
}
