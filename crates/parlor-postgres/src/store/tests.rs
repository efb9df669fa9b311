//! PostgreSQL-specific checks: every connection's settings, migrations under the advisory
//! lock, schema upgrades (data written before the event log reads back as events) and
//! refusals, connection failures and text PostgreSQL cannot hold, and ([`files`]) uploads,
//! attachments and blob claims racing each other. The behaviour every store shares is
//! checked by the contract suite in `tests/contract`.

use std::time::Duration;

use parlor_core::BackendErrorKind;
use parlor_core::error::ErrorCode;
use parlor_core::events::{Change, EventData, Role};
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::ports::{Appended, NewEvent, Page, Store};
use time::OffsetDateTime;
use tokio_postgres::{Config, NoTls};
use uuid::Uuid;

use super::PgStore;
use super::schema::MIGRATIONS;

mod files;
mod leases;

/// A fresh database on the test server (`PARLOR_TEST_PG_URL`), dropped at the end.
struct TestDatabase {
    admin: Config,
    config: Config,
    name: String,
}

impl TestDatabase {
    async fn create() -> TestDatabase {
        let url = std::env::var("PARLOR_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut admin: Config = url.parse().expect("PARLOR_TEST_PG_URL is a PostgreSQL url");
        admin.connect_timeout(Duration::from_secs(5));
        let name = format!("parlor_test_{}", Uuid::now_v7().simple());
        let database = TestDatabase {
            config: {
                let mut config = admin.clone();
                config.dbname(&name);
                config
            },
            admin,
            name,
        };
        database
            .admin_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {}", database.name))
            .await
            .expect("create test database");
        database
    }

    async fn admin_client(&self) -> tokio_postgres::Client {
        client(&self.admin).await
    }

    async fn store(&self, pool_size: usize) -> PgStore {
        PgStore::connect_with(self.config.clone(), pool_size)
            .await
            .expect("connect store")
    }
}

async fn client(config: &Config) -> tokio_postgres::Client {
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(error) => panic!(
            "PostgreSQL is not reachable: {error:?}\n\
             Start it (and get PARLOR_TEST_PG_URL) with: eval \"$(scripts/services up)\""
        ),
    }
}

impl Drop for TestDatabase {
    /// Best effort, on a thread of its own: `drop` cannot await.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) = admin.connect(NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&statement).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
    }
}

async fn user(store: &PgStore, name: &str) -> UserId {
    store.create_user(name, "hash").await.unwrap().unwrap().id
}

fn new_event(
    conversation_id: ConversationId,
    sender_id: UserId,
    client_msg_id: &str,
    change: Change,
) -> NewEvent {
    NewEvent {
        conversation_id,
        sender_id,
        client_msg_id: client_msg_id.to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
        change,
    }
}

fn message(body: &str) -> Change {
    Change::Message {
        body: body.to_owned(),
        reply_to_seq: None,
        files: Vec::new(),
    }
}

/// The schema versions the database recorded.
async fn versions(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query(
            "SELECT version FROM parlor_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Creates the schema of the first `count` migrations, as a build of that time left it.
async fn migrate_to(client: &tokio_postgres::Client, count: usize) {
    client
        .batch_execute(
            "CREATE TABLE parlor_schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .unwrap();
    for (index, migration) in MIGRATIONS[..count].iter().enumerate() {
        client.batch_execute(migration).await.unwrap();
        let version = index as i32 + 1;
        client
            .execute(
                "INSERT INTO parlor_schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn every_pooled_connection_commits_synchronously_whatever_the_default() {
    let database = TestDatabase::create().await;
    let statement = format!(
        "ALTER DATABASE {} SET synchronous_commit = off",
        database.name
    );
    database
        .admin_client()
        .await
        .batch_execute(&statement)
        .await
        .unwrap();
    let plain = client(&database.config).await;
    let default: String = plain
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(default, "off", "the database default this test overrides");

    let store = database.store(3).await;
    // All at once, so that each is a connection of its own.
    let connections = [
        store.pool.get().await.unwrap(),
        store.pool.get().await.unwrap(),
        store.pool.get().await.unwrap(),
    ];
    for connection in &connections {
        let row = connection
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "on");
        let row = connection
            .query_one("SHOW plan_cache_mode", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "force_custom_plan");
        let row = connection
            .query_one("SHOW idle_in_transaction_session_timeout", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "5s");
        let row = connection.query_one("SHOW jit", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let database = TestDatabase::create().await;
    let starts: Vec<_> = (0..4)
        .map(|_| tokio::spawn(PgStore::connect_with(database.config.clone(), 1)))
        .collect();
    for start in starts {
        start.await.unwrap().expect("connect");
    }
    let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(versions(&client(&database.config).await).await, expected);
}

#[tokio::test]
async fn a_database_of_the_first_schema_is_brought_up_to_date() {
    let database = TestDatabase::create().await;
    let plain = client(&database.config).await;
    migrate_to(&plain, 1).await;

    let store = database.store(1).await;
    assert_eq!(
        versions(&plain).await,
        (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
    let foreign_keys: i64 = plain
        .query_one(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = 'events'::regclass AND contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign_keys, 0);
    let ann = user(&store, "ann").await;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let appended = store
        .append_events(&[new_event(notes, ann, "m1", message("hi"))])
        .await
        .unwrap();
    assert!(
        matches!(&appended[0], Appended::New(stored) if stored.event.seq == 1),
        "{appended:?}"
    );
}

/// Data written by a build before the event log (the first two migrations): its messages
/// read back as message events, and the members of a group, whose creator nobody recorded,
/// are all its admins.
#[tokio::test]
async fn messages_and_groups_from_before_the_event_log_read_back_as_events() {
    let database = TestDatabase::create().await;
    let plain = client(&database.config).await;
    migrate_to(&plain, 2).await;
    let (ann, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let (group, message_id) = (Uuid::now_v7(), Uuid::now_v7());
    let (created_ns, sent_ns): (i64, i64) = (1_700_000_000_000_000_001, 1_700_000_100_000_000_002);
    plain
        .execute(
            "INSERT INTO users (id, username, password_hash, created_at_ns)
             VALUES ($1, 'ann', 'hash', $3), ($2, 'bob', 'hash', $3)",
            &[&ann, &bob, &created_ns],
        )
        .await
        .unwrap();
    plain
        .execute(
            "INSERT INTO conversations (id, kind, title, last_seq, last_activity_at_ns,
                                        created_at_ns)
             VALUES ($1, 'group', 'team', 1, $2, $3)",
            &[&group, &sent_ns, &created_ns],
        )
        .await
        .unwrap();
    plain
        .execute(
            "INSERT INTO members (conversation_id, user_id, last_read_seq)
             VALUES ($1, $2, 1), ($1, $3, 0)",
            &[&group, &ann, &bob],
        )
        .await
        .unwrap();
    plain
        .execute(
            "INSERT INTO messages (conversation_id, seq, id, sender_id, client_msg_id, body,
                                   created_at_ns)
             VALUES ($1, 1, $2, $3, 'm1', 'hello @bob', $4)",
            &[&group, &message_id, &ann, &sent_ns],
        )
        .await
        .unwrap();

    let store = database.store(2).await;
    assert_eq!(
        versions(&plain).await,
        (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>()
    );
    let group = ConversationId(group);
    let (ann, bob) = (UserId(ann), UserId(bob));
    let page = Page {
        before_seq: None,
        after_seq: None,
        limit: 50,
    };
    let messages = store.messages(group, page).await.unwrap();
    assert_eq!(messages.len(), 1);
    let old = &messages[0];
    assert_eq!(
        (old.id.0, old.seq, old.sender_id, old.body.as_str()),
        (message_id, 1, ann, "hello @bob")
    );
    assert_eq!(old.created_at.unix_timestamp_nanos(), i128::from(sent_ns));
    // Stored before mentions existed: nobody was resolved, and nothing is made up now.
    assert!(old.mentions.is_empty() && old.reactions.is_empty() && !old.deleted);
    let events = store.events(group, 0, 50).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(
        matches!(&events[0].data, EventData::Message { message } if message == old),
        "{events:?}"
    );

    let view = store.conversation_of(bob, group).await.unwrap().unwrap();
    let roles: Vec<(UserId, Role, u64, u64)> = view
        .members
        .iter()
        .map(|m| (m.user.id, m.role, m.last_read_seq, m.last_delivered_seq))
        .collect();
    assert_eq!(
        roles,
        [(ann, Role::Admin, 1, 1), (bob, Role::Admin, 0, 0)],
        "by name, every member an admin, delivered as far as read"
    );
    assert_eq!(view.last_message.as_ref(), Some(old));
    assert_eq!((view.last_seq, view.unread_count), (1, 1));

    // The log goes on from there, and an old member's powers work.
    let appended = store
        .append_events(&[
            new_event(
                group,
                bob,
                "t1",
                Change::TitleChanged {
                    title: "crew".into(),
                },
            ),
            new_event(group, ann, "m2", message("hi")),
        ])
        .await
        .unwrap();
    let seqs: Vec<u64> = appended
        .iter()
        .map(|a| match a {
            Appended::New(stored) => stored.event.seq,
            other => panic!("expected new events, got {other:?}"),
        })
        .collect();
    assert_eq!(seqs, [2, 3]);
    let view = store.conversation_of(ann, group).await.unwrap().unwrap();
    assert_eq!(view.title.as_deref(), Some("crew"));
    assert_eq!(view.last_message.map(|m| m.seq), Some(3));
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let database = TestDatabase::create().await;
    drop(database.store(1).await);
    let newer = MIGRATIONS.len() as i32 + 1;
    client(&database.config)
        .await
        .execute(
            "INSERT INTO parlor_schema_migrations (version) VALUES ($1)",
            &[&newer],
        )
        .await
        .unwrap();
    let error = PgStore::connect_with(database.config.clone(), 1)
        .await
        .unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected);
    assert!(error.message.contains("schema is version"), "{error}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_a_bad_url_rejected() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let error = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", 1)
        .await
        .unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
    let error = PgStore::connect("postgres://[oops", 1).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
    let error = PgStore::connect("postgres://postgres@127.0.0.1:1/postgres", 0)
        .await
        .unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
}

#[tokio::test]
async fn a_lost_connection_is_unavailable_and_the_next_call_reconnects() {
    let database = TestDatabase::create().await;
    let store = database.store(1).await;
    let ann = user(&store, "ann").await;
    database
        .admin_client()
        .await
        .execute(
            // With a timeout, it waits until the backend is gone.
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE datname = $1",
            &[&database.name],
        )
        .await
        .unwrap();
    // The pool may or may not have noticed yet; either way nothing is `Rejected`.
    if let Err(error) = store.users(&[ann]).await {
        assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
    }
    let found = store.users(&[ann]).await.expect("a new connection");
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn text_postgres_cannot_hold_is_rejected_alone() {
    let database = TestDatabase::create().await;
    let store = database.store(2).await;
    let (ann, bob) = (user(&store, "ann").await, user(&store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let appended = store
        .append_events(&[
            new_event(chat, ann, "m1", message("nul \0 inside")),
            new_event(chat, ann, "m\u{0}2", message("fine")),
            new_event(chat, ann, "m3", message("fine")),
            new_event(
                chat,
                ann,
                "r1",
                Change::ReactionAdded {
                    target_seq: 1,
                    emoji: "\0".into(),
                },
            ),
            new_event(chat, ann, "e\u{0}1", Change::Delete { target_seq: 1 }),
            new_event(
                chat,
                ann,
                "e1",
                Change::Edit {
                    target_seq: 1,
                    body: "still \0".into(),
                },
            ),
            new_event(
                chat,
                ann,
                "e2",
                Change::Edit {
                    target_seq: 1,
                    body: "fixed".into(),
                },
            ),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&appended[0], Appended::Rejected(_)),
        "{appended:?}"
    );
    assert!(
        matches!(&appended[1], Appended::Rejected(_)),
        "{appended:?}"
    );
    assert!(
        matches!(&appended[2], Appended::New(stored) if stored.event.seq == 1),
        "{appended:?}"
    );
    for rejected in &appended[3..6] {
        assert!(matches!(rejected, Appended::Rejected(_)), "{appended:?}");
    }
    assert!(
        matches!(&appended[6], Appended::New(stored) if stored.event.seq == 2),
        "{appended:?}"
    );

    let error = store.create_group(ann, "nul \0", &[]).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
}

/// Member and role changes sent at the same time through two handles (two persister
/// processes) are applied one after the other, each checked on the state the other left:
/// two admins removing each other leave one of them; the one admin who is left cannot
/// step down while the other leaves, or is promoted when they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_member_changes_always_leave_the_group_an_admin() {
    let database = TestDatabase::create().await;
    let (one, two) = (database.store(2).await, database.store(2).await);
    let (ann, bob, cid) = (
        user(&one, "ann").await,
        user(&one, "bob").await,
        user(&one, "cid").await,
    );
    let promote = |user_id| Change::RoleChanged {
        user_id,
        role: Role::Admin,
    };
    let admins = |group| {
        let store = &one;
        async move {
            let view = store.conversation_of(cid, group).await.unwrap().unwrap();
            view.members
                .iter()
                .filter(|m| m.role == Role::Admin)
                .map(|m| m.user.id)
                .collect::<Vec<_>>()
        }
    };
    for round in 0..8 {
        let group = one.create_group(ann, "team", &[bob, cid]).await.unwrap();
        let made_admin = one
            .append_events(&[new_event(group, ann, &format!("p{round}"), promote(bob))])
            .await
            .unwrap();
        assert!(matches!(&made_admin[0], Appended::New(_)), "{made_admin:?}");

        // Round by round, the one or the other goes first.
        let (first, second) = if round % 2 == 0 {
            (ann, bob)
        } else {
            (bob, ann)
        };
        let removes_second = [new_event(
            group,
            first,
            &format!("x{round}"),
            Change::MemberRemoved { user_id: second },
        )];
        let removes_first = [new_event(
            group,
            second,
            &format!("x{round}"),
            Change::MemberRemoved { user_id: first },
        )];
        let (a, b) = tokio::join!(
            one.append_events(&removes_second),
            two.append_events(&removes_first),
        );
        let outcomes = [a.unwrap().remove(0), b.unwrap().remove(0)];
        let stored = outcomes
            .iter()
            .filter(|o| matches!(o, Appended::New(_)))
            .count();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, Appended::Refused(e) if e.code == ErrorCode::NotFound))
            .count();
        assert_eq!((stored, refused), (1, 1), "{outcomes:?}");
        let left = admins(group).await;
        assert_eq!(left.len(), 1, "one of the two admins stays: {left:?}");
        let stayed = left[0];

        // The last admin steps down and leaves at the same time: whichever goes first, the
        // step-down is refused (the last admin, or no longer a member) and the departure
        // promotes the one who stays.
        let step_down = [new_event(
            group,
            stayed,
            &format!("down{round}"),
            Change::RoleChanged {
                user_id: stayed,
                role: Role::Member,
            },
        )];
        let leave = [new_event(
            group,
            stayed,
            &format!("leave{round}"),
            Change::MemberLeft {},
        )];
        let (a, b) = tokio::join!(one.append_events(&step_down), two.append_events(&leave));
        let (down, leave) = (a.unwrap().remove(0), b.unwrap().remove(0));
        assert!(
            matches!(&down, Appended::Refused(e) if e.code == ErrorCode::Conflict
                || e.code == ErrorCode::NotFound),
            "the last admin cannot step down, nor can someone gone: {down:?}"
        );
        let Appended::New(leave) = leave else {
            panic!("anyone may leave: {leave:?}");
        };
        assert!(
            matches!(leave.event.data, EventData::MemberLeft { promoted_user_id: Some(p), .. } if p == cid),
            "{leave:?}"
        );
        assert_eq!(admins(group).await, [cid]);
        assert_eq!(leave.members_seq, leave.event.seq);
    }
}

/// The terms the persisters make (`lexemes.rs`) are the ones `to_tsvector` made for rows
/// stored before migration 0008, so a query finds old and new rows alike: words of every
/// kind a chat holds, in English and with accents.
#[tokio::test]
async fn lexemes_match_what_postgresql_made() {
    let database = TestDatabase::create().await;
    let _store = database.store(1).await;
    let plain = client(&database.config).await;
    let text = "Deploys deployed deploying deployment connection connected relational \
        generously happiness running ran runs easily fairly skies dying lying cats cat's \
        ponies caresses agreed feed sized hopping hoped national nationalism organization \
        organise arguing argued arguments universal university meeting meetings tomorrow \
        yesterday week's standup retro sprint backlog releases released shipping shipped \
        café naïve résumé Zürich São Paulo Ångström smørrebrød straße Łódź cœur Ærø \
        GitHub PostgreSQL v2 h264 2026 3rd x86 rollback rolled cancelled cancellation \
        quickly quicker quickest biggest happier reply replied replies emails emailed";
    let words = parlor_core::search::word_ranges(text)
        .into_iter()
        .map(|(start, end)| text[start..end].to_owned());
    for word in words {
        let made: Vec<String> = plain
            .query(
                "SELECT lexeme FROM unnest(to_tsvector('parlor_search', $1))",
                &[&word],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(
            made,
            [super::lexemes::lexeme(&word)],
            "the term of {word:?}"
        );
    }
    // A whole body: the same lexemes at the same positions.
    let body = "Deployed the café's fix, 2 times; deploys go out at 3rd standup.";
    let same: bool = plain
        .query_one(
            "SELECT $1::text::tsvector = to_tsvector('parlor_search', $2)",
            &[&super::lexemes::tsvector(body), &body],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same, "{body:?} as {}", super::lexemes::tsvector(body));
}

/// A message stored before migration 0008, whose vector PostgreSQL made, is found after it
/// with its snippet marked; edited after it, it is found by its new words only.
#[tokio::test]
async fn a_message_stored_before_the_terms_moved_is_found_and_edited() {
    use parlor_core::search::{Search, SearchQuery};
    let database = TestDatabase::create().await;
    let plain = client(&database.config).await;
    migrate_to(&plain, 7).await;
    let (ann, group, message_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let at_ns: i64 = 1_700_000_000_000_000_001;
    plain
        .batch_execute(&format!(
            "INSERT INTO users (id, username, password_hash, created_at_ns)
             VALUES ('{ann}', 'ann', 'hash', {at_ns});
             INSERT INTO conversations (id, kind, title, last_seq, last_message_seq,
                                        last_activity_at_ns, created_at_ns)
             VALUES ('{group}', 'group', 'team', 1, 1, {at_ns}, {at_ns});
             INSERT INTO members (conversation_id, user_id, role, last_read_seq)
             VALUES ('{group}', '{ann}', 'admin', 1);
             INSERT INTO events (conversation_id, seq, id, sender_id, client_msg_id, body,
                                 created_at_ns)
             VALUES ('{group}', 1, '{message_id}', '{ann}', 'm1',
                     'We deployed the Café build', {at_ns});"
        ))
        .await
        .unwrap();

    let store = database.store(1).await;
    let (ann, group) = (UserId(ann), ConversationId(group));
    let found = |text: &str| {
        let store = &store;
        let query = SearchQuery::new(text).unwrap();
        async move { store.search(ann, &query).await.unwrap().hits }
    };
    let hits = found("deploys cafe").await;
    assert_eq!(hits.len(), 1, "found by the vector PostgreSQL made");
    let marked: Vec<&str> = hits[0]
        .snippet
        .iter()
        .filter(|part| part.hit)
        .map(|part| part.text.as_str())
        .collect();
    assert_eq!(marked, ["deployed", "Café"]);

    store
        .append_events(&[new_event(
            group,
            ann,
            "e1",
            Change::Edit {
                target_seq: 1,
                body: "rolled back".into(),
            },
        )])
        .await
        .unwrap();
    assert!(found("deployed").await.is_empty(), "the old words are gone");
    assert_eq!(
        found("rolling back").await.len(),
        1,
        "the new ones are found"
    );
}
