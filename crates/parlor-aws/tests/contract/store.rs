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
use parlor_core::events::{Change, EventData};
use parlor_core::ids::{ConversationId, UserId};
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
