// `JsQueueOptions::exclusive` against a real server: one handle consumes at a time, in append
// order, and a standby takes over once the active handle is gone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parlor_core::ports::{Delivery, Queue};
use parlor_testkit::queue::guarded;

use crate::queue::{JsQueues, TAKEOVER_AFTER, factory_with};

fn payloads(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{i:03}")).collect()
}

async fn append(queue: &dyn Queue, names: &[String]) {
    for chunk in names.chunks(50) {
        let batch = chunk.iter().map(|name| name.as_bytes().to_vec()).collect();
        queue.append(batch).await.expect("append");
    }
}

/// Receives `count` entries (for up to 10 s) and holds them, acknowledging none.
async fn receive_without_ack(queue: &dyn Queue, count: usize) -> Vec<String> {
    let mut held = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(10);
    while held.len() < count && Instant::now() < give_up {
        let got = queue
            .receive(count - held.len(), Duration::from_secs(1))
            .await
            .expect("receive");
        held.extend(payloads(&got));
    }
    held
}

/// What one consumer got, with when it got each entry.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// Receives and acknowledges, as a persister does, until the log of every consumer together
/// holds `until` entries or `give_up` passes.
fn consume(queue: Arc<dyn Queue>, log: Log, logs: Vec<Log>, until: usize, give_up: Instant) {
    tokio::spawn(async move {
        let total = || {
            logs.iter()
                .map(|log| log.lock().expect("log").len())
                .sum::<usize>()
        };
        while total() < until && Instant::now() < give_up {
            let got = queue
                .receive(16, Duration::from_millis(100))
                .await
                .expect("receive");
            let now = Instant::now();
            log.lock()
                .expect("log")
                .extend(payloads(&got).into_iter().map(|payload| (now, payload)));
            let ids: Vec<_> = got.iter().map(|d| d.id).collect();
            queue.ack(&ids).await.expect("ack");
        }
    });
}

fn entries_of(log: &Log) -> Vec<String> {
    log.lock()
        .expect("log")
        .iter()
        .map(|(_, payload)| payload.clone())
        .collect()
}

async fn wait_for(logs: &[Log], count: usize, give_up: Instant) {
    let total = || {
        logs.iter()
            .map(|log| log.lock().expect("log").len())
            .sum::<usize>()
    };
    while total() < count && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two handles receive from one exclusive queue at once: one of them gets every entry, in
/// append order, the other nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_queue_hands_every_entry_to_one_handle_in_order() {
    let factory = factory_with(true).await;
    guarded(&factory, one_handle_gets_everything(&factory)).await;
}

async fn one_handle_gets_everything(factory: &JsQueues) {
    let options = factory.options(Duration::from_secs(10), 5);
    let first = factory.open_js("q", options.clone()).await as Arc<dyn Queue>;
    let second = factory.open_js("q", options).await as Arc<dyn Queue>;
    let expected = numbered(0..200);
    append(&*first, &expected).await;

    let logs: Vec<Log> = vec![Log::default(), Log::default()];
    let give_up = Instant::now() + Duration::from_secs(20);
    consume(first, logs[0].clone(), logs.clone(), 200, give_up);
    consume(second, logs[1].clone(), logs.clone(), 200, give_up);
    wait_for(&logs, 200, give_up).await;
    // Room for a stray delivery to the other handle to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (one, two) = (entries_of(&logs[0]), entries_of(&logs[1]));
    let (active, standby) = if one.len() >= two.len() {
        (one, two)
    } else {
        (two, one)
    };
    assert!(standby.is_empty(), "the standby got {standby:?}");
    assert_eq!(
        active, expected,
        "every entry at one handle, in append order"
    );
}

/// The active handle keeps the queue while it keeps receiving, also when there is nothing to
/// get for longer than `takeover_after`; once it is gone, a standby that is receiving gets the rest, in order,
/// within `takeover_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_takeover_after_once_the_active_handle_is_gone() {
    let factory = factory_with(true).await;
    guarded(&factory, standby_takes_over(&factory)).await;
}

async fn standby_takes_over(factory: &JsQueues) {
    let options = factory.options(Duration::from_secs(10), 5);
    let active = factory.open_js("q", options.clone()).await;
    let expected = numbered(0..100);
    append(&*active, &expected[..50]).await;
    let mut first = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(10);
    while first.len() < 50 && Instant::now() < give_up {
        let got = active
            .receive(50 - first.len(), Duration::from_secs(1))
            .await
            .expect("receive");
        let ids: Vec<_> = got.iter().map(|d| d.id).collect();
        active.ack(&ids).await.expect("ack");
        first.extend(payloads(&got));
    }
    assert_eq!(first, expected[..50], "the first handle pins the queue");

    let standby = factory.open_js("q", options).await as Arc<dyn Queue>;
    let log = Log::default();
    let give_up = Instant::now() + Duration::from_secs(20);
    consume(standby, log.clone(), vec![log.clone()], 50, give_up);
    // The active handle keeps receiving, as a persister does, and finds nothing, for several
    // times `takeover_after`: it keeps the pin.
    let idle_until = Instant::now() + TAKEOVER_AFTER * 3;
    while Instant::now() < idle_until {
        let got = active
            .receive(16, Duration::from_millis(200))
            .await
            .expect("receive");
        assert!(got.is_empty(), "{:?}", payloads(&got));
    }
    append(&*active, &expected[50..]).await;
    let gone = Instant::now();
    drop(active);
    wait_for(std::slice::from_ref(&log), 50, give_up).await;
    let got = log.lock().expect("log").clone();
    assert_eq!(
        got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        expected[50..],
        "the rest at the standby, in append order"
    );
    let took = got[0].0.duration_since(gone);
    assert!(
        took <= TAKEOVER_AFTER + Duration::from_millis(500),
        "took over after {took:?}"
    );
}

/// A queue first opened without `exclusive` (an existing deployment) becomes exclusive when
/// opened with it, keeping its entries; and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_with_exclusive_switches_an_existing_queue() {
    let factory = factory_with(true).await;
    guarded(&factory, switches(&factory)).await;
}

async fn switches(factory: &JsQueues) {
    let exclusive = factory.options(Duration::from_secs(10), 5);
    let shared = parlor_nats::queue::JsQueueOptions {
        exclusive: false,
        ..exclusive.clone()
    };
    let before = factory.open_js("q", shared.clone()).await;
    append(&*before, &numbered(0..3)).await;
    drop(before);

    let after = factory.open_js("q", exclusive).await;
    let got = after
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(payloads(&got), numbered(0..3));
    let ids: Vec<_> = got.iter().map(|d| d.id).collect();
    after.ack(&ids).await.expect("ack");
    drop(after);

    let again = factory.open_js("q", shared).await;
    append(&*again, &numbered(3..4)).await;
    let got = again
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(payloads(&got), numbered(3..4));
}

/// `release` hands the queue to a standby at once, not `takeover_after` later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_the_queue_to_a_standby_at_once() {
    let factory = factory_with(true).await;
    guarded(&factory, release_hands_over(&factory)).await;
}

async fn release_hands_over(factory: &JsQueues) {
    let options = parlor_nats::queue::JsQueueOptions {
        takeover_after: Duration::from_secs(20),
        ..factory.options(Duration::from_secs(10), 5)
    };
    let active = factory.open_js("q", options.clone()).await;
    let expected = numbered(0..20);
    // Two appends, two messages: the first is settled whole before the release (a message
    // partly settled goes back whole, to keep the order).
    append(&*active, &expected[..10]).await;
    append(&*active, &expected[10..]).await;
    let got = active
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(payloads(&got), expected[..10]);
    let ids: Vec<_> = got.iter().map(|d| d.id).collect();
    active.ack(&ids).await.expect("ack");

    let standby = factory.open_js("q", options).await as Arc<dyn Queue>;
    let log = Log::default();
    let give_up = Instant::now() + Duration::from_secs(15);
    consume(standby, log.clone(), vec![log.clone()], 10, give_up);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(entries_of(&log), Vec::<String>::new());

    let released = Instant::now();
    active.release().await.expect("release");
    assert!(
        active
            .receive(10, Duration::from_millis(200))
            .await
            .expect("receive")
            .is_empty(),
        "a released handle receives nothing"
    );
    wait_for(std::slice::from_ref(&log), 10, give_up).await;
    let got = log.lock().expect("log").clone();
    assert_eq!(
        got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        expected[10..]
    );
    let took = got[0].0.duration_since(released);
    assert!(took < Duration::from_secs(2), "took over after {took:?}");
}

/// Entries the active handle held when it died come back to the standby before the entries
/// after them, in append order (the persister's crash: its batch must not be stored after
/// newer ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_handle_held_comes_back_first_and_in_order() {
    let factory = factory_with(true).await;
    guarded(&factory, held_entries_come_back_first(&factory)).await;
}

async fn held_entries_come_back_first(factory: &JsQueues) {
    let options = factory.options(Duration::from_millis(500), 5);
    let active = factory.open_js("q", options.clone()).await;
    let expected = numbered(0..100);
    append(&*active, &expected).await;
    let held = receive_without_ack(&*active, 30).await;
    assert_eq!(held, expected[..30], "the first handle pins the queue");
    let standby = factory.open_js("q", options).await as Arc<dyn Queue>;
    let log = Log::default();
    let give_up = Instant::now() + Duration::from_secs(20);
    consume(standby, log.clone(), vec![log.clone()], 100, give_up);
    drop(active);
    wait_for(std::slice::from_ref(&log), 100, give_up).await;
    assert_eq!(
        entries_of(&log),
        expected,
        "the held entries first, then the rest, in append order"
    );
}

/// Entries held by an active handle that stops pulling but lives on (a persister stuck on a
/// batch, paused, cut off) come back to the standby first and in order once the pin passes:
/// the stuck handle does not keep them from it. Waking up, it takes nothing from the new
/// holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stuck_handle_held_comes_back_first_and_in_order() {
    let factory = factory_with(true).await;
    guarded(&factory, stuck_handles_entries_come_back_first(&factory)).await;
}

async fn stuck_handles_entries_come_back_first(factory: &JsQueues) {
    let options = factory.options(Duration::from_millis(500), 50);
    let stuck = factory.open_js("q", options.clone()).await;
    let expected = numbered(0..110);
    append(&*stuck, &expected[..100]).await;
    let held = receive_without_ack(&*stuck, 30).await;
    assert_eq!(held, expected[..30], "the first handle pins the queue");
    let standby = factory.open_js("q", options).await as Arc<dyn Queue>;
    let log = Log::default();
    let give_up = Instant::now() + Duration::from_secs(20);
    consume(standby, log.clone(), vec![log.clone()], 110, give_up);
    // Several of its visibility timeouts pass while the stuck handle holds its entries.
    wait_for(std::slice::from_ref(&log), 100, give_up).await;
    assert_eq!(
        entries_of(&log),
        expected[..100],
        "the held entries first, then the rest, in append order"
    );

    stuck.release().await.expect("release");
    append(&*stuck, &expected[100..]).await;
    wait_for(std::slice::from_ref(&log), 110, give_up).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(entries_of(&log), expected, "nothing again, nothing lost");
}

/// A handle released while it holds part of a message unsettled (a persister's drain that
/// timed out, a fenced batch) gives the message back whole: the standby gets it before what
/// was appended after it, the acknowledged entries in it again (as after a crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_a_partly_acknowledged_message_back_whole_and_first() {
    let factory = factory_with(true).await;
    guarded(&factory, partly_acknowledged_goes_back_first(&factory)).await;
}

async fn partly_acknowledged_goes_back_first(factory: &JsQueues) {
    let options = factory.options(Duration::from_secs(10), 5);
    let active = factory.open_js("q", options.clone()).await;
    let expected = numbered(0..20);
    append(&*active, &expected[..10]).await;
    append(&*active, &expected[10..]).await;
    let got = active
        .receive(5, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(payloads(&got), expected[..5]);
    let ids: Vec<_> = got.iter().map(|d| d.id).collect();
    active.ack(&ids).await.expect("ack");
    active.release().await.expect("release");

    let standby = factory.open_js("q", options).await as Arc<dyn Queue>;
    let log = Log::default();
    let give_up = Instant::now() + Duration::from_secs(15);
    consume(standby, log.clone(), vec![log.clone()], 20, give_up);
    wait_for(std::slice::from_ref(&log), 20, give_up).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        entries_of(&log),
        expected,
        "the first message whole, then the second"
    );
}
