//! The store and search contracts against [`PgStore`], one fresh database per test.
//!
//! The server comes from `PARLOR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test creates
//! `parlor_test_<uuid>` there and drops it at the end. No server fails the test: run
//! `eval "$(scripts/services up)"` first.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parlor_core::ports::Store;
use parlor_core::search::Search;
use parlor_postgres::PgStore;
use parlor_testkit::search::SearchFixture;
use parlor_testkit::store::StoreFixture;
use tokio_postgres::{Config, NoTls};
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Small: a test makes a few dozen calls, and dozens of tests may run at once.
const POOL_SIZE: usize = 4;

struct PgFixture {
    store: Arc<PgStore>,
    /// Points at this test's database.
    config: Config,
    /// Points at the database the test database was created from, to drop it.
    admin: Config,
    name: String,
}

impl PgFixture {
    async fn new() -> PgFixture {
        let url = std::env::var("PARLOR_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut admin: Config = url
            .parse()
            .unwrap_or_else(|error| panic!("PARLOR_TEST_PG_URL {url:?} is malformed: {error}"));
        admin.connect_timeout(Duration::from_secs(5));
        let name = format!("parlor_test_{}", Uuid::now_v7().simple());
        let client = connect(&admin, &url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("create database {name}: {error:?}"));
        let mut config = admin.clone();
        config.dbname(&name);
        let store = PgStore::connect_with(config.clone(), POOL_SIZE)
            .await
            .unwrap_or_else(|error| panic!("connect to {name}: {error}"));
        PgFixture {
            store: Arc::new(store),
            config,
            admin,
            name,
        }
    }
}

/// A plain connection, or a failed test that says how to start PostgreSQL.
async fn connect(config: &Config, url: &str) -> tokio_postgres::Client {
    match config.connect(NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(error) => panic!(
            "PostgreSQL is not reachable at {url}: {error:?}\n\
             Start it (and get PARLOR_TEST_PG_URL) with: eval \"$(scripts/services up)\""
        ),
    }
}

impl StoreFixture for PgFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn open_another(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = PgStore::connect_with(self.config.clone(), POOL_SIZE)
                .await
                .expect("open another store");
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

impl Drop for PgFixture {
    /// Drops the test database, best effort, on a thread of its own: `drop` cannot await,
    /// and the test's runtime may be going away. FORCE ends the pool's connections.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(async {
                let (client, connection) = admin.connect(NoTls).await.map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&statement)
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

parlor_testkit::store_contract!(PgFixture::new().await);

impl SearchFixture for PgFixture {
    fn search(&self) -> Arc<dyn Search> {
        self.store.clone()
    }
}

mod search {
    use super::PgFixture;

    parlor_testkit::search_contract!(PgFixture::new().await);
}

mod files {
    use super::PgFixture;

    parlor_testkit::files_contract!(PgFixture::new().await);
}
