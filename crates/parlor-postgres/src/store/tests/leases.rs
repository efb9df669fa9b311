//! Leases on partitions, and batches fenced by them: one holder at a time, a new epoch
//! after a lapse or a release, and a batch under a lease that is no longer current refused
//! with nothing stored, even when the takeover races the batch.

use std::time::Duration;

use parlor_core::BackendErrorKind;
use parlor_core::ports::{Appended, Lease, Leases, Store};

use super::{TestDatabase, message, new_event, user};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_partition_has_one_holder_until_its_lease_lapses_then_a_new_epoch_begins() {
    let db = TestDatabase::create().await;
    let store = db.store(2).await;
    let first = store
        .acquire(3, "p1", Duration::from_millis(300))
        .await
        .unwrap();
    let first = first.expect("a free partition is taken");
    assert_eq!(
        (first.partition, first.owner.as_str(), first.epoch),
        (3, "p1", 1)
    );
    assert_eq!(
        store.acquire(3, "p2", TTL).await.unwrap(),
        None,
        "held by p1"
    );
    // Another partition is another lease.
    assert_eq!(store.acquire(4, "p2", TTL).await.unwrap().unwrap().epoch, 1);
    // Taking one's own live lease again renews it, in the same epoch.
    let again = store
        .acquire(3, "p1", Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(again, Some(first.clone()));

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !store.renew(&first, TTL).await.unwrap(),
        "a lapsed lease is not renewed"
    );
    let second = store
        .acquire(3, "p2", TTL)
        .await
        .unwrap()
        .expect("a lapsed lease is free");
    assert_eq!(second.epoch, 2);
    assert!(store.renew(&second, TTL).await.unwrap());
    assert!(
        !store.renew(&first, TTL).await.unwrap(),
        "the old holder's epoch is over"
    );
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_and_releasing_anothers_changes_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store(2).await;
    let first = store.acquire(0, "p1", TTL).await.unwrap().unwrap();
    store.release(&first).await.unwrap();
    let second = store
        .acquire(0, "p2", TTL)
        .await
        .unwrap()
        .expect("released: free at once");
    assert_eq!(second.epoch, 2);
    // The old holder's release comes too late: it is not p1's any more.
    store.release(&first).await.unwrap();
    assert_eq!(store.acquire(0, "p3", TTL).await.unwrap(), None);
    assert!(store.renew(&second, TTL).await.unwrap());
}

#[tokio::test]
async fn a_batch_under_a_lease_taken_over_is_fenced_and_stores_nothing() {
    let db = TestDatabase::create().await;
    let store = db.store(2).await;
    let (ann, bob) = (user(&store, "ann").await, user(&store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let old = store
        .acquire(0, "p1", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let stored = store
        .append_events_fenced(&[new_event(chat, ann, "m1", message("one"))], &old)
        .await
        .unwrap();
    assert!(matches!(&stored[..], [Appended::New(_)]));

    tokio::time::sleep(Duration::from_millis(300)).await;
    // Lapsed, not yet taken: fenced all the same (the holder may have been paused).
    let late = [new_event(chat, ann, "m2", message("late"))];
    let error = store.append_events_fenced(&late, &old).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Fenced, "{error}");
    let new = store.acquire(0, "p2", TTL).await.unwrap().unwrap();
    let error = store.append_events_fenced(&late, &old).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Fenced, "{error}");
    // A made-up lease is fenced too: only the row decides.
    let forged = Lease {
        epoch: new.epoch,
        ..old.clone()
    };
    let error = store
        .append_events_fenced(&late, &forged)
        .await
        .unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Fenced, "{error}");

    let stored = store
        .append_events_fenced(&[new_event(chat, ann, "m3", message("three"))], &new)
        .await
        .unwrap();
    let [Appended::New(event)] = &stored[..] else {
        panic!("{stored:?}")
    };
    assert_eq!(event.event.seq, 2, "the fenced batch consumed no seq");
    let error = store.append_events_fenced(&late, &new).await;
    assert!(
        error.is_ok(),
        "the same batch under the current lease is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_batch_that_holds_the_lease() {
    let db = TestDatabase::create().await;
    let store = db.store(4).await;
    let (ann, bob) = (user(&store, "ann").await, user(&store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let old = store
        .acquire(0, "p1", Duration::from_millis(500))
        .await
        .unwrap()
        .unwrap();
    // A batch in progress holds the lease row: hold it as the batch does, in a transaction
    // of our own, and see the takeover wait for it.
    let admin = super::client(&db.config).await;
    admin.batch_execute("BEGIN").await.unwrap();
    admin
        .query(
            "SELECT 1 FROM partition_leases WHERE partition = 0 AND epoch = $1 FOR SHARE",
            &[&i64::try_from(old.epoch).unwrap()],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let takeover = {
        let store = db.store(1).await;
        tokio::spawn(async move { store.acquire(0, "p2", TTL).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !takeover.is_finished(),
        "the takeover waits for the batch's transaction"
    );
    admin.batch_execute("COMMIT").await.unwrap();
    let new = takeover
        .await
        .unwrap()
        .unwrap()
        .expect("taken once the batch ended");
    assert_eq!(new.epoch, old.epoch + 1);
    let stored = store
        .append_events_fenced(&[new_event(chat, ann, "m1", message("one"))], &new)
        .await
        .unwrap();
    assert!(matches!(&stored[..], [Appended::New(_)]));
}

#[tokio::test]
async fn members_see_each_other_until_one_leaves_or_lapses_and_groups_are_apart() {
    let db = TestDatabase::create().await;
    let store = db.store(2).await;
    let short = Duration::from_millis(300);
    assert_eq!(store.group_members("g", "b", TTL).await.unwrap(), ["b"]);
    assert_eq!(
        store.group_members("g", "a", short).await.unwrap(),
        ["a", "b"]
    );
    assert_eq!(
        store.group_members("g", "c", TTL).await.unwrap(),
        ["a", "b", "c"]
    );
    assert_eq!(
        store.group_members("other", "z", TTL).await.unwrap(),
        ["z"],
        "another group's members are its own"
    );
    store.leave_group("g", "c").await.unwrap();
    assert_eq!(
        store.group_members("g", "b", TTL).await.unwrap(),
        ["a", "b"]
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.group_members("g", "b", TTL).await.unwrap(),
        ["b"],
        "a lapsed member is gone"
    );
    // One that comes back is a member again.
    assert_eq!(
        store.group_members("g", "a", TTL).await.unwrap(),
        ["a", "b"]
    );
}

#[tokio::test]
async fn a_queue_keeps_the_partitions_it_was_created_with() {
    let db = TestDatabase::create().await;
    let store = db.store(2).await;
    assert_eq!(store.queue_partitions("q", 8).await.unwrap(), 8);
    assert_eq!(
        store.queue_partitions("q", 32).await.unwrap(),
        8,
        "the first count stays"
    );
    assert_eq!(store.queue_partitions("other", 1).await.unwrap(), 1);
    let error = store.queue_partitions("q", u32::MAX).await.unwrap_err();
    assert_eq!(error.kind, BackendErrorKind::Rejected);
}
