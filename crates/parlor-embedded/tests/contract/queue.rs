// The queue contract against the embedded backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use parlor_core::ports::Queue;
use parlor_embedded::{WalQueue, WalQueueOptions};
use parlor_testkit::queue::{QueueFactory, QueueOptions};
use tempfile::TempDir;

/// Queues in a temporary directory that lives as long as the check.
struct WalQueues {
    dir: TempDir,
    /// The open queues: a log admits one handle at a time (it is locked), so a second open
    /// of an open queue shares its handle.
    open: Mutex<HashMap<String, Arc<WalQueue>>>,
}

async fn factory() -> WalQueues {
    WalQueues {
        dir: tempfile::tempdir().expect("a temporary directory"),
        open: Mutex::new(HashMap::new()),
    }
}

impl QueueFactory for WalQueues {
    fn open<'a>(&'a self, name: &'a str, options: QueueOptions) -> BoxFuture<'a, Arc<dyn Queue>> {
        Box::pin(async move {
            let mut open = self.open.lock().expect("factory lock");
            let queue = open.entry(name.to_string()).or_insert_with(|| {
                let options = WalQueueOptions {
                    visibility_timeout: options.visibility_timeout,
                    attempts_max: options.attempts_max,
                    ..WalQueueOptions::default()
                };
                WalQueue::open(&self.dir.path().join(name), name, options).expect("open the queue")
            });
            Arc::clone(queue) as Arc<dyn Queue>
        })
    }

    fn close<'a>(&'a self, name: &'a str, queue: Arc<dyn Queue>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            drop(queue);
            let queue = self
                .open
                .lock()
                .expect("factory lock")
                .remove(name)
                .expect("an open queue");
            // As at shutdown: the cursor is committed, then the logs closed.
            queue.commit_cursor().await.expect("commit the cursor");
            queue.close();
            assert_eq!(
                Arc::strong_count(&queue),
                1,
                "every handle on {name} is dropped before it is closed"
            );
        })
    }
}

parlor_testkit::queue_contract!(factory);

/// The contract again with every queue cut into partitions, and what partitions add.
mod partitioned {
    use parlor_testkit::partitions::Partitions;

    async fn factory() -> Partitions<super::WalQueues> {
        Partitions::new(super::factory().await)
    }

    parlor_testkit::queue_contract!(factory);
    parlor_testkit::partitioned_queue_contract!(factory);
}
