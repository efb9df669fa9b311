//! The `Registry`, `Presence` and `Relay` contract: two gateway nodes on one backend.
//!
//! A backend's test supplies a factory that returns [`Nodes`]: handles for nodes A and B
//! that share one backend (the same `MemoryRegistry` twice, or two `NatsRegistry`s with
//! their own client connections), then `registry_contract!(factory)` expands to one
//! `#[tokio::test]` per check. Views may lag behind writes made through the other node's
//! handle, so checks poll with a deadline; only checks that something does *not* happen
//! wait for a fixed quiet period.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use parlor_core::ports::{
    ConnectionInfo, MessageOrder, NodeCommand, Presence, PresenceChange, Registry, Relay, TokenHash,
};
use parlor_core::{ConnectionId, ConversationId, NodeId, UserId};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a write may take to show through the other node's handle.
const PROPAGATION_MAX: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(500);
/// The lease of the node that dies in the lease check.
const SHORT_LEASE: Duration = Duration::from_secs(2);
/// The lease of nodes that stay alive.
const LONG_LEASE: Duration = Duration::from_secs(60);

/// One gateway node's handles.
#[derive(Clone)]
pub struct Node {
    pub id: NodeId,
    pub registry: Arc<dyn Registry>,
    pub presence: Arc<dyn Presence>,
    pub relay: Arc<dyn Relay>,
}

type Cleanup = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Two nodes on the same backend.
#[derive(Clone)]
pub struct Nodes {
    pub a: Node,
    pub b: Node,
    cleanup: Option<Cleanup>,
}

impl Nodes {
    pub fn new(a: Node, b: Node) -> Self {
        Self {
            a,
            b,
            cleanup: None,
        }
    }

    /// Runs `cleanup` (deleting test buckets, say) after the check, passed or failed.
    pub fn with_cleanup<F, Fut>(mut self, cleanup: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Arc::new(move || cleanup().boxed()));
        self
    }

    fn both(&self) -> [&Node; 2] {
        [&self.a, &self.b]
    }
}

/// Runs one check on fresh nodes from `factory`, then their cleanup, even if it failed.
pub async fn run<F, Fut, C, CFut>(factory: F, check: C)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Nodes>,
    C: FnOnce(Nodes) -> CFut,
    CFut: Future<Output = ()>,
{
    let nodes = factory().await;
    let cleanup = nodes.cleanup.clone();
    let result = AssertUnwindSafe(check(nodes)).catch_unwind().await;
    if let Some(cleanup) = cleanup {
        cleanup().await;
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per check of the registry, presence and relay contract, each on
/// fresh nodes from `$factory` (an `async fn() -> Nodes`).
#[macro_export]
macro_rules! registry_contract {
    ($factory:path) => {
        $crate::registry_contract!(@checks $factory;
            register_then_locate_finds_the_node,
            locate_returns_every_node_of_a_user,
            unregister_removes_only_that_connection,
            online_is_the_union_of_the_nodes,
            changes_follow_the_first_and_the_last_connection,
            a_node_that_stops_heartbeating_loses_its_users,
            commands_reach_only_their_node_in_order,
            close_session_round_trips,
            deliver_frame_round_trips_exactly,
        );
    };
    (@checks $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::registry::run($factory, $crate::registry::$check).await;
            }
        )*
    };
}

fn connection(user: UserId, node: &Node) -> ConnectionInfo {
    ConnectionInfo {
        id: ConnectionId::new(),
        user,
        node: node.id,
    }
}

/// `locate`'s answer in a comparable order.
fn sorted(mut located: Vec<(NodeId, Vec<UserId>)>) -> Vec<(NodeId, Vec<UserId>)> {
    for (_, users) in &mut located {
        users.sort();
    }
    located.sort();
    located
}

async fn heartbeat(node: &Node, lease: Duration) {
    node.registry
        .heartbeat(node.id, lease)
        .await
        .expect("heartbeat");
}

async fn heartbeat_both(nodes: &Nodes) {
    for node in nodes.both() {
        heartbeat(node, LONG_LEASE).await;
    }
}

/// Waits until both handles locate `users` as `expected`; fails with the last answers.
async fn both_locate(nodes: &Nodes, users: &[UserId], expected: Vec<(NodeId, Vec<UserId>)>) {
    let expected = sorted(expected);
    let deadline = Instant::now() + PROPAGATION_MAX;
    loop {
        let mut answers = Vec::new();
        for node in nodes.both() {
            answers.push(sorted(node.registry.locate(users).await.expect("locate")));
        }
        if answers.iter().all(|answer| *answer == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "locate from nodes A and B answered {answers:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until both handles say exactly `expected` of `users` are online.
async fn both_online(nodes: &Nodes, users: &[UserId], mut expected: Vec<UserId>) {
    expected.sort();
    let deadline = Instant::now() + PROPAGATION_MAX;
    loop {
        let mut answers = Vec::new();
        for node in nodes.both() {
            let mut online = node.presence.online(users).await.expect("online");
            online.sort();
            answers.push(online);
        }
        if answers.iter().all(|answer| *answer == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "online from nodes A and B answered {answers:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every presence change announced by any node, merged.
struct Changes {
    receiver: mpsc::Receiver<PresenceChange>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Changes {
    /// Subscribes to every distinct presence handle: when both nodes share one backend
    /// instance (one process), its single stream is what the process's presence role reads.
    async fn subscribe(nodes: &Nodes) -> Changes {
        let shared = std::ptr::addr_eq(
            Arc::as_ptr(&nodes.a.presence),
            Arc::as_ptr(&nodes.b.presence),
        );
        let handles = if shared {
            vec![&nodes.a]
        } else {
            vec![&nodes.a, &nodes.b]
        };
        let (sender, receiver) = mpsc::channel(1024);
        let mut tasks = Vec::new();
        for node in handles {
            let mut changes = node.presence.changes().await.expect("changes");
            let sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(change) = changes.next().await {
                    if sender.send(change).await.is_err() {
                        return;
                    }
                }
            }));
        }
        Changes { receiver, tasks }
    }

    /// The next change, failing if none comes within `wait`.
    async fn next(&mut self, wait: Duration, expecting: &str) -> PresenceChange {
        match tokio::time::timeout(wait, self.receiver.recv()).await {
            Ok(Some(change)) => change,
            _ => panic!("no presence change within {wait:?}; expected {expecting}"),
        }
    }

    /// Expects exactly `(user, online)` as the next change, announced about now.
    async fn expect(&mut self, user: UserId, online: bool, wait: Duration) {
        let expecting = format!("{user} {}", if online { "online" } else { "offline" });
        let change = self.next(wait, &expecting).await;
        assert_eq!(
            (change.user, change.online),
            (user, online),
            "expected {expecting}, got {change:?}"
        );
        let age = (OffsetDateTime::now_utc() - change.at).abs();
        assert!(
            age < time::Duration::minutes(1),
            "change announced with at = {}",
            change.at
        );
    }

    /// Fails if any change arrives within the quiet period.
    async fn expect_none(&mut self, after: &str) {
        if let Ok(Some(change)) = tokio::time::timeout(QUIET, self.receiver.recv()).await {
            panic!("unexpected presence change after {after}: {change:?}");
        }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub async fn register_then_locate_finds_the_node(nodes: Nodes) {
    heartbeat_both(&nodes).await;
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    nodes
        .a
        .registry
        .register(connection(alice, &nodes.a))
        .await
        .expect("register");
    nodes
        .b
        .registry
        .register(connection(bob, &nodes.b))
        .await
        .expect("register");
    // The registering node sees its own connection at once, without waiting for others.
    assert_eq!(
        nodes.a.registry.locate(&[alice]).await.expect("locate"),
        vec![(nodes.a.id, vec![alice])]
    );
    both_locate(
        &nodes,
        &[alice, bob, carol],
        vec![(nodes.a.id, vec![alice]), (nodes.b.id, vec![bob])],
    )
    .await;
    both_locate(&nodes, &[carol], vec![]).await;
}

pub async fn locate_returns_every_node_of_a_user(nodes: Nodes) {
    heartbeat_both(&nodes).await;
    let (alice, bob) = (UserId::new(), UserId::new());
    for (user, node) in [
        (alice, &nodes.a),
        (alice, &nodes.a),
        (alice, &nodes.b),
        (bob, &nodes.b),
    ] {
        node.registry
            .register(connection(user, node))
            .await
            .expect("register");
    }
    both_locate(
        &nodes,
        &[alice, bob],
        vec![(nodes.a.id, vec![alice]), (nodes.b.id, vec![alice, bob])],
    )
    .await;
}

pub async fn unregister_removes_only_that_connection(nodes: Nodes) {
    heartbeat_both(&nodes).await;
    let alice = UserId::new();
    let (phone, laptop, tablet) = (
        connection(alice, &nodes.a),
        connection(alice, &nodes.a),
        connection(alice, &nodes.b),
    );
    nodes.a.registry.register(phone).await.expect("register");
    nodes.a.registry.register(laptop).await.expect("register");
    nodes.b.registry.register(tablet).await.expect("register");
    let both = vec![(nodes.a.id, vec![alice]), (nodes.b.id, vec![alice])];
    both_locate(&nodes, &[alice], both.clone()).await;

    nodes
        .a
        .registry
        .unregister(phone)
        .await
        .expect("unregister");
    both_locate(&nodes, &[alice], both).await;

    nodes
        .a
        .registry
        .unregister(laptop)
        .await
        .expect("unregister");
    // The unregistering node stops seeing it at once.
    assert_eq!(
        nodes.a.registry.locate(&[alice]).await.expect("locate"),
        vec![(nodes.b.id, vec![alice])]
    );
    both_locate(&nodes, &[alice], vec![(nodes.b.id, vec![alice])]).await;

    nodes
        .b
        .registry
        .unregister(tablet)
        .await
        .expect("unregister");
    both_locate(&nodes, &[alice], vec![]).await;
    both_online(&nodes, &[alice], vec![]).await;
}

pub async fn online_is_the_union_of_the_nodes(nodes: Nodes) {
    heartbeat_both(&nodes).await;
    let (alice, bob, carol, dave) = (UserId::new(), UserId::new(), UserId::new(), UserId::new());
    for (user, node) in [
        (alice, &nodes.a),
        (bob, &nodes.b),
        (carol, &nodes.a),
        (carol, &nodes.b),
    ] {
        node.registry
            .register(connection(user, node))
            .await
            .expect("register");
    }
    both_online(&nodes, &[alice, bob, carol, dave], vec![alice, bob, carol]).await;
    both_online(&nodes, &[dave], vec![]).await;
    both_online(&nodes, &[], vec![]).await;
}

pub async fn changes_follow_the_first_and_the_last_connection(nodes: Nodes) {
    heartbeat_both(&nodes).await;
    let mut changes = Changes::subscribe(&nodes).await;
    let alice = UserId::new();
    let (on_a, on_b) = (connection(alice, &nodes.a), connection(alice, &nodes.b));

    nodes.a.registry.register(on_a).await.expect("register");
    changes.expect(alice, true, PROPAGATION_MAX).await;
    changes.expect_none("the first connection").await;

    nodes.b.registry.register(on_b).await.expect("register");
    both_locate(
        &nodes,
        &[alice],
        vec![(nodes.a.id, vec![alice]), (nodes.b.id, vec![alice])],
    )
    .await;
    changes.expect_none("a second connection").await;

    nodes.a.registry.unregister(on_a).await.expect("unregister");
    both_locate(&nodes, &[alice], vec![(nodes.b.id, vec![alice])]).await;
    changes.expect_none("closing one of two connections").await;

    nodes.b.registry.unregister(on_b).await.expect("unregister");
    changes.expect(alice, false, PROPAGATION_MAX).await;
    changes.expect_none("the last connection").await;
}

pub async fn a_node_that_stops_heartbeating_loses_its_users(nodes: Nodes) {
    let (live, dying) = (&nodes.a, &nodes.b);
    heartbeat(live, LONG_LEASE).await;
    heartbeat(dying, SHORT_LEASE).await;
    let mut changes = Changes::subscribe(&nodes).await;
    let (alice, bob, carol) = (UserId::new(), UserId::new(), UserId::new());
    // alice only on the dying node, bob only on the live one, carol on both.
    for (user, node) in [(alice, dying), (bob, live), (carol, dying), (carol, live)] {
        node.registry
            .register(connection(user, node))
            .await
            .expect("register");
    }
    let mut came_online = Vec::new();
    for _ in 0..3 {
        let change = changes.next(PROPAGATION_MAX, "three users online").await;
        assert!(change.online, "unexpected {change:?}");
        came_online.push(change.user);
    }
    came_online.sort();
    let mut expected = vec![alice, bob, carol];
    expected.sort();
    assert_eq!(came_online, expected);

    // The live node keeps heartbeating, as a gateway does; the dying one stops.
    let everyone = [alice, bob, carol];
    let gone = vec![(live.id, vec![bob, carol])];
    let deadline = Instant::now() + SHORT_LEASE + PROPAGATION_MAX;
    let mut last = Vec::new();
    loop {
        heartbeat(live, LONG_LEASE).await;
        last.clear();
        for node in nodes.both() {
            last.push(sorted(
                node.registry.locate(&everyone).await.expect("locate"),
            ));
        }
        if last.iter().all(|answer| *answer == gone) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the lease, locate answered {last:?}, expected {gone:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    both_online(&nodes, &everyone, vec![bob, carol]).await;
    let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    changes.expect(alice, false, wait).await;
    heartbeat(live, LONG_LEASE).await;
    changes
        .expect_none("the dead node's users went offline")
        .await;
}

/// A Deliver command's parts, for comparison.
fn delivered(command: NodeCommand) -> (Vec<UserId>, String) {
    match command {
        NodeCommand::Deliver { users, frame, .. } => (users, frame.to_string()),
        other => panic!("expected a Deliver command, got {other:?}"),
    }
}

async fn next_command(
    inbox: &mut futures::stream::BoxStream<'static, NodeCommand>,
    what: &str,
) -> NodeCommand {
    match tokio::time::timeout(PROPAGATION_MAX, inbox.next()).await {
        Ok(Some(command)) => command,
        Ok(None) => panic!("inbox ended while waiting for {what}"),
        Err(_) => panic!("no command within {PROPAGATION_MAX:?} while waiting for {what}"),
    }
}

pub async fn commands_reach_only_their_node_in_order(nodes: Nodes) {
    let mut inbox_a = nodes.a.relay.inbox(nodes.a.id).await.expect("inbox");
    let mut inbox_b = nodes.b.relay.inbox(nodes.b.id).await.expect("inbox");
    let (alice, bob) = (UserId::new(), UserId::new());
    let count = 200;
    // Sent through B's handle, so that on NATS they cross connections.
    for n in 0..count {
        let command = NodeCommand::Deliver {
            users: vec![alice],
            frame: format!(r#"{{"n":{n}}}"#).into(),
            order: None,
        };
        nodes.b.relay.send(nodes.a.id, command).await.expect("send");
    }
    let for_b = NodeCommand::Deliver {
        users: vec![bob],
        frame: r#"{"for":"b"}"#.into(),
        order: None,
    };
    nodes.a.relay.send(nodes.b.id, for_b).await.expect("send");

    for n in 0..count {
        let command = next_command(&mut inbox_a, &format!("command {n} to A")).await;
        assert_eq!(delivered(command), (vec![alice], format!(r#"{{"n":{n}}}"#)));
    }
    let command = next_command(&mut inbox_b, "the command to B").await;
    assert_eq!(
        delivered(command),
        (vec![bob], r#"{"for":"b"}"#.to_string())
    );
    for (inbox, name) in [(&mut inbox_a, "A"), (&mut inbox_b, "B")] {
        if let Ok(Some(command)) = tokio::time::timeout(QUIET, inbox.next()).await {
            panic!("unexpected command at {name}: {command:?}");
        }
    }
}

pub async fn close_session_round_trips(nodes: Nodes) {
    let mut inbox = nodes.a.relay.inbox(nodes.a.id).await.expect("inbox");
    let user = UserId::new();
    let mut token = [0u8; 32];
    for (i, byte) in token.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(37).wrapping_add(200);
    }
    let command = NodeCommand::CloseSession {
        user,
        token: TokenHash(token),
    };
    nodes.b.relay.send(nodes.a.id, command).await.expect("send");
    match next_command(&mut inbox, "CloseSession").await {
        NodeCommand::CloseSession {
            user: got_user,
            token: got_token,
        } => assert_eq!((got_user, got_token), (user, TokenHash(token))),
        other => panic!("expected CloseSession, got {other:?}"),
    }
}

pub async fn deliver_frame_round_trips_exactly(nodes: Nodes) {
    let mut inbox = nodes.a.relay.inbox(nodes.a.id).await.expect("inbox");
    let users = vec![UserId::new(), UserId::new(), UserId::new()];
    let frame = "{\"type\":\"message\",\"body\":\"she said \\\"hé\\\" — 你好 🎉\\n\\\\ \\u0000\",\"x\":\"\u{2028}\"}";
    let order = Some(MessageOrder {
        conversation: ConversationId::new(),
        seq: 1 << 40,
    });
    let command = NodeCommand::Deliver {
        users: users.clone(),
        frame: frame.into(),
        order,
    };
    nodes.b.relay.send(nodes.a.id, command).await.expect("send");
    let command = next_command(&mut inbox, "the Deliver command").await;
    let NodeCommand::Deliver {
        order: received_order,
        ..
    } = &command
    else {
        panic!("expected a Deliver command, got {command:?}");
    };
    assert_eq!(*received_order, order, "the message order round-trips");
    assert_eq!(delivered(command), (users, frame.to_string()));
}
