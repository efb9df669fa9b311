// The queue contract against SQS FIFO queues on ministack (`PARLOR_TEST_SQS_URL`), queues
// named per check so the checks run in parallel, deleted at the end; then what only SQS
// FIFO does: order per conversation (message group), and a conversation held back alone.
//
// SQS counts visibility in whole seconds: the suite's 400 ms visibility is 1 s here (the
// queue rounds up), within the suite's slack.
//
// How ministack 1.5.33 differs from SQS, as far as these tests reach:
// - its counts (ApproximateNumberOf…) are exact at once; SQS's are approximate (eventually
//   consistent), so the `depth` assertions hold exactly on the emulator only.
// - it moves an entry to the DLQ after maxReceiveCount only inside a ReceiveMessage on the
//   source queue (a `depth` before that receive counts it as pending, not dead), and the
//   moved message keeps its MessageId, SentTimestamp and receive count.
// - it hands out every visible message of a group in one receive, in send order, and none
//   of a group with one in flight; SQS documents the same, but chooses among groups as it
//   likes (these tests assert no order across conversations).
// - a short poll (WaitTimeSeconds=0) sees every message; SQS's may answer empty while
//   messages are there ("false empty responses"): a little later, never lost.
// - its long poll looks again every 100 ms; SQS's answers as a message arrives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parlor_aws::AwsOptions;
use parlor_aws::sqs::{SqsQueue, SqsQueueOptions};
use parlor_core::ports::{DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth};
use parlor_core::{BackendErrorKind, ConversationId};
use parlor_testkit::queue::{QueueFactory, QueueOptions};

/// Queues of one check: `t{uuid}-{name}.fifo` and its DLQ. Every `open` is a new handle,
/// as another process would have.
pub struct SqsQueues {
    client: aws_sdk_sqs::Client,
    prefix: String,
    opened: Mutex<Vec<Arc<SqsQueue>>>,
}

impl SqsQueues {
    pub async fn open_sqs(&self, name: &str, options: QueueOptions) -> Arc<SqsQueue> {
        let options = SqsQueueOptions {
            name: format!("{}-{name}", self.prefix),
            visibility_timeout: options.visibility_timeout,
            attempts_max: options.attempts_max,
            create: true,
        };
        let queue = Arc::new(
            SqsQueue::open(self.client.clone(), options)
                .await
                .expect("open the queue"),
        );
        self.opened
            .lock()
            .expect("factory lock")
            .push(Arc::clone(&queue));
        queue
    }
}

pub async fn factory() -> SqsQueues {
    let Ok(url) = std::env::var("PARLOR_TEST_SQS_URL") else {
        panic!(
            "the SQS contract tests need ministack: PARLOR_TEST_SQS_URL is not set\n\
             start it with: eval \"$(scripts/services up)\""
        );
    };
    let client = AwsOptions {
        endpoint: Some(url),
        ..Default::default()
    }
    .sqs()
    .await;
    SqsQueues {
        client,
        prefix: format!("t{}", uuid::Uuid::now_v7().simple()),
        opened: Mutex::new(Vec::new()),
    }
}

impl QueueFactory for SqsQueues {
    fn open<'a>(&'a self, name: &'a str, options: QueueOptions) -> BoxFuture<'a, Arc<dyn Queue>> {
        Box::pin(async move { self.open_sqs(name, options).await as Arc<dyn Queue> })
    }

    fn close<'a>(&'a self, _name: &'a str, queue: Arc<dyn Queue>) -> BoxFuture<'a, ()> {
        // The entries live in SQS; what a handle held comes back after its visibility.
        Box::pin(async move { drop(queue) })
    }

    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let opened = std::mem::take(&mut *self.opened.lock().expect("factory lock"));
            // Every handle on a name deletes the same queues; the first one does it.
            for queue in opened {
                let _ = queue.delete().await;
            }
        })
    }
}

parlor_testkit::queue_contract!(factory);

// ── What only SQS FIFO does ──────────────────────────────────────────────────────────────

const SLACK: Duration = Duration::from_secs(5);

fn options(visibility_timeout: Duration) -> QueueOptions {
    QueueOptions {
        visibility_timeout,
        attempts_max: 5,
    }
}

fn keyed(entries: &[(ConversationId, &str)]) -> Vec<(ConversationId, Vec<u8>)> {
    entries
        .iter()
        .map(|(conversation, entry)| (*conversation, entry.as_bytes().to_vec()))
        .collect()
}

fn payloads(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| String::from_utf8_lossy(&delivery.payload).into_owned())
        .collect()
}

fn ids(deliveries: &[Delivery]) -> Vec<DeliveryId> {
    deliveries.iter().map(|delivery| delivery.id).collect()
}

/// Receives (and acknowledges) until `count` entries came or `SLACK` passed.
async fn receive_acking(queue: &dyn Queue, count: usize) -> Vec<Delivery> {
    let give_up = Instant::now() + SLACK;
    let mut got = Vec::new();
    while got.len() < count && Instant::now() < give_up {
        let batch = queue
            .receive(count - got.len(), Duration::from_secs(1))
            .await
            .expect("receive");
        queue.ack(&ids(&batch)).await.expect("ack");
        got.extend(batch);
    }
    assert_eq!(got.len(), count, "received {:?}", payloads(&got));
    got
}

/// What SQS does where the contract's first check expects otherwise: entries of a group
/// with one in flight wait until it is settled, and then come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_receive_gets_nothing_of_a_group_in_flight() {
    let factory = factory().await;
    parlor_testkit::queue::guarded(&factory, async {
        let queue = factory.open_sqs("q", options(Duration::from_secs(5))).await;
        let entries = ["a", "b", "c"].map(|entry| entry.as_bytes().to_vec());
        queue.append(entries.to_vec()).await.expect("append");
        let first = queue.receive(2, SLACK).await.expect("receive");
        assert_eq!(payloads(&first), ["a", "b"]);
        let none = queue
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive");
        assert_eq!(payloads(&none), Vec::<String>::new());
        queue.ack(&ids(&first)).await.expect("ack");
        let rest = queue.receive(10, SLACK).await.expect("receive");
        assert_eq!(payloads(&rest), ["c"]);
        queue.ack(&ids(&rest)).await.expect("ack");
    })
    .await;
}

/// Entries of two conversations appended interleaved come out with each conversation's
/// order intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_keyed_keeps_each_conversations_order() {
    let factory = factory().await;
    parlor_testkit::queue::guarded(&factory, async {
        let queue = factory.open_sqs("q", options(Duration::from_secs(5))).await;
        let (one, two) = (ConversationId::new(), ConversationId::new());
        // 24 entries: more than one batch of ten, and two appends.
        for round in 0..2 {
            let entries: Vec<(ConversationId, String)> = (0..6)
                .flat_map(|i| {
                    let i = round * 6 + i;
                    [(one, format!("one-{i:02}")), (two, format!("two-{i:02}"))]
                })
                .collect();
            let entries: Vec<(ConversationId, &str)> = entries
                .iter()
                .map(|(conversation, entry)| (*conversation, entry.as_str()))
                .collect();
            queue.append_keyed(keyed(&entries)).await.expect("append");
        }
        let got = payloads(&receive_acking(&*queue, 24).await);
        for name in ["one", "two"] {
            let mine: Vec<&String> = got.iter().filter(|entry| entry.starts_with(name)).collect();
            let expected: Vec<String> = (0..12).map(|i| format!("{name}-{i:02}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "all: {got:?}");
        }
    })
    .await;
}

/// A conversation whose entry waits in `retry_later` holds back only itself: the other's
/// entries are delivered meanwhile, and its own later entries come only after the retried
/// one. Under redelivery a conversation's order holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_holds_back_only_its_own_conversation() {
    let factory = factory().await;
    parlor_testkit::queue::guarded(&factory, async {
        let queue = factory.open_sqs("q", options(Duration::from_secs(5))).await;
        let (waiting, other) = (ConversationId::new(), ConversationId::new());
        queue
            .append_keyed(keyed(&[(waiting, "w1")]))
            .await
            .expect("append");
        let first = queue.receive(1, SLACK).await.expect("receive");
        assert_eq!(payloads(&first), ["w1"]);
        let delay = Duration::from_secs(2);
        let retried_at = Instant::now();
        queue
            .retry_later(first[0].id, delay)
            .await
            .expect("retry_later");
        queue
            .append_keyed(keyed(&[(waiting, "w2"), (other, "o1"), (other, "o2")]))
            .await
            .expect("append");

        let meanwhile = queue.receive(10, SLACK).await.expect("receive");
        assert_eq!(payloads(&meanwhile), ["o1", "o2"]);
        assert!(
            retried_at.elapsed() < delay,
            "after {:?}",
            retried_at.elapsed()
        );
        queue.ack(&ids(&meanwhile)).await.expect("ack");
        let none = queue
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive");
        assert_eq!(payloads(&none), Vec::<String>::new(), "w2 waits behind w1");

        let mut after = Vec::new();
        while after.len() < 2 {
            let got = queue.receive(10, SLACK).await.expect("receive");
            assert!(!got.is_empty(), "w1 and w2 come back");
            after.extend(got);
        }
        assert!(
            retried_at.elapsed() >= delay,
            "after {:?}",
            retried_at.elapsed()
        );
        assert_eq!(payloads(&after), ["w1", "w2"]);
        assert_eq!(after.iter().map(|d| d.attempts).collect::<Vec<_>>(), [2, 1]);
        queue.ack(&ids(&after)).await.expect("ack");
    })
    .await;
}

/// Two handles consume while entries of 20 conversations are appended from several tasks:
/// every entry is delivered once, and each conversation's entries are received in append
/// order (each handle acknowledges what it received before it receives again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_keep_every_conversations_order_under_concurrent_appends() {
    const CONVERSATIONS: usize = 20;
    const PER_CONVERSATION: usize = 12;
    const APPENDERS: usize = 4;
    let factory = factory().await;
    parlor_testkit::queue::guarded(&factory, async {
        let visibility = Duration::from_secs(10);
        let first = factory.open_sqs("q", options(visibility)).await;
        let second = factory.open_sqs("q", options(visibility)).await;
        let conversations: Arc<Vec<ConversationId>> =
            Arc::new((0..CONVERSATIONS).map(|_| ConversationId::new()).collect());

        // Each appender owns some conversations and appends one entry of each per call.
        let mut appenders = tokio::task::JoinSet::new();
        for appender in 0..APPENDERS {
            let queue = Arc::clone(&first);
            let conversations = Arc::clone(&conversations);
            appenders.spawn(async move {
                let mine: Vec<usize> = (appender..CONVERSATIONS).step_by(APPENDERS).collect();
                for i in 0..PER_CONVERSATION {
                    let entries = mine
                        .iter()
                        .map(|&c| (conversations[c], format!("{c:02}/{i:02}").into_bytes()))
                        .collect();
                    queue.append_keyed(entries).await.expect("append");
                }
            });
        }

        // Received entries in the order they were received over both handles: a handle logs
        // a batch before it acknowledges it, and SQS hands out nothing of a conversation
        // with an entry in flight, so the log follows each conversation's delivery order.
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let total = CONVERSATIONS * PER_CONVERSATION;
        let consume = |queue: Arc<SqsQueue>| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let give_up = Instant::now() + Duration::from_secs(20);
                while log.lock().expect("log").len() < total && Instant::now() < give_up {
                    let got = queue
                        .receive(10, Duration::from_millis(300))
                        .await
                        .expect("receive");
                    log.lock().expect("log").extend(payloads(&got));
                    queue.ack(&ids(&got)).await.expect("ack");
                }
            })
        };
        let consumers = [consume(Arc::clone(&first)), consume(Arc::clone(&second))];
        while let Some(appended) = appenders.join_next().await {
            appended.expect("appender");
        }
        for consumer in consumers {
            consumer.await.expect("consumer");
        }

        let log = log.lock().expect("log").clone();
        assert_eq!(log.len(), total, "every entry once");
        for c in 0..CONVERSATIONS {
            let prefix = format!("{c:02}/");
            let received: Vec<&String> = log.iter().filter(|e| e.starts_with(&prefix)).collect();
            let expected: Vec<String> = (0..PER_CONVERSATION)
                .map(|i| format!("{prefix}{i:02}"))
                .collect();
            assert_eq!(received, expected.iter().collect::<Vec<_>>());
        }
        assert_eq!(first.depth().await.expect("depth"), QueueDepth::default());
    })
    .await;
}

/// An entry SQS dead-lettered itself (after maxReceiveCount deliveries) carries none of
/// our attributes: it is listed with a reason that says so, and a redrive sends it back to
/// its own conversation as a fresh entry, although SQS's five-minute deduplication window
/// of the first send is still open (the redrive has a deduplication id of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_sqs_moved_itself_says_why_and_redrives_to_its_conversation() {
    let factory = factory().await;
    parlor_testkit::queue::guarded(&factory, async {
        let options = QueueOptions {
            visibility_timeout: Duration::from_secs(1),
            attempts_max: 2,
        };
        let queue = factory.open_sqs("q", options).await;
        let conversation = ConversationId::new();
        let appended_at = time::OffsetDateTime::now_utc();
        queue
            .append_keyed(keyed(&[(conversation, "slow")]))
            .await
            .expect("append");
        for attempt in 1..=2 {
            let got = queue.receive(1, SLACK).await.expect("receive");
            assert_eq!(payloads(&got), ["slow"]);
            assert_eq!(got[0].attempts, attempt);
        }
        // Moved by SQS at the first receive after the second delivery's visibility ended.
        let none = queue
            .receive(10, Duration::from_millis(1500))
            .await
            .expect("receive");
        assert_eq!(payloads(&none), Vec::<String>::new());

        let dead = queue.dead_letters(10).await.expect("dead_letters");
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, b"slow");
        assert_eq!(
            dead[0].reason,
            "delivered 2 times without being acknowledged"
        );
        assert_eq!(dead[0].attempts, 2);
        // SQS records no time of its own moves: the time it was appended (milliseconds).
        let at = dead[0].failed_at;
        assert!(
            appended_at - Duration::from_millis(1) <= at && at <= time::OffsetDateTime::now_utc(),
            "failed_at {at}, appended at {appended_at}"
        );

        let moved = queue
            .redrive(DeadLetterSelection::Ids(vec![dead[0].id]))
            .await
            .expect("redrive");
        assert_eq!(moved, 1);
        let back = queue.receive(1, SLACK).await.expect("receive");
        assert_eq!(payloads(&back), ["slow"]);
        assert_eq!(back[0].attempts, 1);
        // Back in its conversation's group: a later entry of it waits behind it.
        queue
            .append_keyed(keyed(&[(conversation, "next")]))
            .await
            .expect("append");
        let none = queue
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive");
        assert_eq!(payloads(&none), Vec::<String>::new());
        queue.ack(&ids(&back)).await.expect("ack");
        let next = receive_acking(&*queue, 1).await;
        assert_eq!(payloads(&next), ["next"]);
        assert_eq!(queue.depth().await.expect("depth"), QueueDepth::default());
    })
    .await;
}

/// A queue that is not there fails `open` (without `create`) as a queue that will not
/// appear by retrying: `Poisoned`, so a role stops with the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_a_missing_queue_fails_for_good() {
    let factory = factory().await;
    let options = SqsQueueOptions {
        name: format!("{}-missing", factory.prefix),
        visibility_timeout: Duration::from_secs(1),
        attempts_max: 3,
        create: false,
    };
    let error = match SqsQueue::open(factory.client.clone(), options).await {
        Ok(_) => panic!("opened a queue that does not exist"),
        Err(error) => error,
    };
    assert_eq!(error.kind, BackendErrorKind::Poisoned, "{error}");
}

/// SQS out of reach (nothing listens there) is `Unavailable`, within seconds, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_out_of_reach_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let client = AwsOptions {
        endpoint: Some(url),
        ..Default::default()
    }
    .sqs()
    .await;
    let options = SqsQueueOptions {
        name: format!("t{}-unreachable", uuid::Uuid::now_v7().simple()),
        visibility_timeout: Duration::from_secs(1),
        attempts_max: 3,
        create: true,
    };
    let started = Instant::now();
    let error = match SqsQueue::open(client, options).await {
        Ok(_) => panic!("opened a queue on a closed port"),
        Err(error) => error,
    };
    assert_eq!(error.kind, BackendErrorKind::Unavailable, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "after {:?}",
        started.elapsed()
    );
}
