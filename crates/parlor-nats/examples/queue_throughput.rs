//! Queue throughput on JetStream: appends in batches of 64 (as a gateway does) from a few
//! tasks, then receives and acknowledges everything (as a persister does), and prints
//! entries per second for each phase.
//!
//! ```text
//! eval "$(scripts/services up)"
//! cargo run --release -p parlor-nats --example queue_throughput -- [entries] [tasks] [exclusive]
//! ```
//!
//! `exclusive` opens the queue with `JsQueueOptions::exclusive`, as the cluster's persister
//! does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor_core::ports::Queue;
use parlor_nats::client::connect;
use parlor_nats::queue::{JsQueue, JsQueueOptions};

const BATCH: usize = 64;
const RECEIVE_MAX: usize = 512;
/// A persister-sized entry: an `InboundEntry` with a short message body.
const ENTRY_BYTES: usize = 200;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args.next().map_or(20_000, |n| n.parse().expect("entries"));
    let tasks: usize = args.next().map_or(8, |n| n.parse().expect("tasks"));
    let exclusive = args.next().is_some_and(|arg| arg == "exclusive");
    let url = std::env::var("PARLOR_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4223".to_string());

    let client = connect(&url).await.expect("connect to NATS");
    let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let options = JsQueueOptions {
        visibility_timeout: Duration::from_secs(60),
        exclusive,
        ..JsQueueOptions::default()
    };
    let queue = JsQueue::open(client, &name, options)
        .await
        .expect("open the queue");

    let per_task = entries.div_ceil(tasks);
    let started = Instant::now();
    let appenders: Vec<_> = (0..tasks)
        .map(|task| {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let mut appended = 0;
                while appended < per_task {
                    let count = BATCH.min(per_task - appended);
                    let batch = (0..count)
                        .map(|i| {
                            let mut entry = format!("{task}:{}", appended + i).into_bytes();
                            entry.resize(ENTRY_BYTES, b'.');
                            entry
                        })
                        .collect();
                    queue.append(batch).await.expect("append");
                    appended += count;
                }
                appended
            })
        })
        .collect();
    let mut appended = 0;
    for appender in appenders {
        appended += appender.await.expect("appender");
    }
    let append_time = started.elapsed();
    println!(
        "append: {appended} entries in batches of {BATCH} from {tasks} tasks: {:.2?}, {:.0} entries/s",
        append_time,
        appended as f64 / append_time.as_secs_f64()
    );

    let started = Instant::now();
    let mut received = 0;
    let mut ack_time = Duration::ZERO;
    while received < appended {
        let got = queue
            .receive(RECEIVE_MAX, Duration::from_secs(5))
            .await
            .expect("receive");
        assert!(!got.is_empty(), "entries went missing after {received}");
        let ids: Vec<_> = got.iter().map(|delivery| delivery.id).collect();
        let acking = Instant::now();
        queue.ack(&ids).await.expect("ack");
        ack_time += acking.elapsed();
        received += got.len();
    }
    let receive_time = started.elapsed();
    println!(
        "receive+ack: {received} entries, up to {RECEIVE_MAX} per receive: {:.2?} ({:.2?} in ack), {:.0} entries/s",
        receive_time,
        ack_time,
        received as f64 / receive_time.as_secs_f64()
    );
    println!("depth after: {:?}", queue.depth().await.expect("depth"));
    queue.delete().await.expect("delete the streams");
}
