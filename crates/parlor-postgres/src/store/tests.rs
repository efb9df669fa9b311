//! PostgreSQL-specific checks: every connection's settings, migrations under the advisory
//! lock, schema upgrades and refusals, connection failures and text PostgreSQL cannot
//! hold. The behaviour every store shares is checked by the contract suite in
//! `tests/contract`.

use std::time::Duration;

use parlor_core::BackendErrorKind;
use parlor_core::ids::UserId;
use parlor_core::ports::{Appended, NewMessage, Store};
use time::OffsetDateTime;
use tokio_postgres::{Config, NoTls};
use uuid::Uuid;

use super::PgStore;
use super::schema::MIGRATIONS;

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
    let versions: Vec<i32> = client(&database.config)
        .await
        .query(
            "SELECT version FROM parlor_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(versions, expected);
}

#[tokio::test]
async fn a_database_of_the_first_schema_is_brought_up_to_date() {
    let database = TestDatabase::create().await;
    let plain = client(&database.config).await;
    plain
        .batch_execute(&format!(
            "CREATE TABLE parlor_schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );
             {}
             INSERT INTO parlor_schema_migrations (version) VALUES (1);",
            MIGRATIONS[0]
        ))
        .await
        .unwrap();

    let store = database.store(1).await;
    let versions: Vec<i32> = plain
        .query(
            "SELECT version FROM parlor_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    let foreign_keys: i64 = plain
        .query_one(
            "SELECT count(*) FROM pg_constraint
             WHERE conrelid = 'messages'::regclass AND contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign_keys, 0);
    let ann = user(&store, "ann").await;
    let notes = store.create_group("notes", &[ann]).await.unwrap();
    let message = NewMessage {
        conversation_id: notes,
        sender_id: ann,
        client_msg_id: "m1".to_owned(),
        body: "hi".to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
    };
    let appended = store.append_messages(&[message]).await.unwrap();
    assert!(matches!(&appended[0], Appended::New(m) if m.seq == 1));
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
    let message = |client_msg_id: &str, body: &str| NewMessage {
        conversation_id: chat,
        sender_id: ann,
        client_msg_id: client_msg_id.to_owned(),
        body: body.to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
    };
    let appended = store
        .append_messages(&[
            message("m1", "nul \0 inside"),
            message("m\u{0}2", "fine"),
            message("m3", "fine"),
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
        matches!(&appended[2], Appended::New(m) if m.seq == 1),
        "{appended:?}"
    );

    let error = store.create_group("nul \0", &[ann]).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected, "{error}");
}
