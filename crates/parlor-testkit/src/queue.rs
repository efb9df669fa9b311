//! The [`Queue`] contract: one `pub async fn` per guarantee, each taking a [`QueueFactory`],
//!
//! One file, though long: a port's contract is read as one list of guarantees, each check
//! standing alone, and its macro names every one of them.
//! and [`queue_contract!`](crate::queue_contract) to turn them into one test per check:
//!
//! ```ignore
//! async fn factory() -> MyFactory { … }
//! parlor_testkit::queue_contract!(factory);
//! ```
//!
//! Timings are short (a visibility timeout of 400 ms) but every wait that expects something
//! to happen has seconds of slack, and every wait that expects nothing is well clear of the
//! moment something would happen.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use parlor_core::ports::{DeadLetter, DeadLetterSelection, Delivery, Queue, QueueDepth};
use time::OffsetDateTime;

/// What a check asks of the queue it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry that keeps timing out is dead-lettered.
    pub attempts_max: u32,
}

/// Opens the queues of one check. Each check gets a fresh factory, so names only need to
/// be unique within a check.
pub trait QueueFactory: Send + Sync {
    /// Opens (creating) the queue `name`. Opening a name that is open gives a handle on the
    /// same entries: a new one, as another process would get, or the same one for a
    /// backend that allows one handle per queue.
    fn open<'a>(&'a self, name: &'a str, options: QueueOptions) -> BoxFuture<'a, Arc<dyn Queue>>;
    /// Closes the queue as a graceful shutdown does; `queue` is the caller's last handle.
    /// Opening `name` afterwards finds what was durable.
    fn close<'a>(&'a self, name: &'a str, queue: Arc<dyn Queue>) -> BoxFuture<'a, ()>;
    /// Removes what the check left behind (streams on a shared server, say); best effort.
    fn cleanup(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Runs `check`, then the factory's cleanup, even when the check panics.
pub async fn guarded(factory: &dyn QueueFactory, check: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(check).catch_unwind().await;
    factory.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per check of the queue contract, for `$factory`: a path to an
/// `async fn() -> impl QueueFactory`.
#[macro_export]
macro_rules! queue_contract {
    ($factory:path) => {
        $crate::queue_contract!(@checks $factory;
            receive_returns_entries_in_append_order,
            acked_entries_are_never_delivered_again,
            an_unacked_entry_comes_back_after_the_visibility_timeout,
            retry_later_delivers_again_no_sooner_than_the_delay,
            dead_letter_moves_the_entry_with_its_reason_and_attempts,
            an_entry_that_keeps_timing_out_is_dead_lettered_on_its_own,
            dead_letters_lists_the_oldest_first_up_to_the_limit,
            redrive_by_ids_moves_only_those_back,
            redrive_all_moves_every_dead_letter_back,
            purge_deletes_dead_letters_for_good,
            depth_counts_pending_in_flight_and_dead,
            entries_survive_closing_and_reopening,
            two_consumers_never_hold_the_same_entry,
            receive_on_an_empty_queue_waits_then_returns_nothing,
            receive_wakes_up_for_an_entry_appended_while_it_waits,
            receive_held_hands_out_only_what_the_handle_holds_back,
        );
    };
    (@checks $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let factory = $factory().await;
                $crate::queue::guarded(&factory, $crate::queue::$check(&factory)).await;
            }
        )*
    };
}

const VISIBILITY: Duration = Duration::from_millis(400);
/// Long enough for anything that should happen to happen, on a busy machine.
pub(crate) const SLACK: Duration = Duration::from_secs(5);

pub(crate) fn options() -> QueueOptions {
    QueueOptions {
        visibility_timeout: VISIBILITY,
        attempts_max: 5,
    }
}

fn entries(names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|name| name.as_bytes().to_vec()).collect()
}

fn payloads(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

fn dead_payloads(letters: &[DeadLetter]) -> Vec<String> {
    letters
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect()
}

fn depth(pending: u64, in_flight: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        pending,
        in_flight,
        dead,
    }
}

/// Receives until `count` entries came or `SLACK` passed; a backend may hand out fewer than
/// are there in one call.
pub(crate) async fn receive_n(queue: &dyn Queue, count: usize) -> Vec<Delivery> {
    let give_up = Instant::now() + SLACK;
    let mut got = Vec::new();
    while got.len() < count {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        got.extend(
            queue
                .receive(count - got.len(), left)
                .await
                .expect("receive"),
        );
    }
    assert_eq!(got.len(), count, "received {:?}", payloads(&got));
    got
}

/// Asserts nothing is delivered for `wait`.
async fn assert_nothing_for(queue: &dyn Queue, wait: Duration) {
    let got = queue.receive(10, wait).await.expect("receive");
    assert!(got.is_empty(), "expected nothing, got {:?}", payloads(&got));
}

/// Appends `names`, receives them all and dead-letters each with its name as the reason.
async fn dead_lettered(queue: &dyn Queue, names: &[&str]) -> Vec<DeadLetter> {
    queue.append(entries(names)).await.expect("append");
    for delivery in receive_n(queue, names.len()).await {
        let reason = String::from_utf8_lossy(&delivery.payload).into_owned();
        queue
            .dead_letter(delivery.id, &reason)
            .await
            .expect("dead_letter");
    }
    let dead = queue.dead_letters(100).await.expect("dead_letters");
    assert_eq!(dead_payloads(&dead), names);
    dead
}

/// Entries come out in the order they were appended, across appends, and `max` is obeyed.
pub async fn receive_returns_entries_in_append_order(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue
        .append(entries(&["a", "b", "c"]))
        .await
        .expect("append");
    queue.append(entries(&["d", "e"])).await.expect("append");

    let first = queue.receive(2, SLACK).await.expect("receive");
    assert_eq!(payloads(&first), ["a", "b"]);
    // Acknowledged before the next receive: a backend that orders per key holds the rest
    // of a key back while some of it is in flight.
    queue
        .ack(&first.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    // Fewer than `max` are there: they come at once, not at the end of the wait.
    let started = Instant::now();
    let rest = queue.receive(10, SLACK).await.expect("receive");
    assert_eq!(payloads(&rest), ["c", "d", "e"]);
    assert!(
        started.elapsed() < SLACK / 2,
        "after {:?}",
        started.elapsed()
    );
    let all: Vec<&Delivery> = first.iter().chain(&rest).collect();
    assert!(all.iter().all(|d| d.attempts == 1));
    let ids: BTreeSet<_> = all.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 5, "delivery ids are distinct");
    queue
        .ack(&rest.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
}

/// An acknowledged entry is removed for good.
pub async fn acked_entries_are_never_delivered_again(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue
        .append(entries(&["a", "b", "c"]))
        .await
        .expect("append");
    let got = receive_n(&*queue, 3).await;
    queue
        .ack(&got.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 0));
}

/// An entry not acknowledged within the visibility timeout is delivered again, not sooner,
/// with one more attempt.
pub async fn an_unacked_entry_comes_back_after_the_visibility_timeout(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue.append(entries(&["x"])).await.expect("append");
    let started = Instant::now();
    let first = queue.receive(1, SLACK).await.expect("receive");
    assert_eq!(payloads(&first), ["x"]);
    assert_eq!(first[0].attempts, 1);

    assert_nothing_for(&*queue, VISIBILITY / 3).await;
    let again = queue.receive(1, SLACK).await.expect("receive");
    assert!(
        started.elapsed() >= VISIBILITY,
        "back after {:?}",
        started.elapsed()
    );
    assert_eq!(payloads(&again), ["x"]);
    assert_eq!(again[0].attempts, 2);

    queue.ack(&[again[0].id]).await.expect("ack");
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
}

/// `retry_later` gives an entry back no sooner than its delay, even a delay longer than the
/// visibility timeout, with one more attempt.
pub async fn retry_later_delivers_again_no_sooner_than_the_delay(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue.append(entries(&["x", "y"])).await.expect("append");
    let got = receive_n(&*queue, 2).await;
    queue.ack(&[got[1].id]).await.expect("ack");

    let delay = VISIBILITY * 5 / 2;
    let started = Instant::now();
    queue
        .retry_later(got[0].id, delay)
        .await
        .expect("retry_later");
    assert_nothing_for(&*queue, VISIBILITY * 3 / 2).await;
    let again = queue.receive(1, SLACK).await.expect("receive");
    assert!(
        started.elapsed() >= delay,
        "back after {:?}",
        started.elapsed()
    );
    assert_eq!(payloads(&again), ["x"]);
    assert_eq!(again[0].attempts, 2);

    // A short delay, and the entry is back well before a visibility timeout.
    let started = Instant::now();
    let short = VISIBILITY / 4;
    queue
        .retry_later(again[0].id, short)
        .await
        .expect("retry_later");
    let third = queue.receive(1, SLACK).await.expect("receive");
    assert!(
        started.elapsed() >= short,
        "back after {:?}",
        started.elapsed()
    );
    assert_eq!(payloads(&third), ["x"]);
    assert_eq!(third[0].attempts, 3);
    queue.ack(&[third[0].id]).await.expect("ack");
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
}

/// `dead_letter` moves the entry with its reason and attempts; it is never delivered again.
pub async fn dead_letter_moves_the_entry_with_its_reason_and_attempts(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue.append(entries(&["a", "b"])).await.expect("append");
    let got = receive_n(&*queue, 2).await;
    queue.ack(&[got[1].id]).await.expect("ack");
    let again = queue.receive(1, SLACK).await.expect("receive");
    assert_eq!(payloads(&again), ["a"]);
    assert_eq!(again[0].attempts, 2);

    let before = OffsetDateTime::now_utc();
    queue
        .dead_letter(again[0].id, "cannot store a")
        .await
        .expect("dead_letter");
    let after = OffsetDateTime::now_utc();

    let dead = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&dead), ["a"]);
    assert_eq!(dead[0].reason, "cannot store a");
    assert_eq!(dead[0].attempts, 2);
    assert!(
        before <= dead[0].failed_at && dead[0].failed_at <= after,
        "failed_at {} not within [{before}, {after}]",
        dead[0].failed_at
    );
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 1));
}

/// An entry that is never acknowledged reaches the dead letters after `attempts_max`
/// deliveries, without anyone calling `dead_letter`.
pub async fn an_entry_that_keeps_timing_out_is_dead_lettered_on_its_own(
    factory: &dyn QueueFactory,
) {
    let options = QueueOptions {
        attempts_max: 3,
        ..options()
    };
    let queue = factory.open("q", options).await;
    queue.append(entries(&["slow"])).await.expect("append");
    for attempt in 1..=3 {
        let got = queue.receive(1, SLACK).await.expect("receive");
        assert_eq!(payloads(&got), ["slow"]);
        assert_eq!(got[0].attempts, attempt);
    }
    assert_nothing_for(&*queue, VISIBILITY * 3).await;

    let dead = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&dead), ["slow"]);
    assert_eq!(dead[0].attempts, 3);
    assert!(!dead[0].reason.is_empty());
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 1));
}

/// `dead_letters` lists in the order entries were dead-lettered, up to the limit, with
/// distinct ids.
pub async fn dead_letters_lists_the_oldest_first_up_to_the_limit(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue
        .append(entries(&["a", "b", "c", "d"]))
        .await
        .expect("append");
    let got = receive_n(&*queue, 4).await;
    for index in [2, 0, 3, 1] {
        let reason = format!("bad {}", String::from_utf8_lossy(&got[index].payload));
        queue
            .dead_letter(got[index].id, &reason)
            .await
            .expect("dead_letter");
    }

    let all = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&all), ["c", "a", "d", "b"]);
    let reasons: Vec<&str> = all.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons, ["bad c", "bad a", "bad d", "bad b"]);
    assert!(all.iter().all(|d| d.attempts == 1));
    let ids: BTreeSet<u64> = all.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), 4, "dead-letter ids are distinct");

    let two = queue.dead_letters(2).await.expect("dead_letters");
    assert_eq!(dead_payloads(&two), ["c", "a"]);
    assert_eq!([two[0].id, two[1].id], [all[0].id, all[1].id]);
    assert!(
        queue
            .dead_letters(0)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 4));
}

/// Redriving by ids appends those letters again (as fresh entries) and removes them from
/// the dead letters; unknown ids are skipped; the count is what moved.
pub async fn redrive_by_ids_moves_only_those_back(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    let dead = dead_lettered(&*queue, &["a", "b", "c"]).await;
    let unknown = dead.iter().map(|d| d.id).max().unwrap_or(0) + 1000;

    let moved = queue
        .redrive(DeadLetterSelection::Ids(vec![
            dead[2].id, dead[0].id, unknown,
        ]))
        .await
        .expect("redrive");
    assert_eq!(moved, 2);
    let left = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&left), ["b"]);
    assert_eq!(left[0].id, dead[1].id);
    assert_eq!(queue.depth().await.expect("depth"), depth(2, 0, 1));

    let back = receive_n(&*queue, 2).await;
    assert_eq!(payloads(&back), ["a", "c"]);
    assert!(back.iter().all(|d| d.attempts == 1));
    queue
        .ack(&back.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
}

/// Redriving all moves every letter back, in dead-letter order.
pub async fn redrive_all_moves_every_dead_letter_back(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    dead_lettered(&*queue, &["a", "b", "c"]).await;

    assert_eq!(
        queue
            .redrive(DeadLetterSelection::All)
            .await
            .expect("redrive"),
        3
    );
    assert!(
        queue
            .dead_letters(10)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    assert_eq!(queue.depth().await.expect("depth"), depth(3, 0, 0));
    let back = receive_n(&*queue, 3).await;
    assert_eq!(payloads(&back), ["a", "b", "c"]);
    assert!(back.iter().all(|d| d.attempts == 1));
    queue
        .ack(&back.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    assert_eq!(
        queue
            .redrive(DeadLetterSelection::All)
            .await
            .expect("redrive"),
        0
    );
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 0));
}

/// Purging deletes the selected letters for good; they are never delivered.
pub async fn purge_deletes_dead_letters_for_good(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    let dead = dead_lettered(&*queue, &["a", "b", "c"]).await;
    let unknown = dead.iter().map(|d| d.id).max().unwrap_or(0) + 1000;

    let purged = queue
        .purge(DeadLetterSelection::Ids(vec![dead[1].id, unknown]))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let left = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&left), ["a", "c"]);

    assert_eq!(
        queue.purge(DeadLetterSelection::All).await.expect("purge"),
        2
    );
    assert!(
        queue
            .dead_letters(10)
            .await
            .expect("dead_letters")
            .is_empty()
    );
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 0));
    assert_eq!(
        queue.purge(DeadLetterSelection::All).await.expect("purge"),
        0
    );
    assert_eq!(
        queue
            .redrive(DeadLetterSelection::All)
            .await
            .expect("redrive"),
        0
    );
    assert_nothing_for(&*queue, VISIBILITY * 2).await;
}

/// `depth` follows every step: append, receive, ack, dead-letter, redrive. Entries are
/// appended one at a time: a backend that stores an append as one unit (JetStream packs
/// them) counts units.
pub async fn depth_counts_pending_in_flight_and_dead(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    let at = || async { queue.depth().await.expect("depth") };
    assert_eq!(at().await, depth(0, 0, 0));

    for name in ["a", "b", "c"] {
        queue.append(entries(&[name])).await.expect("append");
    }
    assert_eq!(at().await, depth(3, 0, 0));

    let got = queue.receive(2, SLACK).await.expect("receive");
    assert_eq!(payloads(&got), ["a", "b"]);
    assert_eq!(at().await, depth(3, 2, 0));

    queue.ack(&[got[0].id]).await.expect("ack");
    assert_eq!(at().await, depth(2, 1, 0));

    queue
        .dead_letter(got[1].id, "bad b")
        .await
        .expect("dead_letter");
    assert_eq!(at().await, depth(1, 0, 1));

    let c = queue.receive(1, SLACK).await.expect("receive");
    assert_eq!(payloads(&c), ["c"]);
    assert_eq!(at().await, depth(1, 1, 1));

    queue.ack(&[c[0].id]).await.expect("ack");
    assert_eq!(at().await, depth(0, 0, 1));

    let moved = queue
        .redrive(DeadLetterSelection::All)
        .await
        .expect("redrive");
    assert_eq!(moved, 1);
    assert_eq!(at().await, depth(1, 0, 0));

    let b = queue.receive(1, SLACK).await.expect("receive");
    assert_eq!(payloads(&b), ["b"]);
    queue.ack(&[b[0].id]).await.expect("ack");
    assert_eq!(at().await, depth(0, 0, 0));
}

/// After a close and a reopen, unacknowledged entries are delivered again (in flight or
/// never received), acknowledged ones never, and dead letters are still there.
pub async fn entries_survive_closing_and_reopening(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue
        .append(entries(&["a", "b", "c", "d", "e"]))
        .await
        .expect("append");
    let got = queue.receive(3, SLACK).await.expect("receive");
    assert_eq!(payloads(&got), ["a", "b", "c"]);
    queue.ack(&[got[0].id]).await.expect("ack");
    queue
        .dead_letter(got[1].id, "bad b")
        .await
        .expect("dead_letter");
    // "c" stays in flight; "d" and "e" were never received.
    factory.close("q", queue).await;

    let queue = factory.open("q", options()).await;
    let dead = queue.dead_letters(10).await.expect("dead_letters");
    assert_eq!(dead_payloads(&dead), ["b"]);
    assert_eq!(dead[0].reason, "bad b");
    let mut again = payloads(&receive_n(&*queue, 3).await);
    // The in-flight entry may come back after the others (it waits out its visibility
    // timeout on a backend that remembers it was handed out).
    again.sort();
    assert_eq!(again, ["c", "d", "e"]);
    factory.close("q", queue).await;

    // Those deliveries were not acknowledged either: back once more, then acknowledged.
    let queue = factory.open("q", options()).await;
    let got = receive_n(&*queue, 3).await;
    let mut again = payloads(&got);
    again.sort();
    assert_eq!(again, ["c", "d", "e"]);
    queue
        .ack(&got.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    factory.close("q", queue).await;

    let queue = factory.open("q", options()).await;
    assert_nothing_for(&*queue, VISIBILITY * 3).await;
    assert_eq!(queue.depth().await.expect("depth"), depth(0, 0, 1));
}

/// Two consumers on one queue that acknowledge in time never both get the same entry: each
/// entry is delivered exactly once.
pub async fn two_consumers_never_hold_the_same_entry(factory: &dyn QueueFactory) {
    const COUNT: usize = 200;
    // Long enough that no entry times out while the consumers work.
    let options = QueueOptions {
        visibility_timeout: Duration::from_secs(10),
        ..options()
    };
    let first = factory.open("q", options).await;
    let second = factory.open("q", options).await;
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(50) {
        let batch = chunk
            .iter()
            .map(|i| format!("{i:03}").into_bytes())
            .collect();
        first.append(batch).await.expect("append");
    }

    let received = Arc::new(AtomicUsize::new(0));
    let consume = |queue: Arc<dyn Queue>| {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let give_up = Instant::now() + SLACK * 4;
            let mut mine = Vec::new();
            while received.load(Ordering::SeqCst) < COUNT && Instant::now() < give_up {
                let got = queue
                    .receive(16, Duration::from_millis(100))
                    .await
                    .expect("receive");
                queue
                    .ack(&got.iter().map(|d| d.id).collect::<Vec<_>>())
                    .await
                    .expect("ack");
                received.fetch_add(got.len(), Ordering::SeqCst);
                mine.extend(payloads(&got));
            }
            mine
        })
    };
    let one = consume(Arc::clone(&first));
    let two = consume(Arc::clone(&second));
    let mut all = one.await.expect("consumer");
    all.extend(two.await.expect("consumer"));
    all.sort();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("{i:03}")).collect();
    assert_eq!(all, expected, "each entry exactly once");
    assert_nothing_for(&*first, VISIBILITY).await;
    assert_eq!(first.depth().await.expect("depth"), depth(0, 0, 0));
}

/// With nothing queued, `receive` waits about `wait` and returns empty; with no wait, at once.
pub async fn receive_on_an_empty_queue_waits_then_returns_nothing(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    let wait = Duration::from_millis(500);
    let started = Instant::now();
    let got = queue.receive(10, wait).await.expect("receive");
    let waited = started.elapsed();
    assert!(got.is_empty());
    // A little under `wait` is timer granularity, not an early return.
    assert!(
        waited >= wait - Duration::from_millis(20),
        "returned after {waited:?}"
    );
    assert!(
        waited < wait + Duration::from_secs(2),
        "returned after {waited:?}"
    );

    let started = Instant::now();
    assert!(
        queue
            .receive(10, Duration::ZERO)
            .await
            .expect("receive")
            .is_empty()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A `receive` that is waiting returns as soon as an entry is appended, not at the end of
/// its wait.
pub async fn receive_wakes_up_for_an_entry_appended_while_it_waits(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    let waiter = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move {
            let started = Instant::now();
            let got = queue.receive(10, SLACK * 2).await.expect("receive");
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    queue.append(entries(&["late"])).await.expect("append");
    let (got, waited) = waiter.await.expect("waiter");
    assert_eq!(payloads(&got), ["late"]);
    assert!(waited < SLACK, "returned after {waited:?}");
    queue.ack(&[got[0].id]).await.expect("ack");
}

/// `receive_held` hands out, in order, only what the handle took from the backend and has
/// not handed out yet (nothing, for a backend that holds nothing back), never an entry it
/// would have to ask the backend for: what it does not hand out comes with `receive`, in
/// order.
pub async fn receive_held_hands_out_only_what_the_handle_holds_back(factory: &dyn QueueFactory) {
    let queue = factory.open("q", options()).await;
    queue
        .append(entries(&["a", "b", "c", "d", "e"]))
        .await
        .expect("append");
    let first = queue.receive(2, SLACK).await.expect("receive");
    assert_eq!(payloads(&first), ["a", "b"]);
    queue.append(entries(&["f"])).await.expect("append");
    let held = queue.receive_held(10).await.expect("receive_held");
    let held_payloads = payloads(&held);
    assert!(
        ["c", "d", "e"].starts_with(&held_payloads.iter().map(String::as_str).collect::<Vec<_>>()),
        "held back: {held_payloads:?}"
    );
    // Acknowledged before the next receive: a backend that orders per key holds the rest
    // of a key back while some of it is in flight.
    let settled: Vec<_> = first.iter().chain(&held).map(|d| d.id).collect();
    queue.ack(&settled).await.expect("ack");
    let rest = receive_n(&*queue, 4 - held.len()).await;
    let mut after: Vec<String> = held_payloads;
    after.extend(payloads(&rest));
    assert_eq!(after, ["c", "d", "e", "f"]);
    queue
        .ack(&rest.iter().map(|d| d.id).collect::<Vec<_>>())
        .await
        .expect("ack");
    assert!(
        queue
            .receive_held(10)
            .await
            .expect("receive_held")
            .is_empty()
    );
}
