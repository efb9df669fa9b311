//! SQLite-specific checks: the connections' pragmas, a file closed and opened again, a file
//! of the first schema migrated to events, and a schema newer than this build. The
//! behaviour every store shares is checked by the contract suite in `tests/contract`.

use parlor_core::BackendErrorKind;
use parlor_core::events::{Change, EventData, Role};
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{Appended, NewEvent, Page, Store, Stored, TokenHash};
use parlor_core::protocol::{ConversationKind, Message};
use parlor_core::storage::nanos;
use rusqlite::{Connection, params};
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
) -> NewEvent {
    NewEvent {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.to_owned(),
        accepted_at: T0,
        change: Change::Message {
            body: body.to_owned(),
            reply_to_seq: None,
            files: Vec::new(),
        },
    }
}

fn message_of(stored: &Stored) -> Message {
    match &stored.event.data {
        EventData::Message { message } => message.clone(),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn new_ones(appended: &[Appended]) -> Vec<Message> {
    appended
        .iter()
        .map(|a| match a {
            Appended::New(stored) => message_of(stored),
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
            .append_events(&[
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
        .append_events(&[
            new_message(chat, ann, "m1", "one"),
            new_message(chat, ann, "m3", "three"),
        ])
        .await
        .unwrap();
    assert!(matches!(&again[0], Appended::Duplicate(s) if message_of(s) == stored[0]));
    assert!(matches!(&again[1], Appended::New(s) if s.event.seq == 3));
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

/// A file written by a build of the first schema (messages only, no roles) opens with this
/// build: its messages read back as message events, its group's members are all admins,
/// and its logs go on from where they were.
#[tokio::test]
async fn a_file_of_the_first_schema_is_migrated_to_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parlor.db");
    let (ann, bob) = (UserId::new(), UserId::new());
    let (group, chat) = (ConversationId::new(), ConversationId::new());
    let message_id = MessageId::new();
    let created = nanos(T0).unwrap();
    {
        let mut connection = Connection::open(&path).unwrap();
        let tx = connection.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        for (id, name) in [(ann, "ann"), (bob, "bob")] {
            tx.execute(
                "INSERT INTO users (id, username, password_hash, created_at_ns)
                 VALUES (?1, ?2, 'hash', ?3)",
                params![id.to_string(), name, created],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO conversations (id, kind, title, last_seq, last_activity_at_ns, created_at_ns)
             VALUES (?1, 'group', 'Team', 1, ?2, ?2)",
            params![group.to_string(), created],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO conversations (id, kind, direct_key, last_activity_at_ns, created_at_ns)
             VALUES (?1, 'direct', 'a:b', ?2, ?2)",
            params![chat.to_string(), created - 1],
        )
        .unwrap();
        for (conversation, user, read) in [
            (group, ann, 1),
            (group, bob, 0),
            (chat, ann, 0),
            (chat, bob, 0),
        ] {
            tx.execute(
                "INSERT INTO members (conversation_id, user_id, last_read_seq) VALUES (?1, ?2, ?3)",
                params![conversation.to_string(), user.to_string(), read],
            )
            .unwrap();
        }
        tx.execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns)
             VALUES (?1, 1, ?2, ?3, 'm1', 'from before', ?4)",
            params![group.to_string(), message_id.to_string(), ann.to_string(), created],
        )
        .unwrap();
        tx.commit().unwrap();
    }

    let store = SqliteStore::open(&path).unwrap();
    let before = Message::new(
        message_id,
        group,
        1,
        ann,
        "m1".into(),
        "from before".into(),
        T0,
    );
    let read = store.messages(group, page(None, None, 10)).await.unwrap();
    assert_eq!(read, std::slice::from_ref(&before));
    let events = store.events(group, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].data,
        EventData::Message {
            message: before.clone()
        }
    );
    assert_eq!((events[0].seq, events[0].sender_id), (1, ann));

    let view = store.conversation_of(bob, group).await.unwrap().unwrap();
    assert_eq!(view.kind, ConversationKind::Group);
    assert_eq!(view.title.as_deref(), Some("Team"));
    assert_eq!(view.last_message, Some(before));
    assert_eq!(
        (view.last_seq, view.last_read_seq, view.unread_count),
        (1, 0, 1)
    );
    let roles: Vec<_> = view
        .members
        .iter()
        .map(|m| (m.user.id, m.role, m.last_delivered_seq))
        .collect();
    assert_eq!(roles, [(ann, Role::Admin, 1), (bob, Role::Admin, 0)]);
    let direct = store.conversation_of(ann, chat).await.unwrap().unwrap();
    assert!(direct.members.iter().all(|m| m.role == Role::Member));
    assert_eq!(direct.last_message, None);

    // The log goes on after the old messages, and the old ids still count as repeats.
    let again = store
        .append_events(&[
            new_message(group, ann, "m1", "a repeat"),
            new_message(group, bob, "b1", "after the migration"),
        ])
        .await
        .unwrap();
    assert!(matches!(&again[0], Appended::Duplicate(s) if s.event.seq == 1 && s.members_seq == 0));
    assert!(matches!(&again[1], Appended::New(s) if s.event.seq == 2));
    // Everyone was an admin, so anyone may rename the group.
    let rename = NewEvent {
        change: Change::TitleChanged {
            title: "Renamed".into(),
        },
        ..new_message(group, bob, "b2", "")
    };
    assert_eq!(store.refusal(&rename).await.unwrap(), None);
}
