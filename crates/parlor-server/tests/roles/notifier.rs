//! The notifier: notification queue → the nodes that hold the members' connections.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use metrics_exporter_prometheus::PrometheusBuilder;
use parlor_core::ports::{
    Appended, ConnectionInfo, NewMessage, NodeCommand, Queue, Registry, Relay, Store,
};
use parlor_core::queue::Notification;
use parlor_core::{ConnectionId, ConversationId, NodeId, Seq, UserId};
use parlor_server::config::ConsumerConfig;
use parlor_server::notifier::MEMBERS_CACHED_FOR;
use serde_json::Value;
use time::OffsetDateTime;

use crate::harness::Harness;

/// Stores messages and appends their notifications, as the persister would.
async fn announce(h: &Harness, chat: ConversationId, sender: UserId, ids: &[&str]) {
    let batch: Vec<NewMessage> = ids
        .iter()
        .map(|id| NewMessage {
            conversation_id: chat,
            sender_id: sender,
            client_msg_id: id.to_string(),
            body: id.to_string(),
            accepted_at: OffsetDateTime::now_utc(),
        })
        .collect();
    let notifications = h
        .store
        .append_messages(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|appended| match appended {
            Appended::New(message) => Notification {
                message,
                sender_only: false,
            }
            .encode(),
            other => panic!("not stored: {other:?}"),
        })
        .collect();
    h.notifications.append(notifications).await.unwrap();
}

/// A node with one connection of `user`, and its inbox.
async fn connect(h: &Harness, user: UserId) -> BoxStream<'static, NodeCommand> {
    let node = NodeId::new();
    let inbox = h.relay.inbox(node).await.unwrap();
    h.registry
        .register(ConnectionInfo {
            id: ConnectionId::new(),
            user,
            node,
        })
        .await
        .unwrap();
    inbox
}

/// The `seq` of the next message frame in `inbox`.
async fn next_seq(inbox: &mut BoxStream<'static, NodeCommand>) -> Seq {
    let Some(NodeCommand::Deliver { frame, .. }) = inbox.next().await else {
        panic!("no delivery");
    };
    let frame: Value = serde_json::from_str(&frame).unwrap();
    frame["message"]["seq"].as_u64().unwrap()
}

#[tokio::test(start_paused = true)]
async fn members_are_read_once_per_conversation_until_the_cache_expires() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let mut bob = connect(&h, users[1]).await;
    announce(&h, chat, users[0], &["m1", "m2"]).await;
    // One notification per batch: the cache, not the batch, saves the second read.
    let config = ConsumerConfig {
        batch_max: 1,
        ..Harness::config()
    };
    let notifier = h.notifier(config);
    assert_eq!(next_seq(&mut bob).await, 1);
    assert_eq!(next_seq(&mut bob).await, 2);
    assert_eq!(h.store.members_reads.load(SeqCst), 1);

    tokio::time::advance(MEMBERS_CACHED_FOR).await;
    announce(&h, chat, users[0], &["m3"]).await;
    assert_eq!(next_seq(&mut bob).await, 3);
    assert_eq!(
        h.store.members_reads.load(SeqCst),
        2,
        "read again once expired"
    );
    assert!(h.stop(notifier).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_relay_that_drops_is_retried_and_in_the_end_dead_lettered() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob"]).await;
    let mut bob = connect(&h, users[1]).await;
    // A real (1 ms) backoff: the queue's retry delays run on the std clock.
    let config = ConsumerConfig {
        attempts_max: 1000,
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(1),
        ..Harness::config()
    };
    let notifier = h.notifier(config);

    h.relay.drops.store(true, SeqCst);
    announce(&h, chat, users[0], &["m1"]).await;
    h.until(|| async { h.notifications.retries().len() >= 2 })
        .await;
    h.relay.drops.store(false, SeqCst);
    assert_eq!(
        next_seq(&mut bob).await,
        1,
        "delivered once the relay is back"
    );
    assert!(
        h.notifications
            .retries()
            .iter()
            .all(|(_, delay)| *delay >= Duration::from_millis(1))
    );
    assert!(h.stop(notifier).await.is_ok());

    // With attempts running out, the notification goes to the dead letters with its reason.
    let h2 = Harness::new();
    let (users, chat) = h2.conversation(&["alice", "bob"]).await;
    let _bob = connect(&h2, users[1]).await;
    let notifier = h2.notifier(Harness::config());
    h2.relay.drops.store(true, SeqCst);
    announce(&h2, chat, users[0], &["m1"]).await;
    h2.until(|| async { h2.notifications.dead().await.len() == 1 })
        .await;
    let reason = "failed 3 times, last: Unavailable: scripted: the relay dropped the command";
    assert_eq!(h2.notifications.dead().await, [(reason.to_string(), 3)]);
    assert!(
        metrics
            .render()
            .contains("parlor_dead_lettered_total{queue=\"notifications\"} 1"),
        "{}",
        metrics.render()
    );
    assert!(h2.stop(notifier).await.is_ok());
}
