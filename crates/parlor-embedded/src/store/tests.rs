//! SQLite-specific checks: the connections' pragmas, a file closed and opened again, and a
//! schema newer than this build. The behaviour every store shares is checked by the
//! contract suite in `tests/contract`.

use parlor_core::BackendErrorKind;
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{Appended, NewMessage, Page, Store, TokenHash};
use parlor_core::protocol::Message;
use rusqlite::Connection;
use time::OffsetDateTime;
use time::macros::datetime;

use super::SqliteStore;
use super::connections::READER_CONNECTIONS;
use super::schema::MIGRATIONS;

struct Fixture {
    dir: tempfile::TempDir,
    store: SqliteStore,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = SqliteStore::open(&dir.path().join("parlor.db")).expect("open store");
        Fixture { dir, store }
    }

    fn reopen(self) -> Fixture {
        let Fixture { dir, store } = self;
        let path = store.path().to_owned();
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen store");
        Fixture { dir, store }
    }

    async fn user(&self, name: &str) -> UserId {
        self.store
            .create_user(name, "hash")
            .await
            .expect("create user")
            .expect("name is free")
            .id
    }
}

const T0: OffsetDateTime = datetime!(2025-03-04 05:06:07.123456789 UTC);

fn new_message(
    conversation: ConversationId,
    sender: UserId,
    client_msg_id: &str,
    body: &str,
) -> NewMessage {
    NewMessage {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.to_owned(),
        body: body.to_owned(),
        accepted_at: T0,
    }
}

fn new_ones(appended: &[Appended]) -> Vec<Message> {
    appended
        .iter()
        .map(|a| match a {
            Appended::New(message) => message.clone(),
            other => panic!("expected a new message, got {other:?}"),
        })
        .collect()
}

fn page(before_seq: Option<Seq>, after_seq: Option<Seq>, limit: u16) -> Page {
    Page {
        before_seq,
        after_seq,
        limit,
    }
}

#[tokio::test]
async fn connections_are_durable_wal_with_foreign_keys_and_read_only_readers() {
    let f = Fixture::new();
    let pragma = |connection: &Connection, name: &str| -> String {
        connection
            .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
            .map(|value| format!("{value:?}"))
            .unwrap()
    };
    let writer = f.store.writer.lock().await;
    assert_eq!(pragma(&writer, "journal_mode"), r#"Text("wal")"#);
    assert_eq!(pragma(&writer, "synchronous"), "Integer(2)", "FULL");
    assert_eq!(pragma(&writer, "foreign_keys"), "Integer(1)");
    assert_eq!(
        pragma(&writer, "user_version"),
        format!("Integer({})", MIGRATIONS.len())
    );
    drop(writer);
    let readers = f.store.readers.idle.lock().unwrap();
    assert_eq!(readers.len(), READER_CONNECTIONS);
    for reader in readers.iter() {
        assert_eq!(pragma(reader, "query_only"), "Integer(1)");
        assert_eq!(pragma(reader, "foreign_keys"), "Integer(1)");
    }
}

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let f = Fixture::new();
    let (ann, bob) = (f.user("ann").await, f.user("bob").await);
    let (chat, _) = f.store.create_direct(ann, bob).await.unwrap();
    let stored = new_ones(
        &f.store
            .append_messages(&[
                new_message(chat, ann, "m1", "one"),
                new_message(chat, bob, "m2", "two"),
            ])
            .await
            .unwrap(),
    );
    f.store
        .create_session(TokenHash([1; 32]), ann, T0 + time::Duration::days(1))
        .await
        .unwrap();
    let before = f.store.conversations_of(ann).await.unwrap();

    let f = f.reopen();
    assert_eq!(
        f.store.messages(chat, page(None, None, 10)).await.unwrap(),
        stored
    );
    assert_eq!(f.store.conversations_of(ann).await.unwrap(), before);
    assert!(
        f.store
            .session_user(TokenHash([1; 32]), T0)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(f.store.create_user("ANN", "h").await.unwrap(), None);
    let again = f
        .store
        .append_messages(&[
            new_message(chat, ann, "m1", "one"),
            new_message(chat, ann, "m3", "three"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Duplicate(stored[0].clone()));
    assert!(matches!(&again[1], Appended::New(m) if m.seq == 3));
}

#[tokio::test]
async fn opening_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parlor.db");
    drop(SqliteStore::open(&path).unwrap());
    let connection = Connection::open(&path).unwrap();
    connection
        .pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
        .unwrap();
    drop(connection);

    let error = SqliteStore::open(&path).unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected);
    let error = error.to_string();
    assert!(error.contains("schema is version"), "{error}");
}
