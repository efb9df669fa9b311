//! The embedded backend set: one data directory, one process.
//!
//! ```text
//! DATA_DIR/LOCK                          held by the one process using the queues
//! DATA_DIR/parlor.sqlite3                the store
//! DATA_DIR/queues/inbound/{entries,dead} write-ahead logs
//! DATA_DIR/queues/notifications/...
//! DATA_DIR/blobs/ab/cdef…                the bytes of files, by their SHA-256
//! DATA_DIR/uploads/                      uploads while they arrive (emptied at start)
//! ```

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use parlor_core::ports::Queue;
use parlor_embedded::{
    DirBlobStore, LocalRelay, MemoryRegistry, SqliteStore, WalQueue, WalQueueOptions,
};
use parlor_server::Deps;

pub struct Embedded {
    pub store: Arc<SqliteStore>,
    pub blobs: Arc<DirBlobStore>,
    pub inbound: Arc<WalQueue>,
    pub notifications: Arc<WalQueue>,
    registry: Arc<MemoryRegistry>,
    relay: Arc<LocalRelay>,
    _lock: File,
}

/// Which queue an admin command is about.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum QueueName {
    Inbound,
    Notifications,
}

impl Embedded {
    /// Opens every backend in `data_dir`, creating it; fails if another process holds it.
    pub fn open(data_dir: &Path) -> anyhow::Result<Embedded> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let lock = lock(data_dir)?;
        let store = Arc::new(open_store(data_dir)?);
        let blobs = Arc::new(
            DirBlobStore::open(&data_dir.join("blobs")).context("cannot open the blob store")?,
        );
        empty_dir(&uploads_dir(data_dir))?;
        let queues = data_dir.join("queues");
        let inbound = WalQueue::open(
            &queues.join("inbound"),
            "inbound",
            WalQueueOptions::default(),
        )
        .context("cannot open the inbound queue")?;
        let notifications = WalQueue::open(
            &queues.join("notifications"),
            "notifications",
            WalQueueOptions::default(),
        )
        .context("cannot open the notification queue")?;
        Ok(Embedded {
            store,
            blobs,
            inbound,
            notifications,
            registry: Arc::new(MemoryRegistry::new()),
            relay: Arc::new(LocalRelay::new()),
            _lock: lock,
        })
    }

    pub fn queue(&self, name: QueueName) -> &Arc<WalQueue> {
        match name {
            QueueName::Inbound => &self.inbound,
            QueueName::Notifications => &self.notifications,
        }
    }

    pub fn deps(&self) -> Deps {
        Deps {
            store: self.store.clone(),
            inbound: self.inbound.clone() as Arc<dyn Queue>,
            notifications: self.notifications.clone() as Arc<dyn Queue>,
            registry: self.registry.clone(),
            presence: self.registry.clone(),
            relay: self.relay.clone(),
            search: Some(self.store.clone()),
            blobs: self.blobs.clone(),
            // One process: its persister alone consumes the queue.
            inbound_lease: None,
        }
    }

    /// Flushes both queues' logs and stops their writers.
    pub fn close(&self) {
        self.inbound.close();
        self.notifications.close();
    }
}

/// The store alone: SQLite allows other processes, so user administration works while
/// Parlor runs.
pub fn open_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    SqliteStore::open(&data_dir.join("parlor.sqlite3")).context("cannot open the database")
}

fn lock(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "the data directory {} is in use by another parlor process (stop it first)",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Where uploads are staged while they arrive: on the data directory's filesystem, so that
/// storing one is a hard link, not a copy.
pub fn uploads_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("uploads")
}

/// Creates `dir` empty: uploads a crash cut off are of no use to anyone.
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot empty the upload directory {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the upload directory {}", dir.display()))
}
