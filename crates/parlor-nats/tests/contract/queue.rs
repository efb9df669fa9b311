// The queue contract against JetStream: a real, syncing nats-server (`scripts/services up`),
// streams named per check so the checks run in parallel, deleted at the end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use parlor_core::ports::Queue;
use parlor_nats::client::connect;
use parlor_nats::queue::{JsQueue, JsQueueOptions};
use parlor_testkit::queue::{QueueFactory, QueueOptions};

const DEFAULT_URL: &str = "nats://127.0.0.1:4223";

/// How long an exclusive queue's pin outlives its handle in these checks: short, so that a
/// reopened handle takes over well within the contract's slack.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(1);

/// Queues of one check: `t{uuid}-{name}`. Every `open` is a new connection, as another
/// process would have.
pub struct JsQueues {
    pub url: String,
    pub prefix: String,
    exclusive: bool,
    /// The name of every queue opened, to delete its streams at the end. Names, not handles:
    /// a handle kept alive here would keep an exclusive queue's pin after `close`.
    opened: Mutex<Vec<String>>,
}

impl JsQueues {
    pub fn options(&self, visibility_timeout: Duration, attempts_max: u32) -> JsQueueOptions {
        JsQueueOptions {
            visibility_timeout,
            attempts_max,
            in_flight_max: 1024,
            append_timeout: Duration::from_secs(5),
            replicas: 1,
            exclusive: self.exclusive,
            takeover_after: TAKEOVER_AFTER,
        }
    }

    /// Opens `{prefix}-{name}` on a new connection.
    pub async fn open_js(&self, name: &str, options: JsQueueOptions) -> Arc<JsQueue> {
        let client = connect(&self.url).await.expect("connect to NATS");
        let name = format!("{}-{name}", self.prefix);
        let queue = JsQueue::open(client, &name, options)
            .await
            .expect("open the queue");
        self.opened.lock().expect("factory lock").push(name);
        queue
    }
}

async fn factory() -> JsQueues {
    factory_with(false).await
}

pub async fn factory_with(exclusive: bool) -> JsQueues {
    let url = std::env::var("PARLOR_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    // Fail here, loudly, rather than in the middle of a check.
    if let Err(error) = connect(&url).await {
        panic!(
            "the NATS contract tests need a JetStream server at {url}: {error}\n\
             start one with: eval \"$(scripts/services up)\""
        );
    }
    JsQueues {
        url,
        prefix: format!("t{}", uuid::Uuid::now_v7().simple()),
        exclusive,
        opened: Mutex::new(Vec::new()),
    }
}

impl QueueFactory for JsQueues {
    fn open<'a>(&'a self, name: &'a str, options: QueueOptions) -> BoxFuture<'a, Arc<dyn Queue>> {
        Box::pin(async move {
            let options = self.options(options.visibility_timeout, options.attempts_max);
            self.open_js(name, options).await as Arc<dyn Queue>
        })
    }

    fn close<'a>(&'a self, _name: &'a str, queue: Arc<dyn Queue>) -> BoxFuture<'a, ()> {
        // The state lives on the server, so a reopen finds it; dropping the last handle is
        // what a process that exits does (an exclusive queue's pin outlives it for
        // `TAKEOVER_AFTER`).
        Box::pin(async move { drop(queue) })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut opened = std::mem::take(&mut *self.opened.lock().expect("factory lock"));
            opened.sort();
            opened.dedup();
            let options = self.options(Duration::from_secs(30), 8);
            for name in opened {
                let Ok(client) = connect(&self.url).await else {
                    return;
                };
                if let Ok(queue) = JsQueue::open(client, &name, options.clone()).await {
                    let _ = queue.delete().await;
                }
            }
        })
    }
}

parlor_testkit::queue_contract!(factory);

/// The whole contract again, on exclusive queues: one handle consumes at a time.
mod exclusive {
    async fn factory() -> super::JsQueues {
        super::factory_with(true).await
    }

    parlor_testkit::queue_contract!(factory);
}

/// The contract again with every queue cut into partitions, exclusive as the cluster's
/// are, and what partitions add.
mod partitioned {
    use parlor_testkit::partitions::Partitions;

    async fn factory() -> Partitions<super::JsQueues> {
        Partitions::new(super::factory_with(true).await)
    }

    parlor_testkit::queue_contract!(factory);
    parlor_testkit::partitioned_queue_contract!(factory);
}

/// Forwards TCP connections to `upstream` until the returned task is aborted, which drops
/// every forwarded connection: a NATS outage as the client sees it.
async fn proxy(upstream: std::net::SocketAddr) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let address = listener.local_addr().expect("proxy address");
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("nats://{address}"), task)
}

/// A NATS outage fails `append` and `receive` within the timeout, never hangs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_makes_append_and_receive_fail_within_the_timeout() {
    outage_fails_within_the_timeout(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_makes_append_and_receive_fail_within_the_timeout_when_exclusive() {
    outage_fails_within_the_timeout(true).await;
}

async fn outage_fails_within_the_timeout(exclusive: bool) {
    let factory = factory_with(exclusive).await;
    let upstream = factory
        .url
        .trim_start_matches("nats://")
        .parse()
        .expect("PARLOR_TEST_NATS_URL is nats://ip:port");
    let (url, outage) = proxy(upstream).await;
    let options = JsQueueOptions {
        append_timeout: Duration::from_secs(1),
        exclusive,
        takeover_after: TAKEOVER_AFTER,
        ..JsQueueOptions::default()
    };
    let name = format!("{}-outage", factory.prefix);
    let queue = JsQueue::open(connect(&url).await.expect("connect"), &name, options)
        .await
        .expect("open the queue");
    queue
        .append(vec![b"before".to_vec()])
        .await
        .expect("append");
    // Pinned, when exclusive: the pulls during the outage are the active handle's.
    let got = queue
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);

    outage.abort();
    let _ = outage.await;
    let started = std::time::Instant::now();
    let error = queue
        .append(vec![b"during".to_vec(), b"the outage".to_vec()])
        .await
        .expect_err("append fails during an outage");
    assert_eq!(
        error.kind,
        parlor_core::BackendErrorKind::Unavailable,
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let error = queue
        .receive(10, Duration::from_millis(200))
        .await
        .expect_err("receive fails during an outage");
    assert_eq!(
        error.kind,
        parlor_core::BackendErrorKind::Unavailable,
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The streams outlive the outage; remove them through a direct connection.
    let direct = JsQueue::open(
        connect(&factory.url).await.expect("connect"),
        &name,
        JsQueueOptions {
            exclusive,
            takeover_after: TAKEOVER_AFTER,
            ..JsQueueOptions::default()
        },
    )
    .await
    .expect("open the queue");
    let _ = direct.delete().await;
}

/// `in_flight_max` is the consumer's `max_ack_pending`: a bound on messages over all
/// processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_max_bounds_what_is_handed_out() {
    in_flight_max_bounds(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_max_bounds_what_is_handed_out_when_exclusive() {
    in_flight_max_bounds(true).await;
}

async fn in_flight_max_bounds(exclusive: bool) {
    let factory = factory_with(exclusive).await;
    let name = format!("{}-bounded", factory.prefix);
    let options = JsQueueOptions {
        in_flight_max: 2,
        exclusive,
        takeover_after: TAKEOVER_AFTER,
        ..JsQueueOptions::default()
    };
    let client = connect(&factory.url).await.expect("connect");
    let queue = JsQueue::open(client, &name, options)
        .await
        .expect("open the queue");
    // One message each: the bound counts messages, and an append of several is one pack.
    for i in 0..5u8 {
        queue.append(vec![vec![i]]).await.expect("append");
    }

    let first = queue
        .receive(10, Duration::from_secs(1))
        .await
        .expect("receive");
    let payloads = |got: &[parlor_core::ports::Delivery]| -> Vec<Vec<u8>> {
        got.iter().map(|d| d.payload.clone()).collect()
    };
    assert_eq!(payloads(&first), [[0u8], [1]]);
    // At the bound a receive waits: it neither fails nor polls the server in a loop.
    let started = std::time::Instant::now();
    let none = queue
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(none.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(290), "after {waited:?}");
    queue.ack(&[first[0].id]).await.expect("ack");
    let more = queue
        .receive(10, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(payloads(&more), [[2u8]]);
    let _ = queue.delete().await;
}
