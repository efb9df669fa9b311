//! The notifier: notification queue → the nodes that hold the members' connections.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use metrics_exporter_prometheus::PrometheusBuilder;
use parlor_core::events::{Change, EventData};
use parlor_core::ports::{ConnectionInfo, NewEvent, NodeCommand, Queue, Registry, Relay, Store};
use parlor_core::protocol::ServerFrame;
use parlor_core::queue::{Audience, Notification};
use parlor_core::{ConnectionId, ConversationId, NodeId, Seq, UserId};
use parlor_server::config::ConsumerConfig;
use serde_json::Value;
use time::OffsetDateTime;

use crate::harness::Harness;

/// Stores changes and appends their notifications, as the persister would.
async fn store_and_announce(
    h: &Harness,
    chat: ConversationId,
    sender: UserId,
    changes: Vec<(&str, Change)>,
) {
    let batch: Vec<NewEvent> = changes
        .into_iter()
        .map(|(id, change)| NewEvent {
            conversation_id: chat,
            sender_id: sender,
            client_msg_id: id.to_string(),
            accepted_at: OffsetDateTime::now_utc(),
            change,
        })
        .collect();
    let notifications = h
        .store
        .append_events(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|appended| match appended {
            parlor_core::ports::Appended::New(stored) => {
                let audience = match stored.event.data.departed() {
                    Some(user) => Audience::MembersAnd(user),
                    None => Audience::Members,
                };
                let frame = match stored.event.data.clone() {
                    EventData::Message { message } => ServerFrame::Message { message },
                    _ => ServerFrame::Event {
                        event: stored.event.clone(),
                    },
                };
                Notification::new(
                    chat,
                    Some(stored.event.seq),
                    audience,
                    stored.members_seq,
                    stored.event.created_at,
                    &frame,
                )
                .encode()
            }
            other => panic!("not stored: {other:?}"),
        })
        .collect();
    h.notifications.append(notifications).await.unwrap();
}

/// Stores messages whose bodies are their ids and announces them.
async fn announce(h: &Harness, chat: ConversationId, sender: UserId, ids: &[&str]) {
    let changes = ids
        .iter()
        .map(|id| {
            let body = id.to_string();
            (
                *id,
                Change::Message {
                    body,
                    reply_to_seq: None,
                    files: Vec::new(),
                },
            )
        })
        .collect();
    store_and_announce(h, chat, sender, changes).await;
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

/// The `seq` of the next message or event frame in `inbox`.
async fn next_seq(inbox: &mut BoxStream<'static, NodeCommand>) -> Seq {
    let Some(NodeCommand::Deliver { frame, .. }) = inbox.next().await else {
        panic!("no delivery");
    };
    let frame: Value = serde_json::from_str(&frame).unwrap();
    frame["message"]["seq"]
        .as_u64()
        .or(frame["event"]["seq"].as_u64())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn members_are_read_once_per_conversation_until_its_membership_changes() {
    let h = Harness::new();
    let (users, chat) = h.conversation(&["alice", "bob", "carol"]).await;
    let mut bob = connect(&h, users[1]).await;
    let mut carol = connect(&h, users[2]).await;
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
    assert_eq!(next_seq(&mut carol).await, 1);
    assert_eq!(next_seq(&mut carol).await, 2);

    // However long it has been, the list stays right until a member changes.
    tokio::time::advance(Duration::from_secs(3600)).await;
    announce(&h, chat, users[0], &["m3"]).await;
    assert_eq!(next_seq(&mut bob).await, 3);
    assert_eq!(next_seq(&mut carol).await, 3);
    assert_eq!(h.store.members_reads.load(SeqCst), 1);

    // Carol is removed: she hears of it, then nothing more; the list is read again.
    let remove = Change::MemberRemoved { user_id: users[2] };
    store_and_announce(&h, chat, users[0], vec![("remove-carol", remove)]).await;
    assert_eq!(next_seq(&mut bob).await, 4);
    assert_eq!(next_seq(&mut carol).await, 4);
    assert_eq!(
        h.store.members_reads.load(SeqCst),
        2,
        "read again after the change"
    );
    announce(&h, chat, users[0], &["m5"]).await;
    assert_eq!(next_seq(&mut bob).await, 5);
    assert_eq!(h.store.members_reads.load(SeqCst), 2);
    assert!(h.stop(notifier).await.is_ok());
    assert!(
        matches!(carol.next().now_or_never(), None | Some(None)),
        "a removed member gets nothing after her removal"
    );
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
