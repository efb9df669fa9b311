//! The persister: inbound queue → store → notification queue, and what it does when a step
//! fails.

use std::sync::atomic::Ordering::SeqCst;

use metrics_exporter_prometheus::PrometheusBuilder;
use parlor_core::BackendErrorKind;
use parlor_core::ports::Queue;
use std::time::Duration;

use parlor_core::queue::{Audience, Notification};

use crate::harness::{Harness, entry, lock};

#[tokio::test(start_paused = true)]
async fn redelivered_entries_are_stored_before_fresh_ones_in_one_batch() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    // An earlier persister took `old` and handed it back; `new1` and `new2` came after.
    h.send(chat, users[0], &[("old", "old")]).await;
    let taken = h
        .inbound
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    h.inbound
        .retry_later(taken[0].id, std::time::Duration::ZERO)
        .await
        .unwrap();
    h.send(chat, users[0], &[("new1", "new"), ("new2", "new")])
        .await;
    // As another backend may, the queue hands the redelivered entry out after the fresh ones.
    h.inbound.redelivered_last.store(true, SeqCst);

    let persister = h.persister(Harness::config());
    h.until(|| async { h.history(chat).await.len() == 3 }).await;

    assert_eq!(h.store.batches(), [vec!["old", "new1", "new2"]]);
    let seqs: Vec<_> = h.history(chat).await;
    assert_eq!(
        seqs,
        [(1, "old".into()), (2, "new1".into()), (3, "new2".into())]
    );
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_poison_message_is_retried_then_dead_lettered_with_its_reason_and_spares_its_batch() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    *lock(&h.store.fail_bodies_containing) = Some("POISON".into());
    let persister = h.persister(Harness::config());
    let sends = [
        ("m1", "hello"),
        ("m2", "POISON one"),
        ("m3", "POISON two"),
        ("m4", "world"),
    ];
    h.send(chat, users[0], &sends).await;
    h.until(|| async { h.inbound.dead().await.len() == 2 })
        .await;

    // The first batch fails as a whole; its entries are tried alone at once: m1 and m4 are
    // stored, the poison ones handed back, and so on each time they come back.
    let history = h.history(chat).await;
    assert_eq!(history, [(1, "m1".into()), (2, "m4".into())]);
    let reason = "failed 3 times, last: Unavailable: scripted: a poison body";
    assert_eq!(
        h.inbound.dead().await,
        [(reason.to_string(), 3), (reason.to_string(), 3)]
    );
    let batches = h.store.batches();
    let poison = || vec![vec!["m2", "m3"], vec!["m2"], vec!["m3"]];
    let mut expected = vec![vec!["m1", "m2", "m3", "m4"], vec!["m1"], vec!["m2"]];
    expected.extend([vec!["m3"], vec!["m4"]]);
    expected.extend(poison());
    expected.extend(poison());
    assert_eq!(batches, expected);
    // The poison ones handed back twice each (after attempts 1 and 2), the others never.
    assert_eq!(h.inbound.retries().len(), 2 + 2);
    assert!(
        metrics
            .render()
            .contains("parlor_dead_lettered_total{queue=\"inbound\"} 2"),
        "{}",
        metrics.render()
    );
    h.until(|| async { h.inbound.pending().await == 0 }).await;
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn entries_that_can_never_be_stored_are_dead_lettered_without_retries() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let (carol, _) = h.conversation(&["carol", "dave"]).await;
    let persister = h.persister(Harness::config());

    // A batch the store rejects as a whole: each entry is tried alone at once, and rejected
    // alone, on its first delivery.
    *lock(&h.store.fail_appends) = Some(BackendErrorKind::Rejected);
    h.send(chat, users[0], &[("x", "x"), ("y", "y")]).await;
    h.until(|| async { h.inbound.dead().await.len() == 2 })
        .await;
    let rejected = "Rejected: scripted: the store fails appends".to_string();
    assert_eq!(
        h.inbound.dead().await,
        [(rejected.clone(), 1), (rejected.clone(), 1)]
    );
    assert_eq!(h.store.batches(), [vec!["x", "y"], vec!["x"], vec!["y"]]);
    assert!(h.inbound.retries().is_empty());

    // One entry the store's rules refuse (not a member), one that does not decode, one fine.
    *lock(&h.store.fail_appends) = None;
    h.inbound
        .append(vec![
            entry(chat, carol[0], "not-a-member", "hi"),
            b"not an inbound entry".to_vec(),
            entry(chat, users[0], "fine", "hi"),
        ])
        .await
        .unwrap();
    h.until(|| async { h.inbound.dead().await.len() == 3 })
        .await;
    let dead = h.inbound.dead().await;
    assert!(
        dead[2].0.starts_with("undecodable inbound entry: ") && dead[2].1 == 1,
        "{dead:?}"
    );
    h.until(|| async { h.history(chat).await.len() == 1 }).await;
    // The refused change is not a dead letter: its sender is told, by its id (once the
    // batch is announced: the fine message's notification and the refusal).
    h.until(|| async { h.notifications.inner.depth().await.unwrap().pending >= 2 })
        .await;
    let refusal = h
        .notifications
        .inner
        .receive(10, Duration::ZERO)
        .await
        .unwrap()
        .into_iter()
        .map(|delivery| Notification::decode(&delivery.payload).unwrap())
        .find(|notification| notification.audience == Audience::Sender(carol[0]))
        .expect("a notification to the refused sender");
    assert_eq!(refusal.seq, None);
    let frame: serde_json::Value = serde_json::from_str(refusal.frame.get()).unwrap();
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], "not_found");
    assert_eq!(frame["client_msg_id"], "not-a-member");
    assert_eq!(h.history(chat).await, [(1, "fine".into())]);
    assert_eq!(
        h.inbound.retries().len(),
        0,
        "nothing handed back: each entry was dead-lettered or stored alone at once"
    );
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_is_waited_out_without_spending_attempts() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    *lock(&h.store.fail_appends) = Some(BackendErrorKind::Unavailable);
    h.store.ping_fails.store(true, SeqCst);
    // One attempt only: an attempt spent on the outage would dead-letter the message.
    let config = parlor_server::config::ConsumerConfig {
        attempts_max: 1,
        ..Harness::config()
    };
    let persister = h.persister(config);
    h.send(chat, users[0], &[("first", "during the outage")])
        .await;
    h.until(|| async { h.store.pings.load(SeqCst) >= 4 }).await;
    h.send(chat, users[0], &[("second", "also during it")])
        .await;
    h.until(|| async { h.store.pings.load(SeqCst) >= 6 }).await;

    *lock(&h.store.fail_appends) = None;
    h.store.ping_fails.store(false, SeqCst);
    h.until(|| async { h.history(chat).await.len() == 2 }).await;
    assert_eq!(
        h.history(chat).await,
        [(1, "first".into()), (2, "second".into())],
        "nothing newer is stored before the batch that waited"
    );
    assert!(h.inbound.dead().await.is_empty());
    assert!(h.inbound.retries().is_empty());
    let attempts: Vec<u32> = h.inbound.deliveries().iter().map(|d| d.1).collect();
    assert_eq!(attempts, [1, 1], "each delivered once");
    assert!(
        metrics.render().contains("parlor_store_outages_total 1"),
        "{}",
        metrics.render()
    );
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_is_waited_out_without_spending_attempts() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let config = parlor_server::config::ConsumerConfig {
        attempts_max: 1,
        ..Harness::config()
    };
    let persister = h.persister(config);

    // The store is full (and answers its ping).
    *lock(&h.store.fail_appends) = Some(BackendErrorKind::StorageFull);
    h.send(chat, users[0], &[("one", "store full")]).await;
    h.until(|| async { h.store.batches().len() >= 4 }).await;
    *lock(&h.store.fail_appends) = None;
    h.until(|| async { h.inbound.pending().await == 0 }).await;

    // The notification queue is full: the stored batch waits for space to announce.
    *lock(&h.notifications.append_fails) = Some(BackendErrorKind::StorageFull);
    h.send(chat, users[0], &[("two", "queue full")]).await;
    h.until(|| async { h.history(chat).await.len() == 2 }).await;
    h.until(|| async { h.notifications.append_failures.load(SeqCst) >= 3 })
        .await;
    assert_eq!(
        h.inbound.pending().await,
        1,
        "not acknowledged before it is announced"
    );
    *lock(&h.notifications.append_fails) = None;
    h.until(|| async { h.inbound.pending().await == 0 }).await;

    assert!(h.inbound.dead().await.is_empty());
    assert!(h.inbound.retries().is_empty());
    assert_eq!(h.inbound.deliveries().len(), 2, "each delivered once");
    assert_eq!(h.notifications.pending().await, 2);
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_stored_while_one_is_announced_and_notifications_keep_seq_order() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    h.notifications.hold_appends.send_replace(true);
    let persister = h.persister(Harness::config());

    h.send(chat, users[0], &[("m1", "one")]).await;
    h.until(|| async { h.notifications.appends_held.load(SeqCst) == 1 })
        .await;
    h.send(chat, users[0], &[("m2", "two")]).await;
    // Stored while the first batch's notifications wait: the two stages overlap.
    h.until(|| async { h.history(chat).await.len() == 2 }).await;
    assert_eq!(
        h.inbound.pending().await,
        2,
        "acknowledged only once announced"
    );

    h.notifications.hold_appends.send_replace(false);
    h.until(|| async { h.inbound.pending().await == 0 }).await;
    let announced = h
        .notifications
        .inner
        .receive(10, std::time::Duration::ZERO)
        .await
        .unwrap();
    let announced: Vec<_> = announced
        .iter()
        .map(|d| {
            let n = Notification::decode(&d.payload).unwrap();
            let frame: serde_json::Value = serde_json::from_str(n.frame.get()).unwrap();
            let client_msg_id = frame["message"]["client_msg_id"]
                .as_str()
                .unwrap()
                .to_owned();
            (n.seq, client_msg_id, n.audience)
        })
        .collect();
    assert_eq!(
        announced,
        [
            (Some(1), "m1".into(), Audience::Members),
            (Some(2), "m2".into(), Audience::Members)
        ]
    );
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_receive_that_times_out_is_paused_over() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    *lock(&h.inbound.receive_fails) = Some(BackendErrorKind::Unavailable);
    let persister = h.persister(Harness::config());
    h.send(chat, users[0], &[("m1", "hi")]).await;
    h.until(|| async { h.inbound.receive_failures.load(SeqCst) >= 3 })
        .await;
    *lock(&h.inbound.receive_fails) = None;
    h.until(|| async { h.history(chat).await.len() == 1 }).await;
    assert!(h.inbound.dead().await.is_empty());
    assert!(h.stop(persister).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_notification_log_stops_the_persister_with_an_error() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let persister = h.persister(Harness::config());
    h.notifications.fsync_fails.store(true, SeqCst);
    h.send(chat, users[0], &[("m1", "stored, never announced")])
        .await;
    h.until(|| async { h.notifications.inner.poison_cause().is_some() })
        .await;

    let error = h
        .stop(persister)
        .await
        .expect_err("a poisoned log is an error");
    assert_eq!(error.kind, BackendErrorKind::Poisoned);
    assert_eq!(h.history(chat).await.len(), 1);
    assert_eq!(
        h.inbound.pending().await,
        1,
        "redelivered after the restart"
    );
    assert!(h.inbound.dead().await.is_empty());
}
