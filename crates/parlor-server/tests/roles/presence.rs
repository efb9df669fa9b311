//! Presence: registry changes → `presence` frames for co-members, and `last_seen`.

use std::time::Duration;

use futures::StreamExt;
use parlor_core::ports::{ConnectionInfo, NodeCommand, Registry, Relay, Store};
use parlor_core::{ConnectionId, NodeId};
use serde_json::Value;

use crate::harness::Harness;

#[tokio::test(start_paused = true)]
async fn the_users_of_a_dead_node_go_offline_for_their_contacts() {
    let h = Harness::new();
    let (users, _) = h.conversation(&["alice", "bob"]).await;
    let (alice, bob) = (users[0], users[1]);
    let (dead_node, live_node) = (NodeId::new(), NodeId::new());
    let mut bob_inbox = h.relay.inbox(live_node).await.unwrap();
    let presence = h.presence();
    // Lets presence subscribe to the changes (its first poll) before any happens.
    tokio::task::yield_now().await;

    // The dead node's last heartbeat: a lease of 1 ms, on the registry's (std) clock.
    h.registry
        .heartbeat(dead_node, Duration::from_millis(1))
        .await
        .unwrap();
    for (user, node) in [(alice, dead_node), (bob, live_node)] {
        let id = ConnectionId::new();
        h.registry
            .register(ConnectionInfo { id, user, node })
            .await
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(2));
    // Any node's heartbeat expires the leases that ran out.
    h.registry
        .heartbeat(live_node, Duration::from_secs(30))
        .await
        .unwrap();

    let mut frames = Vec::new();
    for _ in 0..2 {
        let Some(NodeCommand::Deliver { users, frame, .. }) = bob_inbox.next().await else {
            panic!("no delivery");
        };
        assert_eq!(users, [bob]);
        frames.push(serde_json::from_str::<Value>(&frame).unwrap());
    }
    assert_eq!(frames[0]["type"], "presence");
    assert_eq!(frames[0]["user_id"], alice.to_string());
    assert_eq!(
        (&frames[0]["online"], &frames[1]["online"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert!(frames[1]["last_seen"].is_string(), "{}", frames[1]);
    let last_seen = h.store.last_seen(&[alice]).await.unwrap();
    assert!(last_seen[0].1.is_some(), "last_seen is stored");
    h.stop(presence).await;
}
