//! `persister::persist_batch`, the persister step of hosts that push batches (the Lambda
//! function): what it stores, and what it reports failed or dead.

use parlor_core::ports::{Delivery, DeliveryId, Queue};
use parlor_core::queue::{Audience, Notification};
use parlor_server::persister::{BatchOutcome, persist_batch};

use crate::harness::{Harness, entry, lock};

fn deliveries(payloads: Vec<Vec<u8>>) -> Vec<Delivery> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Delivery {
            id: DeliveryId(i as u64),
            payload,
            attempts: 1,
        })
        .collect()
}

/// The notifications appended, as (conversation seq, sender-only?) in order.
async fn announced(h: &Harness) -> Vec<(Option<u64>, bool)> {
    let got = h
        .notifications
        .receive(100, std::time::Duration::ZERO)
        .await
        .unwrap();
    got.iter()
        .map(|delivery| {
            let notification = Notification::decode(&delivery.payload).unwrap();
            let sender_only = matches!(notification.audience, Audience::Sender(_));
            (notification.seq, sender_only)
        })
        .collect()
}

#[tokio::test]
async fn a_batch_is_stored_and_announced_with_nothing_to_report() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let batch = deliveries(vec![
        entry(chat, users[0], "m1", "one"),
        entry(chat, users[1], "m2", "two"),
    ]);
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    assert_eq!(outcome, BatchOutcome::default());
    assert_eq!(h.history(chat).await, [(1, "m1".into()), (2, "m2".into())]);
    assert_eq!(announced(&h).await, [(Some(1), false), (Some(2), false)]);
}

#[tokio::test]
async fn a_poison_entry_fails_with_the_rest_of_its_conversation_and_spares_the_others() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let (others, other_chat) = h.conversation(&["carol", "dave"]).await;
    *lock(&h.store.fail_bodies_containing) = Some("POISON".into());
    let batch = deliveries(vec![
        entry(chat, users[0], "a1", "fine"),
        entry(other_chat, others[0], "b1", "fine"),
        entry(chat, users[0], "a2", "POISON"),
        entry(other_chat, others[0], "b2", "fine"),
        entry(chat, users[1], "a3", "fine, but after the poison"),
    ]);
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    // a3 is fine, but storing it before a2 would reorder the conversation.
    assert_eq!(outcome.failed, [DeliveryId(2), DeliveryId(4)]);
    assert!(outcome.dead_letters.is_empty());
    assert_eq!(h.history(chat).await, [(1, "a1".into())]);
    assert_eq!(
        h.history(other_chat).await,
        [(1, "b1".into()), (2, "b2".into())]
    );
    // The whole batch first, then each entry alone up to the poison, skipping a3.
    assert_eq!(
        h.store.batches(),
        [
            vec!["a1", "b1", "a2", "b2", "a3"],
            vec!["a1"],
            vec!["b1"],
            vec!["a2"],
            vec!["b2"],
        ]
    );
}

#[tokio::test]
async fn an_outage_fails_the_whole_batch_without_trying_entries_alone() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    *lock(&h.store.fail_appends) = Some(parlor_core::BackendErrorKind::Unavailable);
    h.store
        .ping_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let batch = deliveries(vec![
        entry(chat, users[0], "m1", "one"),
        entry(chat, users[0], "m2", "two"),
    ]);
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    assert_eq!(outcome.failed, [DeliveryId(0), DeliveryId(1)]);
    assert_eq!(h.store.batches().len(), 1);
    assert!(h.history(chat).await.is_empty());
}

#[tokio::test]
async fn an_undecodable_entry_is_dead_lettered_with_why() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let batch = deliveries(vec![
        b"\x02not json".to_vec(),
        entry(chat, users[0], "m1", "one"),
    ]);
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    assert!(outcome.failed.is_empty());
    assert_eq!(outcome.dead_letters.len(), 1);
    assert_eq!(outcome.dead_letters[0].0, DeliveryId(0));
    assert!(
        outcome.dead_letters[0]
            .1
            .starts_with("undecodable inbound entry"),
        "{:?}",
        outcome.dead_letters
    );
    assert_eq!(h.history(chat).await, [(1, "m1".into())]);
}

#[tokio::test]
async fn a_resent_duplicate_goes_to_its_sender_and_a_redelivered_one_to_everyone() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let first = deliveries(vec![entry(chat, users[0], "m1", "one")]);
    persist_batch(h.store.as_ref(), h.notifications.as_ref(), &first).await;
    assert_eq!(announced(&h).await, [(Some(1), false)]);

    let mut again = deliveries(vec![entry(chat, users[0], "m1", "one")]);
    persist_batch(h.store.as_ref(), h.notifications.as_ref(), &again).await;
    assert_eq!(announced(&h).await, [(None, true)]);

    again[0].attempts = 2;
    persist_batch(h.store.as_ref(), h.notifications.as_ref(), &again).await;
    assert_eq!(announced(&h).await, [(Some(1), false)]);
    assert_eq!(h.history(chat).await, [(1, "m1".into())]);
}

#[tokio::test]
async fn a_failed_notification_append_fails_the_batch_which_is_announced_when_redelivered() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    *lock(&h.notifications.append_fails) = Some(parlor_core::BackendErrorKind::Unavailable);
    let mut batch = deliveries(vec![entry(chat, users[0], "m1", "one")]);
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    assert_eq!(outcome.failed, [DeliveryId(0)]);
    // Stored, not announced: the redelivery is a duplicate, announced to everyone.
    assert_eq!(h.history(chat).await, [(1, "m1".into())]);
    *lock(&h.notifications.append_fails) = None;
    batch[0].attempts = 2;
    let outcome = persist_batch(h.store.as_ref(), h.notifications.as_ref(), &batch).await;
    assert_eq!(outcome, BatchOutcome::default());
    assert_eq!(announced(&h).await, [(Some(1), false)]);
}
