//! The store and search contracts against [`SqliteStore`], one temporary database file per
//! test.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_core::ports::Store;
use parlor_core::search::Search;
use parlor_embedded::SqliteStore;
use parlor_testkit::search::SearchFixture;
use parlor_testkit::store::StoreFixture;

struct SqliteFixture {
    store: Arc<SqliteStore>,
    path: PathBuf,
    // Dropped last: removes the database once every handle is closed.
    _dir: tempfile::TempDir,
}

impl SqliteFixture {
    fn new() -> SqliteFixture {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("parlor.db");
        let store = SqliteStore::open(&path).expect("open store");
        SqliteFixture {
            store: Arc::new(store),
            path,
            _dir: dir,
        }
    }
}

impl StoreFixture for SqliteFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn open_another(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = SqliteStore::open(&self.path).expect("open another store");
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

parlor_testkit::store_contract!(SqliteFixture::new());

impl SearchFixture for SqliteFixture {
    fn search(&self) -> Arc<dyn Search> {
        self.store.clone()
    }
}

mod search {
    use super::SqliteFixture;

    parlor_testkit::search_contract!(SqliteFixture::new());
}
